"""GPU input pipeline for inference (``--pipeline gpu``): keeps the GPU fed.

Two stages, each in its own thread on its own CUDA stream (``prefetch``), one batch ahead of
the model: read (threads, or ``read_proc`` for long passes) and decode; then resize, crop and
normalize a group of whole batches at once (``work_group``). A file is skipped when PIL cannot
decode it, as on the CPU path; nvJPEG's IDCT differs slightly from libjpeg's.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pochitrain.batching import InputBatch
from pochitrain.errors import GpuMemoryError, UsageError
from pochitrain.gpu_input.decode import Decoder
from pochitrain.gpu_input.options import (
    PROCESS_READER_MIN_FILES,
    Options,
    quick_gil_handoff,
    read_threads,
)
from pochitrain.gpu_input.prefetcher import prefetch
from pochitrain.gpu_input.read import READ_GROUP, Entry, map_grouped, read_groups, reader_for
from pochitrain.gpu_input.read_proc import ReaderProcess, SlotChunks, rebatch
from pochitrain.gpu_input.resize import resize_path, to_batch

if TYPE_CHECKING:
    import torch

    from pochitrain.preprocess import Preprocess

PIPELINES = ("auto", "cpu", "gpu")
# images decoded and resized together at least: each nvJPEG call and each resize launch has
# a fixed cost that small model batches would pay over and over (docs/benchmarks.md)
WORK_GROUP = 256
# the Preprocess interpolations the GPU reproduces
GPU_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class Assembled(NamedTuple):
    """Inputs in memory as one batch (None when none decoded) and the indices that failed."""

    batch: torch.Tensor | None
    failed: list[int]


def work_group(batch_size: int) -> int:
    """Images decoded and resized at once for model batches of ``batch_size``: the smallest
    multiple of it that reaches ``WORK_GROUP``, so every batch is a slice of one group."""
    return batch_size * max(1, -(-WORK_GROUP // batch_size))


def gpu_unsupported(preprocess: Preprocess) -> str | None:
    """Why ``preprocess`` cannot run on the GPU pipeline, or None when it can."""
    if preprocess.resize is not None and preprocess.interpolation not in GPU_INTERPOLATIONS:
        return (f"interpolation {preprocess.interpolation!r} has no GPU equivalent "
                f"(supported: {', '.join(GPU_INTERPOLATIONS)})")
    if not preprocess.one_size:
        return ("without a CenterCrop or Resize((H, W)) each image keeps its own size, and "
                "the GPU pipeline makes batches of one size")
    return None


def resolve_pipeline(pipeline: str, device: str, preprocess: Preprocess) -> tuple[str, str]:
    """(``"cpu"`` or ``"gpu"``, a one-line reason) for ``--pipeline auto|cpu|gpu``; ``gpu``
    with the model on the CPU falls back to ``cpu`` with a notice."""
    if pipeline not in PIPELINES:
        raise UsageError("不明な --pipeline が指定されています\n"
                         f"Unknown --pipeline {pipeline!r}.", "Use auto, cpu or gpu.")
    on_gpu = device.startswith("cuda")
    why_not = gpu_unsupported(preprocess)
    if pipeline == "gpu":
        if not on_gpu:  # the original fell back too
            from pochitrain.console import warn

            warn("--pipeline gpu: モデルが CUDA GPU 上にないため CPU パイプラインで実行します / "
                 "the model is not on a CUDA GPU, so the CPU pipeline (PIL) runs instead")
            return "cpu", "no CUDA GPU for --pipeline gpu"
        if why_not:
            raise UsageError("--pipeline gpu ではこの前処理を再現できません\n"
                             f"--pipeline gpu cannot reproduce this preprocessing: {why_not}.",
                             "Use --pipeline cpu (PIL), which runs every preprocessing.")
        return "gpu", "asked for"
    if pipeline == "cpu":
        return "cpu", "asked for"
    if not on_gpu:
        return "cpu", "model on the CPU"
    if why_not:
        return "cpu", why_not
    return "gpu", "CUDA available"


class GpuBatches:
    """``batches(samples, batch_size)`` -> batches in input order, a drop-in for
    ``loop.iter_batches``; :meth:`assemble` batches inputs already in memory (serve).
    ``device="cpu"`` runs the same code without streams or nvJPEG (the tests)."""

    def __init__(self, preprocess: Preprocess, device: str = "cuda",
                 workers: int | None = None) -> None:
        import torch

        why_not = gpu_unsupported(preprocess)
        if why_not:
            raise UsageError("GPU パイプラインではこの前処理を再現できません\n"
                             f"The GPU pipeline cannot reproduce this preprocessing: {why_not}.",
                             "Use --pipeline cpu.")
        self._torch = torch
        self.preprocess = preprocess
        self.device = device
        self.workers = workers or read_threads()
        self.cuda = device.startswith("cuda")
        self.decoder = Decoder(device)  # on CUDA nvJPEG's start overlaps the model's warm-up
        self.reader_failed: str | None = None
        self._resize_warm: threading.Thread | None = None
        if self.cuda:  # and so does the resize kernels' (Triton finds and loads them)
            self._resize_warm = threading.Thread(target=self._warm_resize,
                                                 name="pochi-resize-warm", daemon=True)
            self._resize_warm.start()

    def _warm_resize(self) -> None:
        torch = self._torch
        h, w = self.preprocess.input_size
        with contextlib.suppress(Exception):  # a real batch meets (and reports) any problem
            stream = torch.cuda.Stream(self.device)  # its own: a model may be capturing a graph
            with torch.cuda.stream(stream):
                blank = torch.zeros((3, h * 3 // 2 + 1, w * 2), dtype=torch.uint8,
                                    device=self.device)
                to_batch([blank], self.preprocess, self.blank_batch(1))
            stream.synchronize()

    def blank_batch(self, n: int) -> torch.Tensor:
        """Zeros shaped, typed and placed like this pipeline's batches (the model's warm-up)."""
        h, w = self.preprocess.input_size
        return self._torch.zeros((n, 3, h, w), dtype=self._torch.float32, device=self.device)

    def describe(self) -> str:
        return (f"gpu (decode: {self.decoder.name}; resize/crop/normalize on {self.device}: "
                f"{resize_path(self.preprocess, self.device)})")

    def batch_of(self, images: list[torch.Tensor]) -> torch.Tensor | None:
        """Decoded (3, h, w) uint8 images -> one float32 NCHW batch (None for no images)."""
        if not images:
            return None
        if self._resize_warm is not None:  # its kernels are ours: do not compile them twice
            self._resize_warm.join()
            self._resize_warm = None
        h, w = self.preprocess.input_size
        batch = self._torch.empty((len(images), 3, h, w), dtype=self._torch.float32,
                                  device=self.device)
        return to_batch(images, self.preprocess, batch)

    def assemble(self, entries: Sequence[Entry]) -> Assembled:
        """Inputs in memory -> one batch ready on the current stream, and the indices that
        could not be decoded."""
        images = self.decoder.decode(entries)
        failed = [i for i, image in enumerate(images) if image is None]
        batch = self.batch_of([image for image in images if image is not None])
        if batch is not None and self.cuda:
            self._torch.cuda.current_stream(self.device).synchronize()
        return Assembled(batch, failed)

    def _items(self, decoded: Iterator[tuple[list[Entry], list[torch.Tensor | None]]],
               batch_size: int) -> Iterator[InputBatch]:
        """Batches of exactly ``batch_size`` decodable images (the last may be smaller), as
        in the CPU path: fixed shapes keep CUDA graphs and cuDNN plans reusable. Images are
        resized a group (``work_group``) at a time and the batches are slices of it."""
        group = work_group(batch_size)
        good: list[tuple[Entry, torch.Tensor]] = []
        skipped: list[Path] = []
        for chunk, images in decoded:
            for entry, image in zip(chunk, images):
                if image is None:
                    skipped.append(entry.source)
                else:
                    good.append((entry, image))
            while len(good) >= group:
                yield from self._slices(good[:group], skipped, batch_size)
                good, skipped = good[group:], []
        if good or skipped:
            yield from self._slices(good, skipped, batch_size)

    def _slices(self, good: list[tuple[Entry, torch.Tensor]], skipped: list[Path],
                batch_size: int) -> Iterator[InputBatch]:
        """One resize over ``good``, handed out as batches of ``batch_size`` (``skipped`` with
        the first). No record_stream for the decode stream's images (costly per image):
        ``good`` holds them until the prefetcher has synchronized this stream."""
        whole = self.batch_of([image for _, image in good])
        if whole is None:
            yield InputBatch(None, [], [], skipped)
            return
        for at in range(0, len(good), batch_size):
            part = good[at:at + batch_size]
            yield InputBatch(whole[at:at + batch_size], [e.source for e, _ in part],
                             [e.label for e, _ in part], skipped if at == 0 else [])

    def _decoded(self, pool: ThreadPoolExecutor, samples: list[tuple[Path, int]],
                 batch_size: int, options: Options,
                 ) -> Iterator[tuple[list[Entry], list[torch.Tensor | None]]]:
        read = reader_for(options.native_reads)
        reader = self._reader_process(len(samples), options)
        group = work_group(batch_size)
        if reader is None:
            ahead = max(2 * group, self.workers * READ_GROUP)  # files in flight
            for chunk in rebatch(read_groups(pool, read, samples, ahead), group):
                yield chunk, self.decoder.decode(chunk)
            return
        chunks = SlotChunks(reader, samples, group,
                            lambda paths: list(map_grouped(pool, read, paths)))
        try:
            for chunk in chunks:
                images = self.decoder.decode(chunk)
                chunks.consumed(len(chunk))  # their bytes are no longer needed
                yield [e._replace(payload=None) for e in chunk], images
        finally:
            reader.close()
            if chunks.failed and not self.reader_failed:
                from pochitrain.console import warn

                self.reader_failed = chunks.failed
                warn(f"The file reader process stopped ({chunks.failed}); reading in this "
                     "process instead.")

    def _reader_process(self, n_files: int, options: Options) -> ReaderProcess | None:
        """The helper process for a pass, or None: small passes (its start-up would cost more
        than it saves), few cores, off Linux, ``POCHI_READER=thread|python``."""
        if options.reader in ("thread", "python") or self.reader_failed:
            return None
        if options.reader != "process" and (n_files < PROCESS_READER_MIN_FILES
                                            or not self.cuda or (os.cpu_count() or 1) < 4):
            return None
        from PIL import Image

        return ReaderProcess.start(Image.MAX_IMAGE_PIXELS)

    def __call__(self, samples: list[tuple[Path, int]],
                 batch_size: int) -> Iterator[InputBatch]:
        options = Options.from_env()
        with quick_gil_handoff(), \
                ThreadPoolExecutor(self.workers, thread_name_prefix="pochi-read") as pool:
            on_error = _out_of_memory(batch_size)
            decoded = prefetch(lambda: self._decoded(pool, samples, batch_size, options),
                               self.device, name="pochi-gpu-decode", on_error=on_error)
            items = prefetch(lambda: self._items(decoded, batch_size), self.device,
                             name="pochi-gpu-batches", on_error=on_error)
            try:
                yield from items
            finally:
                items.close()
                with contextlib.suppress(ValueError):  # still running after a join timeout
                    decoded.close()


def _out_of_memory(batch_size: int) -> Callable[[BaseException], BaseException]:
    import torch

    def convert(exc: BaseException) -> BaseException:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return GpuMemoryError(f"GPU のメモリが足りません。\nDecoding a batch of {batch_size} "
                              "images ran out of GPU memory.",
                              "Use a smaller --batch-size, or --pipeline cpu.")
        return exc
    return convert
