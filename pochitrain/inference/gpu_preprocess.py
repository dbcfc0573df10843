"""GPU input pipeline for the PyTorch runner (``--pipeline gpu``): keeps the GPU fed.

Two stages, each in its own thread on its own CUDA stream, one batch ahead of the model:
(1) file bytes are read by a thread pool, complete JPEGs of a chunk are decoded together by
nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``), other formats, JPEGs nvJPEG refuses
and JPEGs with an EXIF orientation (nvJPEG ignores it) by PIL (``data.open_rgb``: upright,
16-bit scaled to 8 bits); (2) the uint8 images of a batch are resized + center-cropped together by
``gpu_resize.resize_batch`` (grouped by size, two batched matmuls with PIL's weights) and one
normalize runs over the whole float32 NCHW batch.

Skips follow the CPU path: a file is skipped when PIL (``data.open_rgb``) cannot decode it,
i.e. truncated JPEGs (no end-of-image marker) and anything nvJPEG fails on go to PIL for the
verdict.

Differences from the CPU path (``Preprocess.__call__``, PIL): the resize reproduces PIL's
fixed-point arithmetic up to float32 rounding (rare +-1 levels); nvJPEG's IDCT / chroma
upsampling differ slightly from libjpeg's. Top-1 agreement is measured in
``benchmarks/gpu_bench.py``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pochitrain.data import open_rgb
from pochitrain.errors import UsageError
from pochitrain.inference.gpu_resize import resize_batch
from pochitrain.inference.jpeg_header import header_verdict, is_complete_jpeg
from pochitrain.preprocess import Preprocess

PIPELINES = ("auto", "cpu", "gpu")
# torch mode for each Preprocess interpolation the GPU reproduces; "nearest-exact" samples
# pixel centres as PIL does.
_TORCH_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}
_DONE = object()
EXIF_ORIENTATION = 0x0112
READ_GROUP = 32  # files per read task
# threads reading files: inference measured best with 1 (H200: 9,667 img/s against 6,426
# with 4 and 5,086 with 16); training was measured with 4 (3,837 img/s for resnet18)
READ_THREADS = {"inference": 1, "training": 4}
SWITCH_INTERVAL = 1e-4  # seconds; see quick_gil_handoff
# passes over at least this many files read them in a helper process (read_proc.py)
PROCESS_READER_MIN_FILES = 4096

Item = tuple[Any, list[Path], list[int], list[Path]]  # (batch or None, paths, labels, skipped)


def gpu_unsupported(preprocess: Preprocess) -> str | None:
    """Why ``preprocess`` cannot run on the GPU pipeline, or None when it can."""
    if preprocess.resize is not None and preprocess.interpolation not in _TORCH_MODES:
        return (f"interpolation {preprocess.interpolation!r} has no GPU equivalent "
                f"(supported: {', '.join(_TORCH_MODES)})")
    return None


def resolve_pipeline(pipeline: str, device: str, preprocess: Preprocess) -> tuple[str, str]:
    """(``"cpu"`` or ``"gpu"``, a one-line reason) for ``--pipeline auto|cpu|gpu``."""
    if pipeline not in PIPELINES:
        raise UsageError(f"Unknown --pipeline {pipeline!r}.", "Use auto, cpu or gpu.")
    on_gpu = device.startswith("cuda")
    why_not = gpu_unsupported(preprocess)
    if pipeline == "gpu":
        if not on_gpu:
            raise UsageError("--pipeline gpu needs the model on a CUDA GPU; this run uses the "
                             "CPU.", "Use --pipeline cpu (or auto), or --device cuda on a GPU.")
        if why_not:
            raise UsageError(f"--pipeline gpu cannot reproduce this preprocessing: {why_not}.",
                             "Use --pipeline cpu (PIL), which supports every interpolation.")
        return "gpu", "asked for"
    if pipeline == "cpu":
        return "cpu", "asked for"
    if not on_gpu:
        return "cpu", "model on the CPU"
    if why_not:
        return "cpu", why_not
    return "gpu", "CUDA available"


def read_file_python(path: Path) -> bytearray:
    """The file's bytes in a writable buffer (``torch.frombuffer`` shares it, no copy)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(size)
        got = f.readinto(buf)
        if got != size:  # the file changed while read: take what is there
            del buf[got:]
            buf += f.read()
    return buf


