"""One inference loop for every runtime, so results and timings are comparable.

decode + preprocess (a bounded thread pool runs ahead) -> batch -> runner (queued one batch
ahead where it can) -> softmax -> records. "Pure" time is the runner's model call alone,
"end-to-end" the wall clock of the whole timed loop; warm-up runs are not part of either.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from pochitrain.batching import InputBatch, softmax, stack_one_size, true_ranks
from pochitrain.data import ImageFolder, open_rgb
from pochitrain.inference.runner import IN_FLIGHT, Pending, Runner, submit
from pochitrain.preprocess import Preprocess
from pochitrain.reports import InferenceResult


def _load(path: Path, preprocess: Preprocess) -> np.ndarray | None:
    image = open_rgb(path)
    return None if image is None else preprocess(image)


def iter_batches(samples: list[tuple[Path, int]], preprocess: Preprocess, batch_size: int,
                 ) -> Iterator[InputBatch]:
    """The batches (NCHW float32 or None, paths, labels, skipped paths) in input order; at most
    ``3 * batch_size`` images are decoded ahead, so memory stays bounded."""
    workers = min(8, os.cpu_count() or 1)
    ahead = max(3 * batch_size, workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pochi-decode") as pool:
        pending: deque[tuple[Path, int, Future[np.ndarray | None]]] = deque()
        it = iter(samples)

        def fill() -> None:
            while len(pending) < ahead:
                nxt = next(it, None)
                if nxt is None:
                    return
                pending.append((nxt[0], nxt[1], pool.submit(_load, nxt[0], preprocess)))

        fill()
        while pending:
            arrays: list[np.ndarray] = []
            paths: list[Path] = []
            labels: list[int] = []
            skipped: list[Path] = []
            while pending and len(arrays) < batch_size:
                path, label, fut = pending.popleft()
                arr = fut.result()
                fill()
                if arr is None:
                    skipped.append(path)
                    continue
                arrays.append(arr)
                paths.append(path)
                labels.append(label)
            batch = stack_one_size(arrays, paths, batched=True) if arrays else None
            yield InputBatch(batch, paths, labels, skipped)


def _timed_pass(runner: Runner, items: Iterator[InputBatch], result: InferenceResult,
                progress: bool, total: int) -> None:
    """Every batch through the runner; the next batch is queued before the last one's
    logits are read (``runner.submit``), so the device does not wait for the host's
    softmax and bookkeeping, nor for the next batch's hand-over."""
    from pochitrain.console import progress_bar

    queued: deque[tuple[Pending, list[Path], list[int]]] = deque()

    def collect() -> None:
        pending, paths, labels = queued.popleft()
        logits, pure = pending.result()
        probs = softmax(logits)
        result.pure_seconds += pure
        result.preds.extend(int(i) for i in probs.argmax(axis=1))
        result.confidences.extend(float(p) for p in probs.max(axis=1))
        result.ranks.extend(true_ranks(probs, labels))
        result.paths.extend(paths)
        result.labels.extend(labels)

    with progress_bar(progress, f"inference ({runner.name})", total) as advance:
        for batch, paths, labels, skipped in items:
            result.skipped.extend(skipped)
            if batch is not None:
                queued.append((submit(runner, batch), paths, labels))
            if len(queued) >= IN_FLIGHT:
                collect()
            advance(len(paths) + len(skipped))
        while queued:
            collect()


def _blank_batch(batches: Any, preprocess: Preprocess, n: int) -> Any:
    """Zeros shaped like the source's batches: its own ``blank_batch`` (a CUDA tensor from the
    GPU pipeline), else a float32 NCHW array as the CPU path makes."""
    make = getattr(batches, "blank_batch", None)
    if make is not None:
        return make(n)
    h, w = preprocess.input_size
    return np.zeros((n, 3, h, w), dtype=np.float32)


BatchSource = Callable[[list[tuple[Path, int]], int], Iterator[InputBatch]]


def run_inference(runner: Runner, folder: ImageFolder, preprocess: Preprocess,
                  batch_size: int, class_names: list[str], warmup_runs: int = 2,
                  progress: bool = True, batches: BatchSource | None = None) -> InferenceResult:
    """Run ``runner`` over every image of ``folder`` (labels in model order); ``batches``
    replaces the CPU (PIL) input path, e.g. with ``gpu_input.GpuBatches``."""
    runner.check_batch_size(batch_size)
    result = InferenceResult(runner.name, list(class_names), batch_size=batch_size)
    samples = list(folder.samples)
    if batches is None:
        def batches(s: list[tuple[Path, int]], n: int) -> Iterator[Any]:
            return iter_batches(s, preprocess, n)

    # One pass over the data. The model warms up on a blank batch of the first batch's shape
    # while another thread waits for that first batch, so the input pipeline's start-up
    # (nvJPEG's, the resize kernels', the file reads) overlaps the model's (cuDNN plans,
    # CUDA graphs, TensorRT contexts) instead of following it. Neither is timed.
    items = iter(batches(samples, batch_size))
    early: list[InputBatch] = []
    try:
        if warmup_runs > 0 and samples:
            with ThreadPoolExecutor(1, thread_name_prefix="pochi-first-batch") as first:
                pending = first.submit(next, items, None)
                try:
                    blank = _blank_batch(batches, preprocess, min(batch_size, len(samples)))
                    for _ in range(warmup_runs):
                        runner.run(blank)
                finally:  # the generator must not be closed while that thread runs it
                    wait([pending])
            item = pending.result()
            result.warmup_samples = warmup_runs * len(blank)
            if item is not None:
                early.append(item)

        start = time.perf_counter()
        _timed_pass(runner, itertools.chain(early, items), result, progress, len(samples))
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
    result.e2e_seconds = time.perf_counter() - start
    return result
