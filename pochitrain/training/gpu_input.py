"""GPU input for training: decode JPEGs with nvJPEG and run the config's transforms on the GPU.

``gpu_input = "auto" | True | False`` (config) picks it. The train / val transforms are mapped
transform by transform (``map_transforms``): torchvision's transforms that work on tensors
(Resize, CenterCrop, RandomResizedCrop, RandomCrop, RandomHorizontalFlip / VerticalFlip,
RandomRotation, RandomAffine, ColorJitter, Grayscale, RandomGrayscale, GaussianBlur,
Normalize, ...) run unchanged on a (3, H, W) uint8 CUDA tensor, each image with its own random
parameters; ``ToTensor`` becomes a division by 255. Anything else (a lambda, a custom class,
a PIL-only transform) makes the whole run use the CPU DataLoader, said once with the reason.

Images: JPEGs are decoded in chunks by ``torchvision.io.decode_jpeg(device="cuda")``; other
formats, JPEGs nvJPEG refuses and EXIF-rotated JPEGs by PIL (``data.open_rgb``), so skips
and orientation follow the CPU path. ``gpu_input_cache = "ram" | "gpu"`` decodes the dataset
once and keeps uint8 tensors (the memory it takes is printed first; too large is a DataError).

Transforms: ``gpu_batch.compile_chain`` runs a chain as a few whole-batch kernels (one
antialiased resample per image for resize / crop / flip, then colour, rotation, Normalize on
the (N, 3, H, W) batch); a chain it cannot reproduce runs per image (``apply``), said once.
Batches are prepared one or two ahead in a thread, on their own CUDA stream, while the model
trains on the current one.

The same code runs on CPU tensors (``device="cpu"``), which is how the tests exercise it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from pochitrain.data import ImageFolder, open_rgb
from pochitrain.errors import ConfigError, DataError
from pochitrain.inference.gpu_preprocess import _read, map_grouped, quick_gil_handoff, read_threads
from pochitrain.training.data import Batch, lone_last_image
from pochitrain.training.gpu_batch import Plan, compile_chain

# torchvision transforms (v1 names, also in transforms.v2) that accept uint8 tensors and give
# the same kind of result as on PIL images
TENSOR_OK = frozenset({
    "Resize", "CenterCrop", "RandomResizedCrop", "RandomCrop", "RandomHorizontalFlip",
    "RandomVerticalFlip", "RandomRotation", "RandomAffine", "RandomPerspective", "ColorJitter",
    "Grayscale", "RandomGrayscale", "GaussianBlur", "Pad", "RandomInvert", "RandomPosterize",
    "RandomSolarize", "RandomAdjustSharpness", "RandomAutocontrast", "RandomEqualize",
    "Normalize", "RandomErasing", "ConvertImageDtype", "ToDtype", "ToImage", "PILToTensor",
})
TO_FLOAT = frozenset({"ToTensor"})
CHOICES = ("auto", True, False)
# the train loader drops its last partial batch when there are at least this many full ones
TRAIN_DROP_LAST_BATCHES = 8


class ToFloat(torch.nn.Module):
    """``ToTensor`` for a uint8 tensor: float32 in 0..1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def _parts(transform: Any) -> list[Any]:
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)) and type(transform).__name__ == "Compose":
        return [p for t in inner for p in _parts(t)]
    return [transform]


def map_transforms(transform: Any) -> tuple[list[Any] | None, str | None]:
    """(ops to run on a (3, H, W) uint8 tensor, None) or (None, why not)."""
    if transform is None:
        return None, "no transform"
    ops: list[Any] = []
    for t in _parts(transform):
        name = type(t).__name__
        if name in TO_FLOAT:
            ops.append(ToFloat())
        elif name in ("ToImage", "PILToTensor"):
            continue
        elif name in TENSOR_OK and type(t).__module__.startswith("torchvision.transforms"):
            ops.append(t)
        else:
            return None, f"{name} has no GPU equivalent"
    return ops, None


def apply(ops: list[Any], image: torch.Tensor) -> torch.Tensor:
    for op in ops:
        image = op(image)
    return image if image.is_floating_point() else image.float().div_(255.0)