@functools.lru_cache(maxsize=1)
def _native_read() -> Any:
    """torchvision's C++ ``read_file`` op, or None where torchvision has no image ops."""
    try:
        import torch

        from pochitrain.fastimport import import_torchvision

        import_torchvision()
        return torch.ops.image.read_file
    except Exception:  # noqa: BLE001 - no compiled image ops: Python reads the files
        return None


def read_file(path: Path) -> Any:
    """The file's bytes as a 1-D uint8 CPU tensor (what nvJPEG takes, no copy).

    torchvision's C++ reader opens, reads and closes the file under one release of the GIL;
    Python's reads release and retake it for each system call, which beside busy threads
    costs far more than the read (2 cores: 18,600 against 5,900 files/s beside one thread
    running Python, ``benchmarks/read_probe.py``). Python reads the rest: empty or
    unreadable files (the OSError is raised from there), names C++ cannot take, and every
    file under ``POCHI_READER=python`` (to compare the two)."""
    import torch

    native = _native_read() if os.environ.get("POCHI_READER", "") != "python" else None
    if native is not None:
        with contextlib.suppress(Exception):  # Python's read gives the verdict below
            return native(os.fspath(path))
    buf = read_file_python(path)
    return torch.frombuffer(buf, dtype=torch.uint8) if buf else torch.empty(0, dtype=torch.uint8)


def resize_crop(image: Any, preprocess: Preprocess) -> Any:
    """(3, h, w) uint8 tensor -> (3, H, W) float32 tensor of 0..255 values, on its device
    (one image through :func:`gpu_resize.resize_batch`)."""
    import torch

    h, w = preprocess.input_size
    out = torch.empty((1, 3, h, w), dtype=torch.float32, device=image.device)
    return resize_batch([image], preprocess, out)[0]


_fused_broken: list[str] = []  # the reason, once the Triton kernels failed in this process


def resize_path(preprocess: Preprocess, device: str) -> str:
    """Which resize :func:`to_batch` uses for ``preprocess`` on ``device``."""
    from pochitrain.inference import resize_kernel

    if (device.startswith("cuda") and not _fused_broken and resize_kernel.supports(preprocess)
            and os.environ.get("POCHI_GPU_RESIZE", "") != "matmul"
            and resize_kernel.triton_available()):
        return "banded Triton kernels, PIL-exact"
    return "batched matmuls, PIL's weights"


def to_batch(images: list[Any], preprocess: Preprocess, out: Any) -> Any:
    """Decoded (3, h, w) uint8 images -> ``out`` (n, 3, H, W): resized, center-cropped and
    normalized. On CUDA, two fused Triton kernels (a banded resize, bit-exact to PIL) where
    Triton is present; otherwise, or if they fail to compile, the batched matmuls + one
    normalize (said once)."""
    if resize_path(preprocess, str(out.device)).startswith("banded"):
        from pochitrain.inference.resize_kernel import resize_normalize

        try:
            return resize_normalize(images, preprocess, out)
        except Exception as exc:  # noqa: BLE001 - a Triton/driver problem: keep serving
            from pochitrain.console import warn

            _fused_broken.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            warn(f"GPU resize kernels unavailable ({_fused_broken[0]}); using the matmul resize.")
    resize_batch(images, preprocess, out)
    return normalize_(out, preprocess)


def normalize_(batch: Any, preprocess: Preprocess) -> Any:
    """In place: 0..255 values -> (x / 255 - mean) / std, as one fused multiply-add."""
    import torch

    std = torch.tensor(preprocess.std, dtype=torch.float32, device=batch.device)
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=batch.device)
    scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
    shift = (mean / std).view(1, 3, 1, 1)
    return batch.mul_(scale).sub_(shift)


