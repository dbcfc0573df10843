"""Fused, banded resize + center-crop + normalize on the GPU (Triton), bit-exact to PIL.

Each output pixel reads only its filter window, straight from the decoded images in one flat
buffer, in two kernels per batch whatever the image sizes (a pass to uint8, then the other
pass, clip8 and normalize into the batch, in Pillow's order). The arithmetic is PIL's own
(22-bit fixed point, int32 sums, clip8 after each pass): every pixel equals ``Image.resize``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from pochitrain.gpu_input.resample import SUPPORT, band, geometry, taps, window_bounds

if TYPE_CHECKING:
    import torch

    from pochitrain.preprocess import Preprocess

BLOCK_X = 64
BLOCK_R = 16


class Band(NamedTuple):
    """One axis of a batch for the kernels: the first input pixel of each output pixel's
    window (n, n_out) int32, its fixed-point weights (n, n_out, taps) int32, and taps."""

    start: torch.Tensor
    coef: torch.Tensor
    taps: int


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when Triton imports and can compile for this machine's GPU."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import problem: use the matmul resize
        return False
    return True


def supports(preprocess: Preprocess) -> bool:
    """Bilinear and bicubic (and crop-only) run here; nearest keeps the matmul path, which
    reproduces PIL's accumulated nearest coordinates exactly."""
    return preprocess.resize is None or preprocess.interpolation in SUPPORT


def scale_shift(preprocess: Preprocess, device: torch.device) -> torch.Tensor:
    """(scale[3], shift[3]) so that ``v * scale - shift == (v / 255 - mean) / std``."""
    import torch

    std = torch.tensor(preprocess.std, dtype=torch.float32)
    mean = torch.tensor(preprocess.mean, dtype=torch.float32)
    return torch.cat([1.0 / (255.0 * std), mean / std]).to(device, non_blocking=True)


@lru_cache(maxsize=1)
def pil_vertical_first_rule() -> bool:
    """Whether the installed Pillow runs the vertical pass first when the height shrinks by
    more than twice as many pixels as the width (Pillow 13 does, earlier releases do not):
    probed, so the GPU follows the Pillow that the CPU pipeline uses."""
    import numpy as np
    from PIL import Image

    probe = Image.fromarray(np.random.default_rng(7).integers(0, 256, (64, 37, 3), np.uint8))
    bil = Image.Resampling.BILINEAR
    direct = np.asarray(probe.resize((30, 40), bil))
    horizontal_first = np.asarray(probe.resize((30, 64), bil).resize((30, 40), bil))
    return not np.array_equal(direct, horizontal_first)


def vertical_first(h: int, w: int, rh: int, rw: int) -> bool:
    """The pass order Pillow uses for an h x w -> rh x rw resize."""
    return pil_vertical_first_rule() and h - rh > 0 and h - rh > (w - rw) * 2


class ImagePlan(NamedTuple):
    """One image of a batch: its offset in the concatenated source, geometry, the input rows
    / columns the crop reads ([lo, hi)), tap counts and pass order."""

    base: int
    h: int
    w: int
    rh: int
    rw: int
    oy: int
    ox: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    tx: int
    ty: int
    vfirst: bool


def plan(images: list[torch.Tensor], preprocess: Preprocess, out_h: int, out_w: int,
         mode: str) -> list[ImagePlan]:
    """Each image's plan for the kernels (its size's part worked out once per process)."""
    steps = (None if preprocess.resize is None else tuple(preprocess.resize),
             None if preprocess.center_crop is None else tuple(preprocess.center_crop),
             preprocess.interpolation, out_h, out_w, mode)
    plans = []
    base = 0
    for im in images:
        h, w = int(im.shape[1]), int(im.shape[2])
        plans.append(ImagePlan(base, *_size_plan(steps, h, w)))
        base += 3 * h * w
    return plans


@lru_cache(maxsize=4096)  # a data set has few image sizes; planning one costs far more
def _size_plan(steps: tuple, h: int, w: int) -> tuple:
    """The fields of ``ImagePlan`` after ``base`` for an h x w image; ``steps`` is
    (resize, center crop, interpolation, out_h, out_w, mode) of the preprocessing."""
    from pochitrain.preprocess import Preprocess

    resize, crop, interpolation, out_h, out_w, mode = steps
    preprocess = Preprocess([out_h, out_w], None if resize is None else list(resize),
                            None if crop is None else list(crop), interpolation)
    rh, rw, oy, ox = geometry(preprocess, h, w)
    if crop is None and (rh, rw) != (out_h, out_w):
        raise ValueError("images resize to different sizes and there is no center crop")
    wins = []
    for size, resized, off, n in ((h, rh, oy, out_h), (w, rw, ox, out_w)):
        first, last = max(off, 0), min(off + n, resized) - 1
        wins.append(window_bounds(size, resized, first, last, mode) if last >= first
                    else (0, 1))
    return (h, w, rh, rw, oy, ox, wins[0], wins[1], taps(w, rw, mode), taps(h, rh, mode),
            vertical_first(h, w, rh, rw))


