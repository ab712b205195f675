"""Shared harness for the benchmark scripts: interleaved rounds, noise control, statistics, tables, JSON.

Every script in ``benchmarks/`` describes its *sides* (the ways of doing one job that it compares)
and its workloads; this module does the rest the same way for all of them:

* ``offline_environment()``: never touch the network (call before importing transformers);
* ``add_common_args(parser, ...)`` / ``parse_with_quick(parser, argv, quick)``: the shared flags
  (``--threads``, ``--contention-threshold``, ``--max-redo``, ``--out``, ``--quick``); ``--quick``
  swaps in small defaults (explicit flags still win) and writes to a temp file unless ``--out``;
* ``ContentionMeter``: how many CPU cores *other* processes kept busy during a timed block;
* ``interleaved_rounds(sides, rounds, ...)``: one call per side per round (A, B, C, A, B, C, ...);
  a round in which any call was contended is discarded and redone (at most ``max_redo`` times);
* ``quiet_blocks(block, count, ...)``: the same rule for a block timed as a whole;
* ``median``, ``percentile``, ``summarize``, ``by_side``, ``paired``, ``time_cost_percent``: figures;
* ``format_table`` / ``print_table`` / ``print_notes``: rich tables (plain text without rich);
* ``machine_info()``, ``command_line()``, ``write_results(out, doc)``: the JSON results, which always
  carry a ``"machine"`` object;
* ``cprofile_report(call, top, ...)``: the cProfile text of one call.

Example, a benchmark comparing two ways of sorting::

    import argparse, random, sys, time
    import harness

    parser = argparse.ArgumentParser()
    harness.add_common_args(parser, default_out=harness.RESULTS_DIR / "sorting.json")
    parser.add_argument("--runs", type=int, default=5)
    args = harness.parse_with_quick(parser, sys.argv[1:], {"runs": 1}, name="sorting")
    data = [random.random() for _ in range(100_000)]

    def timed(function):
        def run():
            started = time.perf_counter()
            function(list(data))
            return {"seconds": time.perf_counter() - started}
        return run

    sides = [harness.Side("sorted", timed(sorted)), harness.Side("list.sort", timed(list.sort))]
    rounds = harness.interleaved_rounds(sides, args.runs, contention_threshold=args.contention_threshold,
                                        max_redo=args.max_redo, label="sort")
    groups = harness.by_side(rounds.kept)
    rows = [(name, f"{harness.summarize([r['seconds'] for r in runs])['median']:.4f}")
            for name, runs in groups.items()]
    harness.print_table("sorting 100k floats", ("side", "median s"), rows)
    harness.write_results(args.out, {"benchmark": "sorting", "runs": rounds.runs})
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
TABLE_WIDTH = 150  # rich wraps narrower consoles' wide tables into unreadable columns


def offline_environment() -> None:
    """Make Hugging Face libraries work offline (the benchmarks never download anything)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# -- command line ---------------------------------------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser, *, default_out: Path, contention_threshold: float = 0.15,
                    max_redo: int = 10, threads_help: str = "torch.set_num_threads before loading; None keeps torch's default") -> None:
    """Add ``--threads``, ``--contention-threshold``, ``--max-redo``, ``--out`` and ``--quick`` to ``parser``."""
    parser.add_argument("--threads", type=int, default=None, help=threads_help)
    parser.add_argument("--contention-threshold", type=float, default=contention_threshold, metavar="CORES",
                        help="a timed call or block during which other processes kept more than this many CPU cores "
                        "busy on average (from /proc/stat) counts as contended; its round is discarded and redone")
    parser.add_argument("--max-redo", type=int, default=max_redo, help="at most this many contended rounds are redone")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write the JSON results (default: {_relative(default_out)}; with --quick, "
                        "a file in the temporary folder, so that the recorded results are never overwritten)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one round, few tokens/queries, no redone rounds (explicit flags still win)")
    parser.set_defaults(_default_out=default_out)


