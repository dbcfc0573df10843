"""Benchmarks: ``benchmark_result.json`` per inference run, and ``pochi bench`` suites.

Modules:
  result_json  the per-run file (the original's schema 1.0.0) + a latency sidecar
  suite        suite YAML -> expanded cases (runtime x pipeline x batch size x precision)
  runner       one subprocess per run (``python -m pochitrain.cli.main infer ...``)
  aggregate    benchmark_result.json files -> one row per case (means, stdev, percentiles)
  report       the rows -> CSV, JSON, Markdown and a PNG chart
"""