def decide(choice: Any, device: str, transforms: dict[str, Any]) -> tuple[bool, str]:
    """(use the GPU path, one-line reason) for ``gpu_input`` and the train/val transforms."""
    if choice not in CHOICES:
        raise ConfigError(f"gpu_input = {choice!r} is not valid.", "Use 'auto', True or False.")
    if choice is False:
        return False, "gpu_input = False"
    if not device.startswith("cuda"):
        if choice is True:
            raise ConfigError("gpu_input = True needs a CUDA GPU, but this run uses the CPU.",
                              "Set gpu_input = 'auto' (GPU when there is one) or False.")
        return False, "no CUDA device"
    for key, tf in transforms.items():
        _, why = map_transforms(tf)
        if why is not None:
            return False, f"{key}: {why}"
    return True, "CUDA and every transform has a GPU equivalent"


def _pil_tensor(path: Path) -> torch.Tensor | None:
    import numpy as np

    image = open_rgb(path)
    if image is None:
        return None
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def decode(paths: list[Path], device: str, pool: ThreadPoolExecutor,
           reads: Iterator[tuple[str, Any]] | None = None) -> list[Any]:
    """uint8 (3, H, W) tensors on ``device`` (None where the file cannot be decoded).
    ``reads``: the files' ``gpu_preprocess._read`` results, when already started
    (``GpuLoader._reads``, one batch ahead)."""
    from pochitrain.fastimport import import_torchvision

    import_torchvision()  # without TorchDynamo's import cost
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[Any] = [None] * len(paths)
    jpeg_i, jpeg_data = [], []
    for i, (kind, payload) in enumerate(reads if reads is not None
                                        else map_grouped(pool, _read, paths)):
        if kind == "jpeg":
            jpeg_i.append(i)
            jpeg_data.append(payload)
        elif kind == "rgb":  # decoded by PIL in the reading thread
            out[i] = torch.from_numpy(payload.copy()).permute(2, 0, 1).contiguous().to(
                device, non_blocking=True)
    if jpeg_data:
        try:
            images = decode_jpeg(jpeg_data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: let PIL decide each one
            images = [paths[i] for i in jpeg_i]
        for i, image in zip(jpeg_i, images, strict=True):
            out[i] = image
    for i, item in enumerate(out):
        if isinstance(item, Path):
            t = _pil_tensor(item)
            out[i] = None if t is None else t.to(device, non_blocking=True)
    return out


class _Samples:
    """What ``fit`` reads from ``loader.dataset``: ``samples`` and ``len``."""

    def __init__(self, folder: ImageFolder) -> None:
        self.samples = folder.samples

    def __len__(self) -> int:
        return len(self.samples)


class GpuLoader:
    """Batches (``training.data.Batch``) decoded and transformed on ``device``.

    ``sampler``: dataset indices per pass (a torch Sampler, e.g. ``DistributedSampler``), or
    None for ``shuffle`` with ``seed``. ``cache``: a list of uint8 tensors (decode-once).
    ``batched``: run the transforms as whole-batch kernels when the chain allows it (else per
    image, said once naming ``split``). ``prefetch``: batches prepared ahead in a thread.
    """

    def __init__(self, folder: ImageFolder, ops: list[Any], *, batch_size: int, shuffle: bool,
                 device: str, seed: int | None, sampler: Any = None, drop_last: bool = False,
                 cache: list[Any] | None = None, threads: int | None = None,
                 batched: bool = True, prefetch: int = 2, split: str = "train") -> None:
        self.folder, self.ops, self.batch_size = folder, ops, batch_size
        self.shuffle, self.device, self.sampler, self.drop_last = shuffle, device, sampler, drop_last
        self.dataset = _Samples(folder)
        self.cache, self.prefetch = cache, prefetch
        self.plan: Plan | None = None
        why: str | None = "batched = False"
        if batched:
            self.plan, why = compile_chain(ops)
        if self.plan is None:
            from pochitrain.console import info

            info(f"GPU input: {split}_transform runs image by image ({why}).")
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        self.pool = ThreadPoolExecutor(threads or read_threads("training"))

    def resharded(self, sampler: Any, batch_size: int, drop_last: bool = False) -> GpuLoader:
        new = GpuLoader.__new__(GpuLoader)
        new.__dict__.update(self.__dict__)
        new.sampler, new.batch_size, new.drop_last = sampler, batch_size, drop_last
        return new

    def _indices(self) -> list[int]:
        if self.sampler is not None:
            return list(iter(self.sampler))
        n = len(self.dataset)
        if self.shuffle:
            return torch.randperm(n, generator=self.generator).tolist()
        return list(range(n))

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _chunks(self) -> list[list[int]]:
        idx = self._indices()
        chunks = [idx[s:s + self.batch_size] for s in range(0, len(idx), self.batch_size)]
        if self.drop_last and chunks and len(chunks[-1]) < self.batch_size:
            chunks.pop()
        return chunks

    def __iter__(self) -> Iterator[Batch]:
        chunks = self._chunks()
        with quick_gil_handoff():  # the readers and the prefetch thread beside the training
            if self.prefetch <= 0:
                for chunk in chunks:
                    yield self._batch(chunk)
                return
            yield from _prefetched(self, chunks)

    def _reads(self, chunk: list[int]) -> Iterator[tuple[str, Any]] | None:
        """Start reading the files of ``chunk`` (None when the images are cached)."""
        if self.cache is not None:
            return None
        return map_grouped(self.pool, _read, [self.folder.samples[i][0] for i in chunk])

    def _batch(self, chunk: list[int], reads: Iterator[tuple[str, Any]] | None = None) -> Batch:
        samples = self.folder.samples
        if self.cache is not None:
            images = [self.cache[i] for i in chunk]
            images = [None if im is None else im.to(self.device, non_blocking=True)
                      for im in images]
        else:
            images = decode([samples[i][0] for i in chunk], self.device, self.pool, reads)
        good = [(im, samples[i][1]) for im, i in zip(images, chunk, strict=True)
                if im is not None]
        skipped = [i for im, i in zip(images, chunk, strict=True) if im is None]
        if not good:
            return Batch(None, None, skipped)
        if self.plan is not None:
            x = self.plan([im for im, _ in good])
        else:
            x = torch.stack([apply(self.ops, im) for im, _ in good])
        y = torch.tensor([label for _, label in good], device=self.device)
        return Batch(x, y, skipped)

    def warm_up(self) -> None:
        """Decode and transform one full batch, so that nvJPEG's start, the first kernels'
        loading and the Triton kernels' compilation (the tap counts a full batch needs) are
        not counted in the first epoch (the RNG state is kept)."""
        n = min(self.batch_size, len(self.folder.samples))
        with torch.random.fork_rng(devices=[]):
            for start in range(0, min(len(self.folder.samples), 8 * n), n):
                if self._batch(list(range(start, start + n))).images is not None:
                    break
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)


