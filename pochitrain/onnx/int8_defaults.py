"""Defaults of the INT8 pass, written once: ``onnx/int8.py`` and the ``pochi convert``
options (``cli/int8_args.py``) both read them. Constants only, so ``pochi --help`` imports
neither numpy nor ONNX through this module."""

CALIB_METHODS = ("percentile", "entropy", "minmax")
DEFAULT_METHOD = "percentile"
DEFAULT_SAMPLES = 500
DEFAULT_CALIB_BATCH_SIZE = 1
DEFAULT_MAX_DROP = 1.0  # top-1 points; held-out sets are small, one image can be ~1 point
DEFAULT_VERIFY_SAMPLES = 1000