def parse_with_quick(parser: argparse.ArgumentParser, argv: Sequence[str] | None, quick: dict[str, Any],
                     name: str) -> argparse.Namespace:
    """Parse ``argv``; with ``--quick``, parse again with ``quick`` (and ``max_redo=0``) as the defaults so
    explicit flags win.

    Resolves ``args.out``: the given path, else the script's results file, else (``--quick``) a
    temp file named after ``name``. Validates the shared flags.
    """
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**{"max_redo": 0, **quick})  # a smoke run checks the code, not the figures
        args = parser.parse_args(argv)
    if args.out is None:
        args.out = quick_out(name) if args.quick else args._default_out
    del args._default_out
    if args.max_redo < 0:
        parser.error("--max-redo must be at least 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def quick_out(name: str) -> Path:
    """Where a ``--quick`` run of benchmark ``name`` writes its JSON unless ``--out`` says otherwise."""
    return Path(tempfile.gettempdir()) / f"adaptrix-bench-{name}-quick.json"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# -- other processes' CPU use during a timed block ------------------------------------------------------
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes on the machine have spent busy since boot (Linux /proc/stat), else None."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


class ContentionMeter:
    """Measures how much CPU other processes (and the hypervisor, as steal) took during a ``with`` block.

    ``other_cpu_s`` = machine busy CPU seconds - this process's CPU seconds over the block; divided by
    the block's wall time it is ``other_cores``, the cores others kept busy on average (0 on a quiet
    machine). Both are None where /proc/stat is unavailable.
    """

    other_cpu_s: float | None
    other_cores: float | None

    def __enter__(self) -> ContentionMeter:
        self.busy0, self.own0, self.wall0 = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        busy1, own1, wall1 = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
        if self.busy0 is None or busy1 is None:
            self.other_cpu_s = self.other_cores = None
            return
        self.other_cpu_s = max(0.0, (busy1 - self.busy0) - (own1 - self.own0))
        self.other_cores = self.other_cpu_s / max(wall1 - self.wall0, 1e-9)


def is_contended(other_cores: float | None, threshold: float) -> bool:
    """True when others kept more than ``threshold`` cores busy (unknown counts as quiet)."""
    return other_cores is not None and other_cores > threshold


def _cores(other_cores: float | None) -> str:
    return "n/a" if other_cores is None else f"{other_cores:.2f}"


# -- interleaved rounds ----------------------------------------------------------------------------------
@dataclass
class Side:
    """One way of doing the job: ``run()`` makes one timed call and returns its figures as a dict
    (at least ``"seconds"``). ``label`` is the human-readable name for tables."""

    name: str
    run: Callable[[], dict[str, Any]]
    label: str = ""


@dataclass
class Rounds:
    """What ``interleaved_rounds`` measured: every run (kept and discarded) and how many rounds were redone."""

    runs: list[dict[str, Any]]
    redone: int

    @property
    def kept(self) -> list[dict[str, Any]]:
        """The runs of the rounds that were not discarded."""
        return [r for r in self.runs if not r["discarded"]]

    @property
    def still_contended(self) -> int:
        """Kept runs that were contended anyway (``max_redo`` exhausted): their figures are unreliable."""
        return sum(r["contended"] for r in self.kept)


def interleaved_rounds(sides: Sequence[Side], rounds: int, *, contention_threshold: float, max_redo: int,
                       label: str = "", describe: Callable[[dict[str, Any]], str] | None = None,
                       side_width: int = 10, log: Any = None) -> Rounds:
    """Run ``rounds`` kept rounds of one call per side, in order, each call under a ``ContentionMeter``.

    A round in which any call was contended (others above ``contention_threshold`` cores) is kept in
    ``runs`` with ``discarded=True`` and redone, at most ``max_redo`` times; after that contended
    rounds are kept (``Rounds.still_contended`` counts them). Every run dict gets ``side``,
    ``iteration`` (the round number, from 1), ``other_processes_cores``, ``contended`` and
    ``discarded``. A line per call goes to ``log`` (stderr by default); ``describe(run)`` formats
    its figures (default: seconds).
    """
    log = sys.stderr if log is None else log
    describe = describe or (lambda r: f"{r['seconds']:.3f} s")
    runs: list[dict[str, Any]] = []
    kept = redone = round_no = 0
    while kept < rounds:
        round_no += 1
        round_runs = []
        for side in sides:
            gc.collect()  # a collection inside a timed call would be charged to that side
            with ContentionMeter() as meter:
                result = side.run()
            result.update(side=side.name, iteration=round_no, other_processes_cores=meter.other_cores,
                          contended=is_contended(meter.other_cores, contention_threshold))
            round_runs.append(result)
        discard = any(r["contended"] for r in round_runs) and redone < max_redo
        redone += discard
        kept += not discard
        for r in round_runs:
            r["discarded"] = discard
            runs.append(r)
            print(f"  {label + ' ' if label else ''}round {round_no:2} {r['side']:{side_width}} {describe(r)}  "
                  f"other processes: {_cores(r['other_processes_cores'])} cores"
                  f"{'  (contended: round discarded, redone)' if discard else ''}", file=log)
    return Rounds(runs, redone)


@dataclass
class Block:
    """One attempt of ``quiet_blocks``: the block's return value, wall seconds, others' cores."""

    round: int
    result: Any
    seconds: float
    other_cores: float | None
    discarded: bool


def quiet_blocks(block: Callable[[], Any], count: int, *, contention_threshold: float, max_redo: int,
                 on_block: Callable[[Block], None] | None = None) -> list[Block]:
    """Run ``block`` until ``count`` attempts were not contended (at most ``max_redo`` redone), each timed whole.

    Returns every attempt in order; the kept ones have ``discarded=False``. ``on_block`` sees each
    attempt as it ends (for progress lines).
    """
    attempts: list[Block] = []
    kept = redone = 0
    while kept < count:
        with ContentionMeter() as meter:
            started = time.perf_counter()
            result = block()
            seconds = time.perf_counter() - started
        discard = is_contended(meter.other_cores, contention_threshold) and redone < max_redo
        redone += discard
        kept += not discard
        attempts.append(Block(len(attempts) + 1, result, seconds, meter.other_cores, discard))
        if on_block is not None:
            on_block(attempts[-1])
    return attempts


# -- figures ------------------------------------------------------------------------------------------------
def ms(seconds: float) -> float:
    """Seconds to milliseconds."""
    return seconds * 1000.0


def median(values: Iterable[float]) -> float:
    """``statistics.median`` (the mean of the two middle values for an even count); NaN when empty."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def percentile(values: Iterable[float], share: float) -> float:
    """Nearest-rank percentile: the ``ceil(share * n)``-th smallest value (the smallest for 0); ``share`` in [0, 1]."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values: measure at least one sample")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"percentile share {share!r} is outside [0, 1]; pass e.g. 0.95 for p95")
    rank = math.ceil(share * len(ordered) - 1e-9)  # the epsilon keeps 0.95 * 100 from ranking 96th
    return ordered[max(rank, 1) - 1]