def nvjpeg_reads_like_pil(data: bytes | bytearray | memoryview) -> bool:
    """False when nvJPEG would give other pixels than ``data.open_rgb``: an EXIF orientation
    to apply (nvJPEG ignores it), CMYK / YCCK or RGB-coded colour (PIL converts those its own
    way), or more pixels than PIL's limit. Reads the header only."""
    from PIL import Image

    verdict = header_verdict(data, Image.MAX_IMAGE_PIXELS)
    if verdict is not None:
        return verdict
    try:  # markers we cannot read: ask PIL
        with Image.open(io.BytesIO(data)) as img:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and img.width * img.height > limit:
                return False
            return img.getexif().get(EXIF_ORIENTATION, 1) == 1
    except Exception:  # noqa: BLE001 - anything odd: PIL (open_rgb) decides
        return False


_handoff_lock = threading.Lock()
_handoff_users = [0, 0.0]  # pipelines running, the switch interval before the first


@contextlib.contextmanager
def quick_gil_handoff() -> Iterator[None]:
    """While the GPU input threads run, Python switches threads every 0.1 ms instead of 5.

    Readers release the GIL for each system call; at the default interval each of them then
    waits up to 5 ms behind a thread running Python code (the decode or batch thread): files
    were read at 152/s beside one busy thread, 5,172/s at 0.1 ms (2 cores, one reader)."""
    with _handoff_lock:
        if _handoff_users[0] == 0:
            _handoff_users[1] = sys.getswitchinterval()
            sys.setswitchinterval(min(_handoff_users[1], SWITCH_INTERVAL))
        _handoff_users[0] += 1
    try:
        yield
    finally:
        with _handoff_lock:
            _handoff_users[0] -= 1
            if _handoff_users[0] == 0:
                sys.setswitchinterval(_handoff_users[1])


def read_threads(use: str = "inference") -> int:
    """Threads that read files. Reading a cached file takes microseconds and holds the GIL
    for most of them: many threads mostly fight over it, so few are used (measured in
    ``benchmarks/read_probe.py``); ``POCHI_READ_THREADS`` overrides."""
    env = os.environ.get("POCHI_READ_THREADS", "").strip()
    if env:
        if env.isdigit() and int(env) > 0:
            return int(env)
        if env not in _warned:
            from pochitrain.console import warn

            _warned.add(env)
            warn(f"POCHI_READ_THREADS={env!r} is not a positive whole number; ignored "
                 f"(using {READ_THREADS[use]}).")
    return min(READ_THREADS[use], os.cpu_count() or 1)


_warned: set[str] = set()


def map_grouped(pool: ThreadPoolExecutor, fn: Any, items: list[Any]) -> Iterator[Any]:
    """``fn`` over ``items`` in order, ``READ_GROUP`` items per pool task (a hand-off per file
    costs more than reading a cached file). Every task is submitted now, before the first
    result is asked for, so a caller can start the reads of its next batch early."""
    futures = [pool.submit(_each, fn, items[i:i + READ_GROUP])
               for i in range(0, len(items), READ_GROUP)]
    return (x for fut in futures for x in fut.result())


def _each(fn: Any, part: list[Any]) -> list[Any]:
    """One pool task of :func:`map_grouped` and of ``GpuBatches._read_groups``."""
    return [fn(x) for x in part]


def _read(path: Path) -> tuple[str, Any]:
    """('jpeg', uint8 tensor of the file) for nvJPEG, ('rgb', HWC uint8 array) decoded by PIL,
    or ('bad', None)."""
    try:
        data = read_file(path)
    except OSError:
        return "bad", None
    view = memoryview(data.numpy())
    if is_complete_jpeg(view) and nvjpeg_reads_like_pil(view):
        return "jpeg", data
    image = open_rgb(path)
    return ("bad", None) if image is None else ("rgb", np.asarray(image))


