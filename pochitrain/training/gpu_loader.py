"""The training loader of the GPU input: nvJPEG decode and the config's transforms on the GPU.

``gpu_input = "auto" | True | False`` (config) picks it. torchvision transforms that work on
tensors run unchanged on (3, H, W) uint8 tensors (``map_transforms``; ``ToTensor`` becomes a
division by 255); anything else (a lambda, a custom class, a PIL-only transform) makes the run
use the CPU DataLoader, said once. Files are read and decoded by ``pochitrain.gpu_input``, so
skips and orientation follow the CPU path; ``gpu_input_cache = "ram" | "gpu"`` decodes the
dataset once. ``gpu_batch.compile_chain`` runs a chain as a few whole-batch kernels, else it
runs per image (said once). Batches are prepared ahead on their own CUDA stream while the
model trains. The same code runs on CPU tensors, which is how the tests exercise it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from pochitrain.console import info, warn
from pochitrain.data import ImageFolder
from pochitrain.errors import ConfigError, DataError
from pochitrain.gpu_input import (
    Decoder,
    Entry,
    Options,
    Read,
    map_grouped,
    prefetch,
    quick_gil_handoff,
    read_threads,
    reader_for,
)
from pochitrain.training.data import Batch, lone_last_image, seeded_generator, val_batch_size
from pochitrain.training.gpu_batch import compile_chain

# torchvision transforms (v1 names, also in transforms.v2) that accept uint8 tensors and give
# the same kind of result as on PIL images
TENSOR_OK = frozenset({
    "Resize", "CenterCrop", "RandomResizedCrop", "RandomCrop", "RandomHorizontalFlip",
    "RandomVerticalFlip", "RandomRotation", "RandomAffine", "RandomPerspective", "ColorJitter",
    "Grayscale", "RandomGrayscale", "GaussianBlur", "Pad", "RandomInvert", "RandomPosterize",
    "RandomSolarize", "RandomAdjustSharpness", "RandomAutocontrast", "RandomEqualize",
    "Normalize", "RandomErasing", "ConvertImageDtype", "ToDtype", "ToImage", "PILToTensor",
})
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
        if name == "ToTensor":
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
    if choice not in ("auto", True, False):
        raise ConfigError("gpu_input の値が正しくありません\n"
                          f"gpu_input = {choice!r} is not valid.", "Use 'auto', True or False.")
    if choice is False:
        return False, "gpu_input = False"
    if not device.startswith("cuda"):
        if choice is True:
            raise ConfigError("gpu_input = True には CUDA GPU が必要です\n"
                              "gpu_input = True needs a CUDA GPU, but this run uses the CPU.",
                              "Set gpu_input = 'auto' (GPU when there is one) or False.")
        return False, "no CUDA device"
    for key, tf in transforms.items():
        _, why = map_transforms(tf)
        if why is not None:
            return False, f"{key}: {why}"
    return True, "CUDA and every transform has a GPU equivalent"


def decode(paths: list[Path], decoder: Decoder, pool: ThreadPoolExecutor,
           reads: Iterator[Read] | None = None) -> list[torch.Tensor | None]:
    """uint8 (3, H, W) tensors on the decoder's device (None where undecodable); ``reads``:
    the files' reads when already started (one batch ahead)."""
    if reads is None:
        reads = map_grouped(pool, reader_for(Options.from_env().native_reads), paths)
    return decoder.decode([Entry(path, 0, *got) for path, got in zip(paths, reads)])


# share of the GPU memory free when the first pass starts (the model's memory is reserved by
# then: the warm-up ran a whole step) that "auto" may fill with decoded images
KEEP_SHARE = 1 / 3
SLAB_BYTES = 256 * 2**20


