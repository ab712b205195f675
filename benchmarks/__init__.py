"""Benchmark scripts (run them as ``python benchmarks/bench_*.py``) and their shared ``harness``."""