def summarize(samples: Iterable[float]) -> dict[str, Any]:
    """``n``, ``mean``, ``median`` (= ``p50``), ``p90``, ``p95``, ``min``, ``max`` of ``samples`` (NaN if empty)."""
    values = list(samples)
    if not values:
        nan = float("nan")
        return {"n": 0, "mean": nan, "median": nan, "p50": nan, "p90": nan, "p95": nan, "min": nan, "max": nan}
    mid = statistics.median(values)
    return {"n": len(values), "mean": statistics.fmean(values), "median": mid, "p50": mid,
            "p90": percentile(values, 0.90), "p95": percentile(values, 0.95), "min": min(values), "max": max(values)}


def by_side(runs: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs grouped by their ``side``, sides in order of first appearance."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r["side"], []).append(r)
    return groups


def paired(runs: Iterable[dict[str, Any]], first: str, second: str,
           figure: Callable[[dict[str, Any], dict[str, Any]], float]) -> list[float]:
    """``figure(first_run, second_run)`` for every round both sides ran in, in ``first``'s order.

    Comparing the sides round by round cancels slow drifts of the machine.
    """
    groups = by_side(runs)
    partner = {r["iteration"]: r for r in groups.get(second, [])}
    return [figure(r, partner[r["iteration"]]) for r in groups.get(first, []) if r["iteration"] in partner]


def time_cost_percent(reference_rate: float, rate: float) -> float:
    """Extra time per unit that ``rate`` costs against ``reference_rate`` (both per second), percent.

    (reference / rate - 1) x 100: positive when ``rate`` is slower, negative when faster.
    """
    return (reference_rate / rate - 1) * 100


# -- tables -------------------------------------------------------------------------------------------------
def format_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], notes: Iterable[str] = ()) -> str:
    """Plain-text table: the title, then columns padded to their widest cell, two spaces apart, then notes."""
    rows = [tuple(str(cell) for cell in row) for row in rows]
    header = tuple(str(c) for c in columns)
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table {title!r}: a row has {len(row)} cells for {len(header)} columns: {row!r}")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [title]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)]
    lines += list(notes)
    return "\n".join(lines)