class DecodedImages:
    """Decoded uint8 images by dataset index (None: undecodable, skipped without reading).

    Filled up front (``gpu_input_cache = "ram" | "gpu"``, :func:`build_cache`) or as the first
    pass decodes (``"auto"``): each image is kept on the device while the byte ``budget``
    lasts, so later epochs take it from memory instead of reading and decoding it again. The
    budget of ``"auto"`` is worked out when the first pass starts (``KEEP_SHARE`` of the GPU
    memory free then)."""

    def __init__(self, device: str, images: dict[int, Any] | None = None,
                 budget: int | None = None, split: str = "train") -> None:
        self.device, self.images, self.budget = device, dict(images or {}), budget
        self.used, self.split, self.passes = 0, split, 0  # used: bytes of the slabs
        self._slab: torch.Tensor | None = None
        self._room = 0  # where the next image goes in the slab

    def begin_pass(self) -> None:
        """Before each pass: the budget before the first, a line on what was kept before the
        second."""
        self.passes += 1
        if self.budget is None and self.device.startswith("cuda"):
            self.budget = int(torch.cuda.mem_get_info(torch.device(self.device))[0] * KEEP_SHARE)
        if self.passes == 2 and self.used:
            held = sum(image is not None for image in self.images.values())
            rest = ("; the others are decoded every epoch (the limit: a third of the GPU "
                    "memory free at the start)") if self.budget == 0 else ""
            info(f"gpu_input_cache: {held} {self.split} images kept in GPU memory from the "
                 f"first epoch ({self.used / 2**30:.2f} GiB){rest}")

    def missing(self, chunk: list[int]) -> list[int]:
        return [i for i in chunk if i not in self.images]

    def keep(self, decoded: dict[int, Any]) -> None:
        if not self.budget:
            return
        for i, image in decoded.items():
            stored = None if image is None else self._place(image)
            if image is not None and stored is None:
                self.budget = 0  # full: the rest is decoded every pass
                return
            self.images[i] = stored

    def _place(self, image: torch.Tensor) -> torch.Tensor | None:
        """A copy of ``image`` in a slab of ``SLAB_BYTES`` (None: over the budget). Keeping
        the decoder's own tensors would make the allocator ask the driver for new memory for
        every image of the first epoch; slabs take a few large allocations."""
        size = image.numel() * image.element_size()
        if self._slab is None or self._room + size > self._slab.numel():
            grow = min(max(SLAB_BYTES, size), (self.budget or 0) - self.used)
            if grow < size:
                return None
            self._slab = torch.empty(grow, dtype=torch.uint8, device=image.device)
            self._room, self.used = 0, self.used + grow
        start = self._room
        self._room += -(-size // 16) * 16  # the next image starts aligned for any dtype
        return self._slab[start:start + size].view(image.dtype).view(image.shape).copy_(image)

    def get(self, i: int) -> Any:
        image = self.images[i]
        return None if image is None else image.to(self.device, non_blocking=True)


class _Samples:
    """What ``fit`` reads from ``loader.dataset``: ``samples`` and ``len``."""

    def __init__(self, folder: ImageFolder) -> None:
        self.samples = folder.samples

    def __len__(self) -> int:
        return len(self.samples)


class GpuLoader:
    """Batches (``training.data.Batch``) decoded and transformed on ``device``.

    ``sampler``: dataset indices per pass (a torch Sampler, e.g. ``DistributedSampler``), or
    None for ``shuffle`` with ``seed``. ``cache``: decoded images kept between passes.
    ``batched``: run the transforms as whole-batch kernels when the chain allows it (else per
    image, said once naming ``split``). ``prefetch``: batches prepared ahead in a thread.
    """

    def __init__(self, folder: ImageFolder, ops: list[Any], *, batch_size: int, shuffle: bool,
                 device: str, seed: int | None, sampler: Any = None, drop_last: bool = False,
                 cache: DecodedImages | None = None, batched: bool = True, prefetch: int = 2,
                 split: str = "train") -> None:
        self.folder, self.ops, self.batch_size = folder, ops, batch_size
        self.shuffle, self.device, self.sampler, self.drop_last = shuffle, device, sampler, drop_last
        self.dataset = _Samples(folder)
        self.cache, self.prefetch = cache, prefetch
        self.plan, why = compile_chain(ops) if batched else (None, "batched = False")
        if self.plan is None:
            info(f"GPU input: {split}_transform runs image by image ({why}).")
        self.generator = seeded_generator(seed)
        self.pool = ThreadPoolExecutor(read_threads("training"))
        self.decoder = Decoder(device)
        self.read = reader_for(Options.from_env().native_reads)

    def resharded(self, sampler: Any, batch_size: int, drop_last: bool = False) -> GpuLoader:
        new = copy.copy(self)
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
        if self.cache is not None:
            self.cache.begin_pass()
        with quick_gil_handoff():  # the readers and the prefetch thread beside the training
            if self.prefetch <= 0:
                yield from map(self._batch, chunks)
                return
            yield from prefetch(lambda: self._read_ahead(chunks), self.device,
                                depth=self.prefetch, name="pochi-gpu-input", handoff="event",
                                tensors=lambda b: (b.images, b.labels))

    def _read_ahead(self, chunks: list[list[int]]) -> Iterator[Batch]:
        """The batches of ``chunks``; the next batch's files are read while one is made."""
        ahead = self._reads(chunks[0]) if chunks else None
        for k, chunk in enumerate(chunks):
            reads = ahead
            ahead = self._reads(chunks[k + 1]) if k + 1 < len(chunks) else None
            yield self._batch(chunk, reads)

    def _reads(self, chunk: list[int]) -> tuple[list[int], Iterator[Read] | None]:
        """(the indices of ``chunk`` to decode, their files' reads, started)."""
        todo = chunk if self.cache is None else self.cache.missing(chunk)
        if not todo:
            return todo, None
        return todo, map_grouped(self.pool, self.read, [self.folder.samples[i][0] for i in todo])

    def _batch(self, chunk: list[int],
               ahead: tuple[list[int], Iterator[Read] | None] | None = None) -> Batch:
        samples = self.folder.samples
        todo, reads = ahead if ahead is not None else self._reads(chunk)
        decoded = (dict(zip(todo, decode([samples[i][0] for i in todo], self.decoder,
                                         self.pool, reads), strict=True)) if todo else {})
        if self.cache is not None:
            self.cache.keep(decoded)
        cache = self.cache
        images = [decoded[i] if cache is None or i in decoded else cache.get(i) for i in chunk]
        good = [(im, samples[i][1]) for im, i in zip(images, chunk, strict=True)
                if im is not None]
        skipped = [i for im, i in zip(images, chunk, strict=True) if im is None]
        if not good:
            return Batch(None, None, skipped)
        x = (self.plan([im for im, _ in good]) if self.plan is not None
             else torch.stack([apply(self.ops, im) for im, _ in good]))
        return Batch(x, torch.tensor([label for _, label in good], device=self.device), skipped)

    def warm_up(self) -> None:
        """Decode and transform one full batch, so that nvJPEG's start and the kernels'
        loading and compilation are not counted in the first epoch (the RNG state is kept)."""
        n = min(self.batch_size, len(self.folder.samples))
        with torch.random.fork_rng(devices=[]):
            for start in range(0, min(len(self.folder.samples), 8 * n), n):
                if self._batch(list(range(start, start + n))).images is not None:
                    break
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)


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