_END = object()


def _prefetched(loader: GpuLoader, chunks: list[list[int]]) -> Iterator[Batch]:
    """The loader's batches, made ``loader.prefetch`` ahead in a thread (CUDA: on a side
    stream, so decoding and transforms overlap the training step)."""
    cuda = loader.device.startswith("cuda")
    stream = torch.cuda.Stream(loader.device) if cuda else None
    out: queue.Queue[Any] = queue.Queue(maxsize=loader.prefetch)
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
            with ctx:
                ahead = loader._reads(chunks[0]) if chunks else None
                for k, chunk in enumerate(chunks):
                    if stop.is_set():
                        return
                    reads = ahead  # the next batch's files are read while this one is made
                    ahead = loader._reads(chunks[k + 1]) if k + 1 < len(chunks) else None
                    batch = loader._batch(chunk, reads)
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                    put((batch, event))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put(exc)
        put(_END)

    worker = threading.Thread(target=produce, name="pochi-gpu-input", daemon=True)
    worker.start()
    try:
        while True:
            item = out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            batch, event = item
            if event is not None:
                current = torch.cuda.current_stream(loader.device)
                current.wait_event(event)
                for t in (batch.images, batch.labels):
                    if t is not None:
                        t.record_stream(current)
            yield batch
    finally:
        stop.set()
        worker.join()