def _console() -> Any:
    try:
        from rich.console import Console
    except ImportError:
        return None
    console = Console()
    return Console(width=TABLE_WIDTH) if console.width < TABLE_WIDTH else console


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], notes: Iterable[Any] = (),
                left: Iterable[int] = (0,)) -> None:
    """Print a rich table (plain text when rich is missing), then ``notes`` (see ``print_notes``).

    Columns whose index is in ``left`` are left-aligned, the others right-aligned (figures).
    """
    rows = [tuple(str(cell) for cell in row) for row in rows]
    console = _console()
    if console is None:
        print(format_table(title, columns, rows))
    else:
        from rich.table import Table

        left = {i % len(columns) for i in left}
        table = Table(title=title)
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i in left else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    print_notes(notes)


def print_notes(notes: Iterable[Any]) -> None:
    """Print lines: a plain string as is; ``(text, met)`` green when met is True, red when False, bold when None."""
    console = _console()
    for note in notes:
        text, styled, met = (note, False, None) if isinstance(note, str) else (note[0], True, note[1])
        if console is None:
            print(text)
        elif not styled:
            console.print(text, highlight=False, markup=False)
        else:
            from rich.markup import escape

            style = "bold" if met is None else ("green" if met else "red")
            console.print(f"[{style}]{escape(text)}[/{style}]", highlight=False)


# -- results ------------------------------------------------------------------------------------------------
def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """The facts that decide how fast a benchmark runs: CPU, cores, RAM, OS, library versions, date."""
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    ram = _ram_bytes()
    facts: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_count_usable": usable,
        "ram_bytes": ram,
        "ram_gib": None if ram is None else round(ram / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": _version("peft"),
        "adaptrix": _version("adaptrix"),
        "cuda_available": torch.cuda.is_available(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        facts["cuda_device"] = torch.cuda.get_device_name(0)
    return facts


def command_line() -> str:
    """The command that ran this benchmark, as recorded in the results."""
    return " ".join([Path(sys.executable).name, *sys.argv])


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to the results JSON")


def write_results(out: Path | str, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as indented UTF-8 JSON to ``out``, adding ``"machine"`` (``machine_info()``) if absent.

    The file is written next to ``out`` and renamed over it, so a failure leaves the previous
    results whole. Returns the path written.
    """
    out = Path(out)
    if "machine" not in doc:
        doc = {**doc, "machine": machine_info()}
    text = json.dumps(doc, indent=2, ensure_ascii=False, default=_jsonable) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # open() applies the umask, as for any results file
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, out)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return out


# -- profiling ----------------------------------------------------------------------------------------------
def cprofile_report(call: Callable[[], Any], top: int, sorts: Sequence[str] = ("cumulative",),
                    restrict: str | None = None) -> dict[str, str]:
    """cProfile one ``call``; the ``top`` functions for each sort key (restricted by regex ``restrict``)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    call()
    profiler.disable()
    reports = {}
    for key in sorts:
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream).sort_stats(key)
        stats.print_stats(*((restrict, top) if restrict else (top,)))
        reports[key] = stream.getvalue()
    return reports