def build_cache(folder: ImageFolder, where: str, device: str, split: str) -> DecodedImages:
    """Decode ``folder`` once into uint8 tensors in RAM (``"ram"``) or GPU memory (``"gpu"``);
    the size is printed first, and a DataError stops it when it would not fit."""
    need = cache_bytes(folder)
    if where == "gpu" and device.startswith("cuda"):
        free = torch.cuda.mem_get_info(torch.device(device))[0]
        limit, what = int(free * 0.5), "half of the free GPU memory"
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        limit, what = int(free * 0.5), "half of the free RAM"
        where = "ram"
    info(f"gpu_input_cache: decoding {len(folder.samples)} {split} images once into "
         f"{'GPU memory' if where == 'gpu' else 'RAM'}: {need / 2**30:.2f} GiB")
    if need > limit:
        raise DataError("画像が GPU メモリの上限を超えます\n"
                        f"The {split} images take {need / 2**30:.2f} GiB as uint8 tensors, more "
                        f"than {what} ({limit / 2**30:.2f} GiB).",
                        "Set gpu_input_cache = None (decode every epoch), or 'ram' instead of "
                        "'gpu', or resize the images on disk first.")
    target = device if where == "gpu" else "cpu"
    out: list[Any] = []
    decoder = Decoder(device)
    with ThreadPoolExecutor(read_threads("training")) as pool:
        paths = [p for p, _ in folder.samples]
        for start in range(0, len(paths), 256):
            for im in decode(paths[start:start + 256], decoder, pool):
                out.append(None if im is None else im.to(target))
    return DecodedImages(device, dict(enumerate(out)), budget=0, split=split)