def resize_normalize(images: list[torch.Tensor], preprocess: Preprocess,
                     out: torch.Tensor) -> torch.Tensor:
    """(3, h_k, w_k) uint8 tensors -> ``out`` ((n, 3, H, W), float32 / fp16 / bf16),
    exactly as ``Preprocess.__call__`` (PIL) makes them. Runs on CUDA (or, for tests, on
    CPU tensors under ``TRITON_INTERPRET=1``)."""
    import torch

    mode = preprocess.interpolation if preprocess.resize is not None else "bilinear"
    out_h, out_w = int(out.shape[2]), int(out.shape[3])
    dev = images[0].device
    plans = plan(images, preprocess, out_h, out_w, mode)
    src = torch.cat([im.reshape(-1) for im in images]) if len(images) > 1 else \
        images[0].reshape(-1)
    norm = scale_shift(preprocess, dev)
    for vfirst in (False, True):
        idx = [i for i, p in enumerate(plans) if p.vfirst == vfirst]
        if idx:
            dst = out if len(idx) == len(plans) else torch.empty(
                (len(idx), 3, out_h, out_w), dtype=out.dtype, device=dev)
            _two_passes([plans[i] for i in idx], src, dst, norm, mode, vfirst)
            if dst is not out:
                out[torch.tensor(idx, device=dev)] = dst
    return out


def _two_passes(plans: list[ImagePlan], src: torch.Tensor, out: torch.Tensor,
                norm: torch.Tensor, mode: str, vfirst: bool) -> None:
    out_h, out_w = int(out.shape[2]), int(out.shape[3])
    t_x = bucket_taps(max(p.tx for p in plans))
    t_y = bucket_taps(max(p.ty for p in plans))
    # the axis the first pass keeps at input resolution
    span = max(max(hi - lo for lo, hi in (p.cols if vfirst else p.rows for p in plans)), 1)
    y, x = WINDOWS.bands(plans, (out_h, out_w, t_y, t_x, mode, vfirst), src.device)
    src_rows = [[p.base, p.h * p.w, p.w, 0 if vfirst else p.rows[0],
                 p.cols[0] if vfirst else 0, p.h - (0 if vfirst else p.rows[0]),
                 p.w - (p.cols[0] if vfirst else 0)] for p in plans]
    two_passes(src, src_rows, y, x, out, norm, span, vfirst)