class GpuBatches:
    """``batches(samples, batch_size)`` -> iterator of (float32 NCHW tensor on ``device``,
    paths, labels, skipped paths), in input order; a drop-in for ``loop.iter_batches``.

    ``device="cpu"`` runs the same code without streams or nvJPEG (used by the tests).
    """

    def __init__(self, preprocess: Preprocess, device: str = "cuda",
                 workers: int | None = None) -> None:
        import torch

        from pochitrain.fastimport import import_torchvision

        import_torchvision()  # decode_jpeg lives there; skip TorchDynamo's ~2-5 s import
        why_not = gpu_unsupported(preprocess)
        if why_not:
            raise UsageError(f"The GPU pipeline cannot reproduce this preprocessing: {why_not}.",
                             "Use --pipeline cpu.")
        self._torch = torch
        self.preprocess = preprocess
        self.device = device
        self.workers = workers or read_threads()
        self.cuda = device.startswith("cuda")
        self._decoder: list[str] = [] if self.cuda else ["torchvision (CPU)"]
        self._resize_warm: threading.Thread | None = None
        self.reader_failed: str | None = None
        if self.cuda:  # nvJPEG's start-up (~0.65 s on an H100) overlaps the model's warm-up
            self._probe = threading.Thread(target=lambda: self._decoder.append(
                self._probe_nvjpeg()), name="pochi-nvjpeg-probe", daemon=True)
            self._probe.start()
            # and so does the resize kernels' (Triton hashes its own library, ~0.3 s, before
            # it finds the compiled kernels in its cache; then loads them, ~0.1 s)
            self._resize_warm = threading.Thread(target=self._warm_resize,
                                                 name="pochi-resize-warm", daemon=True)
            self._resize_warm.start()

    def _warm_resize(self) -> None:
        """One resize of a blank image the size of a typical photo for this preprocessing."""
        torch = self._torch
        h, w = self.preprocess.input_size
        with contextlib.suppress(Exception):  # a real batch meets (and reports) any problem
            stream = torch.cuda.Stream(self.device)  # its own: a model may be capturing a graph
            with torch.cuda.stream(stream):
                blank = torch.zeros((3, h * 3 // 2 + 1, w * 2), dtype=torch.uint8,
                                    device=self.device)
                to_batch([blank], self.preprocess, self.blank_batch(1))
            stream.synchronize()

    def blank_batch(self, n: int) -> Any:
        """Zeros shaped, typed and placed like this pipeline's batches (the model's warm-up)."""
        h, w = self.preprocess.input_size
        return self._torch.zeros((n, 3, h, w), dtype=self._torch.float32, device=self.device)

    @property
    def jpeg_decoder(self) -> str:
        """"nvJPEG", or why PIL decodes instead (known once the start-up probe is done)."""
        if not self._decoder:
            self._probe.join()
        return self._decoder[0] if self._decoder else "PIL in threads (nvJPEG probe failed)"

    def _probe_nvjpeg(self) -> str:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 90)).save(buf, format="JPEG")
        try:
            self._decode_many([buf.getvalue()])
        except RuntimeError as exc:  # torchvision built without nvJPEG
            self._nvjpeg_error = str(exc).splitlines()[0]
            return f"PIL in threads (nvJPEG unavailable: {self._nvjpeg_error})"
        return "nvJPEG"

    def describe(self) -> str:
        return (f"gpu (decode: {self.jpeg_decoder}; resize/crop/normalize on {self.device}: "
                f"{resize_path(self.preprocess, self.device)})")

    def _decode_many(self, datas: list[Any]) -> list[Any]:
        """nvJPEG over file contents: uint8 tensors (from :func:`read_file`) or bytes."""
        from torchvision.io import ImageReadMode, decode_jpeg

        torch = self._torch
        tensors = [d if isinstance(d, torch.Tensor) else
                   torch.frombuffer(d if isinstance(d, bytearray) else bytearray(d),
                                    dtype=torch.uint8) for d in datas]
        out = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)
        return list(out)

    def _decode_jpegs(self, datas: list[Any], paths: list[Path]) -> list[Any]:
        """Decoded (3, h, w) uint8 tensors; None where neither nvJPEG nor PIL can decode."""
        if not datas:
            return []
        if not self.jpeg_decoder.startswith("PIL"):
            try:
                return self._decode_many(datas)
            except RuntimeError:
                pass  # one bad file fails the whole batch: retry one by one
        out: list[Any] = []
        for data, path in zip(datas, paths):
            try:
                if self.jpeg_decoder.startswith("PIL"):
                    raise RuntimeError("no nvJPEG")
                out.append(self._decode_many([data])[0])
            except RuntimeError:
                image = open_rgb(path)  # PIL's verdict decides, as in the CPU path
                out.append(None if image is None else self._from_hwc(np.asarray(image)))
        return out

    def _from_hwc(self, array: np.ndarray) -> Any:
        return self._torch.from_numpy(array).permute(2, 0, 1).to(self.device)

    def _decode_chunk(self, chunk: list[tuple[Path, int, str, Any]]) -> list[Any]:
        """(3, h, w) uint8 device tensor per file of ``chunk``; None where undecodable."""
        jpeg_at = [i for i, c in enumerate(chunk) if c[2] == "jpeg"]
        decoded = self._decode_jpegs([chunk[i][3] for i in jpeg_at],
                                     [chunk[i][0] for i in jpeg_at])
        images: list[Any] = [None] * len(chunk)
        for i, img in zip(jpeg_at, decoded):
            images[i] = img
        for i, (_, _, kind, payload) in enumerate(chunk):
            if kind == "rgb":
                images[i] = self._from_hwc(payload)
        return images

    def _assemble(self, good: list[tuple[Path, int, Any]], skipped: list[Path]) -> Item:
        """Resize/crop each image into one float32 NCHW batch, then normalize it."""
        paths = [g[0] for g in good]
        labels = [g[1] for g in good]
        if not good:
            return None, paths, labels, skipped
        torch = self._torch
        if self._resize_warm is not None:  # its kernels are ours: do not compile them twice
            self._resize_warm.join()
            self._resize_warm = None
        h, w = self.preprocess.input_size
        batch = torch.empty((len(good), 3, h, w), dtype=torch.float32, device=self.device)
        return to_batch([g[2] for g in good], self.preprocess, batch), paths, labels, skipped

    def _items(self, decoded: Iterator[tuple[list[Any], list[Any]]],
               batch_size: int) -> Iterator[Item]:
        """Batches of exactly ``batch_size`` decodable images (the last may be smaller), as
        in the CPU path: fixed shapes keep CUDA graphs and cuDNN plans reusable."""
        good: list[tuple[Path, int, Any]] = []
        skipped: list[Path] = []
        # The images were made on the decode thread's stream and are read on this one. No
        # record_stream is needed (it cost 5-10 % of the stage, one call per image): an image
        # is released only after a later yield, i.e. after _threaded synchronized this stream.
        for chunk, images in decoded:
            for (path, label, _, _), img in zip(chunk, images):
                if img is None:
                    skipped.append(path)
                else:
                    good.append((path, label, img))
            while len(good) >= batch_size:
                yield self._assemble(good[:batch_size], skipped)
                good, skipped = good[batch_size:], []
        if good or skipped:
            yield self._assemble(good, skipped)

    def _decoded(self, pool: ThreadPoolExecutor, samples: list[tuple[Path, int]],
                 batch_size: int) -> Iterator[tuple[list[Any], list[Any]]]:
        reader = self._reader_process(len(samples))
        if reader is None:
            for chunk in self._chunks(pool, samples, batch_size):
                yield chunk, self._decode_chunk(chunk)
            return
        from pochitrain.inference.read_proc import SlotChunks

        chunks = SlotChunks(reader, samples, batch_size,
                            lambda paths: list(map_grouped(pool, _read, paths)))
        try:
            for chunk in chunks:
                images = self._decode_chunk(chunk)
                chunks.consumed(len(chunk))  # their bytes are no longer needed
                yield [(path, label, kind, None) for path, label, kind, _ in chunk], images
        finally:
            reader.close()
            if chunks.failed and not self.reader_failed:
                from pochitrain.console import warn

                self.reader_failed = chunks.failed
                warn(f"The file reader process stopped ({chunks.failed}); reading in this "
                     "process instead.")

    def _reader_process(self, n_files: int) -> Any:
        """A :class:`read_proc.ReaderProcess` for a pass over ``n_files``, or None: the read
        thread is used for small jobs (the helper's start-up would cost more than it saves),
        on machines with few cores, off Linux, and under ``POCHI_READER=thread|python``."""
        mode = os.environ.get("POCHI_READER", "").strip() or "auto"
        if mode in ("thread", "python") or self.reader_failed:
            return None
        if mode != "process" and (n_files < PROCESS_READER_MIN_FILES or not self.cuda
                                  or (os.cpu_count() or 1) < 4):
            return None
        from PIL import Image

        from pochitrain.inference.read_proc import ReaderProcess

        return ReaderProcess.start(Image.MAX_IMAGE_PIXELS)

    def _chunks(self, pool: ThreadPoolExecutor, samples: list[tuple[Path, int]],
                batch_size: int) -> Iterator[list[tuple[Path, int, str, Any]]]:
        """Chunks of ``batch_size`` read files, in order; files are read in groups (one pool
        task per group) a few batches ahead."""
        from pochitrain.inference.read_proc import rebatch

        return rebatch(self._read_groups(pool, samples, batch_size), batch_size)

    def _read_groups(self, pool: ThreadPoolExecutor, samples: list[tuple[Path, int]],
                     batch_size: int) -> Iterator[list[tuple[Path, int, str, Any]]]:
        ahead = max(2 * batch_size, self.workers * READ_GROUP)  # files in flight
        pending: deque[tuple[list[tuple[Path, int]], Future[list[tuple[str, Any]]]]] = deque()
        starts = iter(range(0, len(samples), READ_GROUP))
        queued = 0
        while True:
            while queued < ahead and (start := next(starts, None)) is not None:
                part = samples[start:start + READ_GROUP]
                pending.append((part, pool.submit(_each, _read, [p for p, _ in part])))
                queued += len(part)
            if not pending:
                return
            part, fut = pending.popleft()
            queued -= len(part)
            yield [(path, label, *got) for (path, label), got in zip(part, fut.result())]

    def __call__(self, samples: list[tuple[Path, int]], batch_size: int) -> Iterator[Item]:
        """Two stages, each in its own thread on its own CUDA stream, one batch ahead each:
        read + decode chunk k+1 while chunk k is resized / normalized while the model runs."""
        with quick_gil_handoff(), \
                ThreadPoolExecutor(self.workers, thread_name_prefix="pochi-read") as pool:
            decoded = self._threaded(lambda: self._decoded(pool, samples, batch_size),
                                     "pochi-gpu-decode", batch_size)
            items = self._threaded(lambda: self._items(decoded, batch_size),
                                   "pochi-gpu-batches", batch_size)
            try:
                yield from items
            finally:
                items.close()
                with contextlib.suppress(ValueError):  # still running after a join timeout
                    decoded.close()

    def _threaded(self, make: Any, name: str, batch_size: int) -> Generator[Any, None, None]:
        """Run the generator ``make()`` in a thread under its own CUDA stream; each item is
        complete on the GPU (stream synchronized) before it is handed over."""
        torch = self._torch
        out: queue.Queue[Any] = queue.Queue(maxsize=2)
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
                stream = torch.cuda.Stream(device=self.device) if self.cuda else None
                ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
                with ctx:
                    for item in make():
                        if stop.is_set():
                            return
                        if stream is not None:
                            stream.synchronize()  # complete before another stream reads it
                        put(item)
            except torch.cuda.OutOfMemoryError:
                from pochitrain.inference.torch_runner import GpuMemoryError

                put(GpuMemoryError(f"GPU のメモリが足りません。\nDecoding a batch of {batch_size} "
                                   "images ran out of GPU memory.",
                                   "Use a smaller --batch-size, or --pipeline cpu."))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put(exc)
            finally:
                put(_DONE)

        thread = threading.Thread(target=produce, name=name, daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=30)
