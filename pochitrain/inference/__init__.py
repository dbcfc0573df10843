"""Running a model over images: the runners, the one inference loop, the CPU input path."""

# Here rather than in runner.py: the argument parsers of `pochi infer` and the bench suites
# read it, and importing it must not import NumPy (`pochi infer --help` stays quick).
# The most untimed warm-up runs an inference command takes (--warmup, a bench suite's warmup):
# more only delays the first result.
MAX_WARMUP_RUNS = 1000