def kept_images(device: str, epochs: int, split: str = "train") -> DecodedImages | None:
    """``gpu_input_cache = "auto"``: images kept on the GPU as the first epoch decodes them,
    when there is a later epoch to use them."""
    return DecodedImages(device, split=split) if device.startswith("cuda") and epochs > 1 \
        else None


def gpu_loaders(settings: Any, train: ImageFolder, val: ImageFolder, device: str,
                train_tf: Any, val_tf: Any) -> tuple[GpuLoader, GpuLoader] | None:
    """The two loaders of the GPU input path, or None for the CPU DataLoader (the reason is
    printed once when the GPU path was asked for or possible). Not warmed up yet
    (``GpuLoader.warm_up``): nvJPEG starts in the background meanwhile."""
    choice = getattr(settings, "gpu_input", "auto")
    use, why = decide(choice, device, {"train_transform": train_tf, "val_transform": val_tf})
    if use and getattr(settings, "sampler", None) == "balanced":
        use, why = False, "sampler = 'balanced' draws its images through the CPU DataLoader"
    if not use:
        if choice is True:
            raise ConfigError("gpu_input = True を使えません\n"
                              f"gpu_input = True but {why}.",
                              "Remove that transform (or write it with torchvision transforms "
                              "that work on tensors), or set gpu_input = 'auto'.")
        if device.startswith("cuda") and choice == "auto":
            warn(f"GPU input not used ({why}): images are decoded by the CPU DataLoader.")
        return None
    cache_where = getattr(settings, "gpu_input_cache", "auto")
    loaders = []
    for split, folder, tf, shuffle in (("train", train, train_tf, True),
                                       ("val", val, val_tf, False)):
        ops, _ = map_transforms(tf)
        cache = (kept_images(device, settings.epochs, split) if cache_where == "auto" else
                 build_cache(folder, cache_where, device, split) if cache_where else None)
        # a last, smaller train batch is a new shape: cuDNN autotunes it again in epoch 1
        n = len(folder.samples)
        drop = shuffle and (n >= TRAIN_DROP_LAST_BATCHES * settings.batch_size
                            or lone_last_image(n, settings.batch_size))
        size = settings.batch_size if shuffle else val_batch_size(settings.batch_size)
        loaders.append(GpuLoader(folder, ops or [], batch_size=size,
                                 shuffle=shuffle, device=device, seed=settings.seed,
                                 cache=cache, drop_last=drop, split=split))
    how = ", ".join(f"{split} {'batched' if lo.plan is not None else 'image by image'}"
                    for split, lo in zip(("train", "val"), loaders, strict=True))
    info(f"GPU input: JPEGs decoded by nvJPEG, transforms run on the GPU ({how})")
    return loaders[0], loaders[1]