class Windows:
    """Each image's windows (start and weights of both axes) on its device, kept by geometry:
    planning them anew takes some 160 small torch calls (CUDA launches) a batch, which a
    server's small batches would pay on every one.
    Missing ones are worked out together, one batch of kernels for all of them, and kept as
    that batch (its rows share storage), the least recently used batches going first once
    more than ``size`` images are kept: about 22 MB of GPU memory for 224 x 224 bilinear
    from camera photos."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self.groups: OrderedDict[int, list[tuple]] = OrderedDict()  # group -> its keys
        self.where: dict[tuple, tuple[int, list[torch.Tensor]]] = {}  # key -> (group, row)
        self.count = 0  # rows kept
        self.made = 0  # groups made so far: the next group's number
        self.lock = threading.Lock()

    def bands(self, plans: list[ImagePlan], shape: tuple, dev: torch.device) -> tuple[Band, Band]:
        """(y, x) of ``plans``; ``shape`` is (out_h, out_w, t_y, t_x, mode, vfirst)."""
        import torch

        where = (shape, str(dev))
        keys = [(p[1:], *where) for p in plans]
        rows: list[list[torch.Tensor] | None] = [None] * len(keys)
        with self.lock:
            for i, key in enumerate(keys):
                if key in self.where:
                    group, rows[i] = self.where[key]
                    self.groups.move_to_end(group)
        missing = [i for i, got in enumerate(rows) if got is None]
        if missing:
            made = _windows([plans[i] for i in missing], shape, dev)
            for n, i in enumerate(missing):
                rows[i] = [part[n] for part in made]  # views: the group's storage is shared
            self._keep([keys[i] for i in missing], [rows[i] for i in missing])
        got = [r for r in rows if r is not None]  # every one by now
        y_start, y_coef, x_start, x_coef = (torch.stack([r[k] for r in got]) for k in range(4))
        return Band(y_start, y_coef, shape[2]), Band(x_start, x_coef, shape[3])

    def _keep(self, keys: list[tuple], rows: list[list[torch.Tensor] | None]) -> None:
        with self.lock:
            group, self.made = self.made, self.made + 1
            self.groups[group] = keys
            self.where.update((key, (group, row)) for key, row in zip(keys, rows) if row)
            self.count += len(keys)
            while self.count > self.size and len(self.groups) > 1:
                gone, old = self.groups.popitem(last=False)
                self.count -= len(old)
                for key in old:  # unless a newer group holds it (two threads made it)
                    if key in self.where and self.where[key][0] == gone:
                        del self.where[key]


WINDOWS = Windows()


def _windows(plans: list[ImagePlan], shape: tuple, dev: torch.device) -> list[torch.Tensor]:
    """[y start, y weights, x start, x weights] of ``plans``, one row per image: windows
    relative to what the first pass keeps, rows from rows[0] (horizontal first), columns from
    cols[0] (vertical first); the other axis starts at 0 of the source."""
    import torch

    out_h, out_w, t_y, t_x, mode, vfirst = shape
    geo = torch.tensor([[p.h, p.w, p.rh, p.rw, p.oy, p.ox, p.rows[0], p.cols[0]]
                        for p in plans], dtype=torch.int64).to(dev, non_blocking=True)
    zero = torch.zeros(len(plans), dtype=torch.int64, device=dev)
    y = band(geo[:, 0], geo[:, 2], geo[:, 4], zero if vfirst else geo[:, 6], out_h, t_y, mode)
    x = band(geo[:, 1], geo[:, 3], geo[:, 5], geo[:, 7] if vfirst else zero, out_w, t_x, mode)
    return [*y, *x]


def two_passes(src: torch.Tensor, src_rows: list[list[int]], y: Band, x: Band,
               out: torch.Tensor, norm: torch.Tensor, span: int, vfirst: bool) -> None:
    """Launch the two kernels: ``src`` the images' uint8 pixels concatenated, ``src_rows``
    one addressing row per image (see ``triton_kernels``), ``span`` the lines the first pass
    keeps at input resolution, ``out`` (n, 3, H, W) = ``v * scale - shift`` (``norm``)."""
    import torch

    from pochitrain.gpu_input import triton_kernels as kernels  # imports triton: when used

    n, dev = len(src_rows), src.device
    out_h, out_w = int(out.shape[2]), int(out.shape[3])
    lines, outs = (out_h, span) if vfirst else (span, out_w)
    tmp_rows = [[k * 3 * lines * outs, lines * outs, outs, 0, 0, lines, outs]
                for k in range(n)]
    img = torch.tensor(src_rows + tmp_rows, dtype=torch.int64).to(dev, non_blocking=True)
    tmp = torch.empty((n, 3, lines, outs), dtype=torch.uint8, device=dev)

    def grid(n_i: int, n_j: int) -> tuple[int, int, int]:
        return (n * 3, -(-n_i // BLOCK_R), -(-n_j // BLOCK_X))

    blocks = {"BLOCK_L": BLOCK_R, "BLOCK_O": BLOCK_X}
    if vfirst:
        kernels.vertical[grid(out_h, span)](src, img[:n], y.start, y.coef, tmp, norm, out_h,
                                            span, TAPS=y.taps, FINAL=False, **blocks)
        kernels.horizontal[grid(out_h, out_w)](tmp, img[n:], x.start, x.coef, out, norm, out_h,
                                               out_w, TAPS=x.taps, FINAL=True, **blocks)
    else:
        kernels.horizontal[grid(span, out_w)](src, img[:n], x.start, x.coef, tmp, norm, span,
                                              out_w, TAPS=x.taps, FINAL=False, **blocks)
        kernels.vertical[grid(out_h, out_w)](tmp, img[n:], y.start, y.coef, out, norm, out_h,
                                             out_w, TAPS=y.taps, FINAL=True, **blocks)


def bucket_taps(n_taps: int) -> int:
    """Round the tap count up so that a few compiled variants serve every image size."""
    for b in (1, 3, 5, 7, 9, 13, 17, 25, 33):
        if n_taps <= b:
            return b
    return -(-n_taps // 32) * 32
