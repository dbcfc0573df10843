"""Benchmarks: ``benchmark_result.json`` per inference run, and ``pochi bench`` suites."""