def cache_bytes(folder: ImageFolder) -> int:
    """uint8 RGB bytes of every image, from the file headers (nothing decoded)."""
    from PIL import Image

    def size(path: Path) -> int:
        try:
            with Image.open(path) as im:
                return int(im.width * im.height * 3)
        except Exception:  # noqa: BLE001 - unreadable: skipped later
            return 0

    return sum(size(path) for path, _ in folder.samples)


def build_cache(folder: ImageFolder, where: str, device: str, split: str) -> list[Any]:
    """Decode ``folder`` once into uint8 tensors in RAM (``"ram"``) or GPU memory (``"gpu"``);
    the size is printed first, and a DataError stops it when it would not fit."""
    from pochitrain.console import info

    need = cache_bytes(folder)
    if where == "gpu" and device.startswith("cuda"):
        free = torch.cuda.mem_get_info(torch.device(device))[0]
        limit, what = int(free * 0.5), "half of the free GPU memory"
    else:
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
        limit, what = int(pages * os.sysconf("SC_PAGE_SIZE") * 0.5), "half of the free RAM"
        where = "ram"
    info(f"gpu_input_cache: decoding {len(folder.samples)} {split} images once into "
         f"{'GPU memory' if where == 'gpu' else 'RAM'}: {need / 2**30:.2f} GiB")
    if need > limit:
        raise DataError(f"The {split} images take {need / 2**30:.2f} GiB as uint8 tensors, more "
                        f"than {what} ({limit / 2**30:.2f} GiB).",
                        "Set gpu_input_cache = None (decode every epoch), or 'ram' instead of "
                        "'gpu', or resize the images on disk first.")
    target = device if where == "gpu" else "cpu"
    out: list[Any] = []
    with ThreadPoolExecutor(read_threads("training")) as pool:
        paths = [p for p, _ in folder.samples]
        for start in range(0, len(paths), 256):
            for im in decode(paths[start:start + 256], device, pool):
                out.append(None if im is None else im.to(target))
    return out


def gpu_loaders(settings: Any, train: ImageFolder, val: ImageFolder, device: str,
                train_tf: Any, val_tf: Any) -> tuple[GpuLoader, GpuLoader] | None:
    """The two loaders of the GPU input path, or None for the CPU DataLoader (the reason is
    printed once when the GPU path was asked for or possible)."""
    from pochitrain.console import info, warn

    choice = getattr(settings, "gpu_input", "auto")
    use, why = decide(choice, device, {"train_transform": train_tf, "val_transform": val_tf})
    if not use:
        if choice is True:
            raise ConfigError(f"gpu_input = True but {why}.",
                              "Remove that transform (or write it with torchvision transforms "
                              "that work on tensors), or set gpu_input = 'auto'.")
        if device.startswith("cuda") and choice == "auto":
            warn(f"GPU input not used ({why}): images are decoded by the CPU DataLoader.")
        return None
    cache_where = getattr(settings, "gpu_input_cache", None)
    loaders = []
    for split, folder, tf, shuffle in (("train", train, train_tf, True),
                                       ("val", val, val_tf, False)):
        ops, _ = map_transforms(tf)
        cache = build_cache(folder, cache_where, device, split) if cache_where else None
        # a last, smaller train batch is a new shape: cuDNN autotunes it again in epoch 1
        n = len(folder.samples)
        drop = shuffle and (n >= TRAIN_DROP_LAST_BATCHES * settings.batch_size
                            or lone_last_image(n, settings.batch_size))
        loaders.append(GpuLoader(folder, ops or [], batch_size=settings.batch_size,
                                 shuffle=shuffle, device=device, seed=settings.seed,
                                 cache=cache, drop_last=drop, split=split))
    how = ", ".join(f"{split} {'batched' if lo.plan is not None else 'image by image'}"
                    for split, lo in zip(("train", "val"), loaders, strict=True))
    info(f"GPU input: JPEGs decoded by nvJPEG, transforms run on the GPU ({how})")
    for loader in loaders:
        loader.warm_up()
    return loaders[0], loaders[1]
