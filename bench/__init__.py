"""Benchmark suite for trio-channels (not tests: run ``bench/run``, see docs/benchmarks.md)."""
