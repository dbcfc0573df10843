"""Settings that CUDA reads once, when a process first uses the GPU: set before that.

``CUDA_DEVICE_MAX_CONNECTIONS`` is how many hardware work queues a process's CUDA streams
share (8 unless set). With 8, the stream on which the JPEG decoder copies and converts each
image can share a queue with the model's stream, and every such small step then waits behind
the model's kernels; the decoder beside a busy model ran at about a tenth of its own rate.
With 32 queues each stream keeps one of its own (docs/benchmarks.md, "The decoder's work
queues").
"""

from __future__ import annotations

import os

WORK_QUEUES = "32"


def prepare_cuda_env() -> None:
    """Set what the user has not set. In a process whose CUDA has already started this
    changes only what its child processes get."""
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", WORK_QUEUES)
