"""GPU input: image files -> decoded, resized, normalized batches on the GPU, for inference,
training and ``pochi serve`` (docs/ARCHITECTURE.md); the tests run it on CPU tensors. Importing
it imports neither torch, NumPy nor PIL (the reader process and ``pochi --help`` stay quick).
"""

# ruff: noqa: F401 - re-exports
from __future__ import annotations

from pochitrain.gpu_input.banded import Band, bucket_taps, resize_normalize, supports, two_passes
from pochitrain.gpu_input.batches import GpuBatches, resolve_pipeline
from pochitrain.gpu_input.decode import Decoder
from pochitrain.gpu_input.options import (
    KERNELS,
    READ_THREADS,
    SWITCH_INTERVAL,
    Options,
    quick_gil_handoff,
    read_threads,
)
from pochitrain.gpu_input.prefetcher import prefetch
from pochitrain.gpu_input.read import (
    Entry,
    Read,
    map_grouped,
    read_file,
    read_file_python,
    read_item,
    reader_for,
)
from pochitrain.gpu_input.read_proc import ReaderProcess, SlotChunks
from pochitrain.gpu_input.resample import (
    SUPPORT,
    dense,
    fixed_point,
    pil_window,
    separable,
    taps,
    window_bounds,
)
from pochitrain.gpu_input.resize import banded_usable, resize_crop, resize_path, to_batch
from pochitrain.gpu_input.vet import (
    for_nvjpeg,
    is_complete_jpeg,
    nvjpeg_reads_like_pil,
    read_header,
)
