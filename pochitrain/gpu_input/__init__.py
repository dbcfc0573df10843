"""GPU input: image files -> decoded, resized, normalized batches on the GPU.

Used by inference (``pochi infer``, ``Predictor``), training (``training.gpu_loader``) and
``pochi serve`` through the names below only. The same code runs on CPU tensors, which is
how the tests exercise it.

Read + vet (``read``, ``vet``, ``read_proc``)
    ``read_item(path) -> Read(kind, payload)``: ``"jpeg"`` (the bytes, for nvJPEG),
    ``"rgb"`` (decoded by PIL) or ``"bad"``; ``for_nvjpeg(data)`` is the one answer to
    "will nvJPEG read this like PIL"; ``read_file``, ``map_grouped``; ``ReaderProcess`` /
    ``SlotChunks``: files read by a helper process into shared memory.
Decode (``decode``)
    ``Decoder(device).decode(entries)``: nvJPEG, else PIL; None for undecodable inputs.
Resample (``resample``, ``banded``, ``resize``)
    One PIL-exact resampler: PIL's windows and weights (``pil_window``; ``band`` and
    ``fixed_point`` for a resize + crop), applied by the banded Triton kernels
    (``two_passes``, ``resize_normalize``) or, as dense matrices (``dense``), by two batched
    matmuls (``separable``, ``resize_batch``); ``to_batch`` picks. The training's geometric
    stage uses the same functions for its own maps (crops, flips, random sizes).
Prefetch (``prefetcher``)
    ``prefetch(make, device)``: a generator run ahead in a thread on its own CUDA stream.
Batches (``batches``)
    ``GpuBatches(preprocess, device)(samples, batch_size)`` -> ``InputBatch`` items;
    ``GpuBatches.assemble(entries) -> Assembled(batch, failed)`` for inputs in memory;
    ``resolve_pipeline`` for ``--pipeline auto|cpu|gpu``.
Options (``options``)
    ``Options.from_env()``: the ``POCHI_READER``, ``POCHI_READ_THREADS`` and
    ``POCHI_GPU_RESIZE`` switches; ``quick_gil_handoff``; ``KERNELS`` (kernel failures).

Importing this package imports neither torch, NumPy nor PIL (each function imports what it
needs when called): the reader helper process runs ``python -m pochitrain.gpu_input.read_proc``
and ``pochi --help`` stays quick.
"""

# ruff: noqa: F401 - re-exports
from __future__ import annotations

from pochitrain.gpu_input.banded import (
    Band,
    bucket_taps,
    resize_normalize,
    supports,
    triton_available,
    two_passes,
)
from pochitrain.gpu_input.batches import (
    PIPELINES,
    Assembled,
    GpuBatches,
    InputBatch,
    gpu_unsupported,
    resolve_pipeline,
)
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
from pochitrain.gpu_input.read_proc import ReaderProcess, SlotChunks, rebatch
from pochitrain.gpu_input.resample import (
    SUPPORT,
    band,
    dense,
    fixed_point,
    geometry,
    pil_filter,
    pil_window,
    resize_batch,
    separable,
    taps,
    window_bounds,
)
from pochitrain.gpu_input.resize import (
    banded_usable,
    normalize_,
    resize_crop,
    resize_path,
    to_batch,
)
from pochitrain.gpu_input.vet import (
    JpegHeader,
    for_nvjpeg,
    is_complete_jpeg,
    nvjpeg_reads_like_pil,
    read_header,
)
