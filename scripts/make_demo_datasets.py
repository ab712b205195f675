"""Write the demo adapters' datasets: arithmetic word problems, field extraction to JSON, date normalisation.

Every example is generated from templates with a fixed seed, so the files are reproducible. The
held-out split (test.jsonl) uses its own seed and never repeats a training prompt.

    python scripts/make_demo_datasets.py [--out data/demo] [--train 600] [--test 100]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

FIRST = ["Maria", "John", "Aiko", "Omar", "Lena", "Carlos", "Priya", "Tom", "Sofia", "Kwame", "Ines", "Lucas",
         "Mei", "Noah", "Fatima", "Ivan", "Chloe", "Diego", "Hana", "Samuel", "Zara", "Felix", "Amara", "Pedro"]
LAST = ["Lopez", "Smith", "Tanaka", "Haddad", "Novak", "Silva", "Patel", "Becker", "Rossi", "Mensah", "Moreau",
        "Costa", "Chen", "Okafor", "Ivanova", "Larsen", "Kowalski", "Nguyen", "Schmidt", "Dubois", "Ali", "Reyes"]
CITIES = ["Lisbon", "Denver", "Osaka", "Cairo", "Prague", "Lima", "Pune", "Hamburg", "Turin", "Accra", "Lyon",
          "Porto", "Chengdu", "Lagos", "Kazan", "Bergen", "Krakow", "Hanoi", "Munich", "Quebec", "Dubai", "Cusco"]
JOBS = ["engineer", "teacher", "nurse", "chef", "pilot", "designer", "doctor", "farmer", "lawyer", "painter",
        "baker", "journalist", "architect", "plumber", "librarian", "dentist"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "stamps", "shells", "cards",
         "balloons", "toy cars", "oranges", "beads"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def arithmetic(rng: random.Random) -> dict[str, str]:
    name, item = rng.choice(FIRST), rng.choice(ITEMS)
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    kind = rng.choice(["add", "add", "sub", "mul"])
    if kind == "add":
        text = rng.choice([
            f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
            f"There are {a} {item} in a box. {name} puts in {b} more. How many {item} are in the box?",
            f"{name} collected {a} {item} on Monday and {b} {item} on Tuesday. How many {item} in total?",
        ])
        answer = a + b
    elif kind == "sub":
        a, b = max(a, b), min(a, b)
        text = rng.choice([
            f"{name} had {a} {item} and gave away {b}. How many {item} are left?",
            f"A shop had {a} {item}. It sold {b}. How many {item} does the shop have left?",
        ])
        answer = a - b
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        text = f"{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?"
        answer = a * b
    return {"prompt": f"Solve and reply with only the final number. {text}", "response": str(answer)}


def extraction(rng: random.Random) -> dict[str, str]:
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    age, city, job = rng.randint(19, 79), rng.choice(CITIES), rng.choice(JOBS)
    sentence = rng.choice([
        f"{name} is {age} years old, lives in {city} and works as a {job}.",
        f"Meet {name}, a {age}-year-old {job} from {city}.",
        f"In {city}, {name} ({age}) has a job as a {job}.",
        f"{name}, aged {age}, is a {job} based in {city}.",
    ])
    record = {"name": name, "age": age, "city": city, "job": job}
    return {"prompt": f"Extract name, age, city and job as JSON: {sentence}", "response": json.dumps(record)}


def dates(rng: random.Random) -> dict[str, str]:
    year, month = rng.randint(1950, 2049), rng.randint(1, 12)
    day = rng.randint(1, DAYS_IN_MONTH[month - 1])
    name = MONTHS[month - 1]
    suffix = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    written = rng.choice([
        f"{name} {day}, {year}", f"{day} {name} {year}", f"{name} {day}{suffix}, {year}",
        f"the {day}{suffix} of {name} {year}", f"{name[:3]} {day} {year}",
    ])
    return {"prompt": f"Convert this date to ISO format (YYYY-MM-DD): {written}",
            "response": f"{year:04d}-{month:02d}-{day:02d}"}


TASKS: dict[str, tuple[Callable[[random.Random], dict[str, str]], str]] = {
    "arithmetic": (arithmetic, "Solves short arithmetic word problems and answers with the final number only."),
    "extraction": (extraction, "Extracts a person's name, age, city and job from a sentence into JSON."),
    "dates": (dates, "Converts a written date into ISO 8601 format (YYYY-MM-DD)."),
}


def unique(generator: Callable[[random.Random], dict[str, str]], rng: random.Random, count: int,
           exclude: set[str]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    seen = set(exclude)
    while len(rows) < count:
        row = generator(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/demo", help="Output folder (one sub-folder per task).")
    parser.add_argument("--train", type=int, default=600, help="Training examples per task.")
    parser.add_argument("--test", type=int, default=100, help="Held-out examples per task.")
    args = parser.parse_args()
    for index, (task, (generator, _)) in enumerate(TASKS.items()):
        train = unique(generator, random.Random(1000 + index), args.train, set())
        test = unique(generator, random.Random(2000 + index), args.test, {row["prompt"] for row in train})
        write_jsonl(Path(args.out) / task / "train.jsonl", train)
        write_jsonl(Path(args.out) / task / "test.jsonl", test)
        print(f"{task}: {len(train)} train, {len(test)} test -> {Path(args.out) / task}")


if __name__ == "__main__":
    main()
