"""Batched geometry for the GPU training input: one resample per image, whatever the chain.

The axis-aligned ops of a chain are folded, per image and axis, into one map from output to
source coordinates, ``source = a * out + b`` (``a < 0``: flipped), plus the output interval
that comes from the image (outside it: zero fill). Each op updates these (N,) tensors with its
own random parameters, drawn as torchvision draws them (vectorised, global torch RNG).

``resample`` then makes every output image in ONE pass: each image's source window goes into a
zero-padded float buffer, resampled by two batched matmuls with PIL's antialiased filters, so
downscaling averages like the CPU pipeline; images are sorted by window size and chunked to
bound memory and padding. Where the banded Triton kernels of ``pochitrain.gpu_input`` run
(uint8 RGB on CUDA, bilinear or bicubic), they do it instead, with the same taps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from pochitrain.gpu_input import (
    KERNELS,
    SUPPORT,
    Band,
    banded_usable,
    bucket_taps,
    dense,
    fixed_point,
    pil_window,
    separable,
    two_passes,
)

CHUNK_ELEMENTS = 2**26  # floats per padded buffer (256 MiB): bounds memory for large images
MIN_CHUNK = 16  # images per chunk before padding waste may start a new one (fewer launches)
_SUPPORT = {**SUPPORT, "nearest": 0.5}
F64 = torch.float64


@dataclass
class Axis:
    """One axis of every image: (N,) float64 CPU tensors."""

    src: torch.Tensor  # source length
    length: torch.Tensor  # current (virtual) length
    a: torch.Tensor
    b: torch.Tensor
    lo: torch.Tensor  # [lo, hi): virtual coordinates that come from the image
    hi: torch.Tensor

    @classmethod
    def of(cls, lengths: torch.Tensor) -> Axis:
        n = lengths.to(F64)
        return cls(n, n.clone(), torch.ones_like(n), torch.zeros_like(n), torch.zeros_like(n),
                   n.clone())

    def crop(self, start: torch.Tensor, size: Any) -> None:
        """Keep [start, start + size); a negative start pads with zeros before."""
        start = start.to(F64)
        self.b = self.b + self.a * start
        self.lo, self.hi = self.lo - start, self.hi - start
        self.length = torch.as_tensor(size, dtype=F64).expand_as(self.a).clone()

    def resize(self, size: Any) -> None:
        size = torch.as_tensor(size, dtype=F64).expand_as(self.a)
        ratio = self.length / size
        self.a = self.a * ratio
        self.lo, self.hi = self.lo / ratio, self.hi / ratio
        self.length = size.clone()

    def flip(self, mask: torch.Tensor) -> None:
        b = torch.where(mask, self.b + self.a * self.length, self.b)
        lo = torch.where(mask, self.length - self.hi, self.lo)
        self.hi = torch.where(mask, self.length - self.lo, self.hi)
        self.a, self.b, self.lo = torch.where(mask, -self.a, self.a), b, lo


@dataclass
class Geometry:
    """The folded map of every image of a batch (y: rows, x: columns)."""

    y: Axis
    x: Axis
    mode: str = "bilinear"
    antialias: bool = True

    @classmethod
    def of(cls, sizes: list[tuple[int, int]]) -> Geometry:
        hw = torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2)
        return cls(Axis.of(hw[:, 0]), Axis.of(hw[:, 1]))

    @property
    def n(self) -> int:
        return int(self.y.a.numel())

    def interpolation(self, mode: Any, antialias: Any = True) -> None:
        name = str(getattr(mode, "value", mode)).lower()
        # several resizes become one: the first non-bilinear filter named wins
        if self.mode == "bilinear":
            self.mode = name
        self.antialias = self.antialias and antialias is not False


class Plane(NamedTuple):
    """One axis of a resample: per image the source window read (first pixel, length), and
    the taps, (N, n_out, K) int64 columns from the window's first pixel with float32 weights."""

    start: list[int]
    length: list[int]
    j: torch.Tensor
    w: torch.Tensor


def _plane(axis: Axis, n_out: int, mode: str, antialias: bool, device: Any) -> Plane:
    start, count = _windows(axis, n_out, mode, antialias)
    a, b = axis.a.to(device), axis.b.to(device)
    start_t = torch.tensor(start, device=device, dtype=F64)[:, None, None]
    o = torch.arange(n_out, device=device, dtype=F64) + 0.5
    centre = a[:, None] * o[None] + b[:, None]  # (n, n_out) source coordinate
    valid = (o[None] >= axis.lo.to(device)[:, None]) & (o[None] < axis.hi.to(device)[:, None])
    if mode == "nearest":
        top = axis.src.to(device)[:, None, None] - 1
        j = torch.minimum(centre[:, :, None].floor().clamp(min=0), top) - start_t
        return Plane(start, count, j.long(), valid[:, :, None].to(torch.float32))
    stretch = a.abs().clamp(min=1.0) if antialias else torch.ones_like(a)
    n_taps = math.ceil(_SUPPORT[mode] * float(stretch.max())) * 2 + 1  # PIL's ksize
    first, w = pil_window(centre, valid, axis.src.to(device), stretch, n_taps, mode)
    j = first[:, :, None] - start_t + torch.arange(n_taps, device=device, dtype=F64)
    return Plane(start, count, j.long(), w.to(torch.float32))  # j outside the window: weight 0


def _windows(axis: Axis, n_out: int, mode: str, antialias: bool) -> tuple[list[int], list[int]]:
    """Per image, the first source pixel and the count of them the output reads."""
    ends = torch.stack([axis.a * 0.5 + axis.b, axis.a * (n_out - 0.5) + axis.b])
    support = _SUPPORT[mode] * (axis.a.abs().clamp(min=1.0) if antialias and mode != "nearest"
                                else torch.ones_like(axis.a))
    first = (ends.min(0).values - support).floor().clamp(min=0)
    last = torch.minimum((ends.max(0).values + support).ceil() + 1, axis.src)
    first = torch.minimum(first, last)
    return first.long().tolist(), (last - first).clamp(min=0).long().tolist()


def resample(images: list[torch.Tensor], geo: Geometry, out_h: int, out_w: int) -> torch.Tensor:
    """(N, C, out_h, out_w) float32 from N (C, h_i, w_i) tensors (same value scale)."""
    device = images[0].device
    channels = int(images[0].shape[0])
    y = _plane(geo.y, out_h, geo.mode, geo.antialias, device)
    x = _plane(geo.x, out_w, geo.mode, geo.antialias, device)
    hs, ws = y.length, x.length
    out = torch.empty(len(images), channels, out_h, out_w, device=device)
    if use_banded(images, geo.mode):
        try:
            return _banded(images, y, x, out)
        except Exception as exc:  # noqa: BLE001 - a Triton/driver problem: the matmuls go on
            KERNELS.fail(exc, "resample")
    first, *rest = sorted(range(len(images)), key=lambda i: (hs[i] * ws[i], hs[i]))
    chunk, area = [first], hs[first] * ws[first]
    for i in rest:
        grown = chunk + [i]
        size = len(grown) * max(hs[k] for k in grown) * max(ws[k] for k in grown)
        # padding is computed too: start a new chunk when it would waste a third
        wasteful = len(chunk) >= MIN_CHUNK and size > 1.5 * (area + hs[i] * ws[i])
        if size * channels <= CHUNK_ELEMENTS and not wasteful:
            chunk, area = grown, area + hs[i] * ws[i]
        else:
            _resample_chunk(images, geo.mode, chunk, y, x, out)
            chunk, area = [i], hs[i] * ws[i]
    _resample_chunk(images, geo.mode, chunk, y, x, out)
    return out


def use_banded(images: list[torch.Tensor], mode: str) -> bool:
    """The banded kernels take uint8 RGB images on CUDA (on the CPU under
    ``TRITON_INTERPRET=1``, for the tests)."""
    on = images[0].is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return (all(im.dtype == torch.uint8 and im.dim() == 3 and im.shape[0] == 3
                for im in images)
            and banded_usable(on, mode))


def _band(plane: Plane) -> Band:
    """The kernels' form of the taps: first window pixel, fixed-point weights, tap count."""
    bucket = bucket_taps(int(plane.w.shape[-1]))
    coef = torch.nn.functional.pad(fixed_point(plane.w.double()),
                                   (0, bucket - int(plane.w.shape[-1])))
    return Band(plane.j[..., 0].to(torch.int32).contiguous(), coef.to(torch.int32).contiguous(),
                bucket)


def _banded(images: list[torch.Tensor], y: Plane, x: Plane, out: torch.Tensor) -> torch.Tensor:
    """Two launches for the whole batch, whatever the image sizes. A uint8 intermediate
    (PIL's clip8) between the passes: within a few grey levels of the float matmuls."""
    device = out.device
    src = torch.cat([im.reshape(-1) for im in images]) if len(images) > 1 else \
        images[0].reshape(-1)
    rows, base = [], 0
    for im, y0, x0, h in zip(images, y.start, x.start, y.length, strict=True):
        ih, iw = int(im.shape[1]), int(im.shape[2])
        rows.append([base, ih * iw, iw, y0, x0, h, iw - x0])
        base += 3 * ih * iw
    norm = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], device=device)  # values stay 0..255
    two_passes(src, rows, _band(y), _band(x), out, norm, max(max(y.length), 1), vfirst=False)
    return out


def _resample_chunk(images: list[torch.Tensor], mode: str, chunk: list[int], y: Plane,
                    x: Plane, out: torch.Tensor) -> None:
    ys, hs, xs, ws = y.start, y.length, x.start, x.length
    device, channels = out.device, int(out.shape[1])
    h_in, w_in = max(1, max(hs[k] for k in chunk)), max(1, max(ws[k] for k in chunk))
    buf = torch.zeros(len(chunk), h_in, channels, w_in, device=device)
    for row, k in enumerate(chunk):
        if hs[k] and ws[k]:
            src = images[k][:, ys[k]:ys[k] + hs[k], xs[k]:xs[k] + ws[k]]
            buf[row, :hs[k], :, :ws[k]].copy_(src.permute(1, 0, 2))
    idx = torch.tensor(chunk, device=device)
    wy, wx = dense(y.j[idx], y.w[idx], h_in), dense(x.j[idx], x.w[idx], w_in)
    res = separable(buf, wy, wx, clip8=False)  # float between the passes, as torchvision
    if mode == "bicubic" and images[0].dtype == torch.uint8:
        res = res.clamp(0.0, 255.0)  # cubic overshoots; torchvision clamps uint8 results
    out[idx] = res


# ---- the axis-aligned ops, each (geo, transform) -> None, drawing its random parameters ----

def pair(size: Any) -> tuple[int, int]:
    """(h, w) from torchvision's int / 1-seq / 2-seq size."""
    size = [size] if isinstance(size, int) else list(size)
    return int(size[0]), int(size[-1])


def resize(geo: Geometry, t: Any) -> None:
    size, max_size = t.size, getattr(t, "max_size", None)
    geo.interpolation(t.interpolation, getattr(t, "antialias", True))
    if isinstance(size, (list, tuple)) and len(size) == 2:
        geo.y.resize(float(size[0]))
        geo.x.resize(float(size[1]))
        return
    want = size if isinstance(size, int) else size[0]
    h, w = geo.y.length, geo.x.length
    short, long = torch.minimum(h, w), torch.maximum(h, w)
    new_short, new_long = torch.full_like(h, float(want)), (want * long / short).floor()
    if max_size is not None:
        over = new_long > max_size
        new_short = torch.where(over, (max_size * new_short / new_long).floor(), new_short)
        new_long = torch.where(over, torch.full_like(h, float(max_size)), new_long)
    portrait = w <= h
    geo.y.resize(torch.where(portrait, new_long, new_short))
    geo.x.resize(torch.where(portrait, new_short, new_long))


def _center_start(length: torch.Tensor, crop: int) -> torch.Tensor:
    pad_before = ((crop - length) / 2).floor()
    return torch.where(length < crop, -pad_before, ((length - crop) / 2.0).round())


def center_crop(geo: Geometry, t: Any) -> None:
    ch, cw = pair(t.size)
    geo.y.crop(_center_start(geo.y.length, ch), float(ch))
    geo.x.crop(_center_start(geo.x.length, cw), float(cw))


def _randint(high: torch.Tensor) -> torch.Tensor:
    """Uniform integers in [0, high) per element (high >= 1)."""
    return (torch.rand(high.shape, dtype=F64) * high).floor().clamp(max=high - 1)


def random_resized_crop(geo: Geometry, t: Any) -> None:
    """torchvision's get_params, 10 tries per image, then its centre-crop fallback."""
    geo.interpolation(t.interpolation, getattr(t, "antialias", True))
    h, w = geo.y.length, geo.x.length
    n = geo.n
    area = (h * w)[:, None]
    lo_s, hi_s = float(t.scale[0]), float(t.scale[1])
    log_r = (math.log(t.ratio[0]), math.log(t.ratio[1]))
    target = area * torch.empty(n, 10, dtype=F64).uniform_(lo_s, hi_s)
    aspect = torch.exp(torch.empty(n, 10, dtype=F64).uniform_(*log_r))
    cw = torch.sqrt(target * aspect).round()
    ch = torch.sqrt(target / aspect).round()
    ok = (cw > 0) & (cw <= w[:, None]) & (ch > 0) & (ch <= h[:, None])
    first = ok.to(torch.int8).argmax(1, keepdim=True)
    found = ok.any(1)
    cw, ch = cw.gather(1, first)[:, 0], ch.gather(1, first)[:, 0]
    in_ratio = w / h
    fw = torch.where(in_ratio < min(t.ratio), w, torch.where(in_ratio > max(t.ratio),
                     (h * max(t.ratio)).round(), w))
    fh = torch.where(in_ratio < min(t.ratio), (w / min(t.ratio)).round(), h)
    ch, cw = torch.where(found, ch, fh), torch.where(found, cw, fw)
    top = torch.where(found, _randint(h - ch + 1), ((h - ch) / 2).floor())
    left = torch.where(found, _randint(w - cw + 1), ((w - cw) / 2).floor())
    out_h, out_w = pair(t.size)
    geo.y.crop(top, ch)
    geo.x.crop(left, cw)
    geo.y.resize(float(out_h))
    geo.x.resize(float(out_w))


def padding_ltrb(padding: Any) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) from torchvision's int / 2-seq / 4-seq padding."""
    p = [padding] if isinstance(padding, int) else [int(v) for v in padding]
    p = p * (4 // len(p))  # one value for every side, or (left/right, top/bottom)
    return p[0], p[1], p[2], p[3]


def pad(geo: Geometry, t: Any) -> None:
    left, top, right, bottom = padding_ltrb(t.padding)
    geo.y.crop(torch.full_like(geo.y.a, -top), geo.y.length + top + bottom)
    geo.x.crop(torch.full_like(geo.x.a, -left), geo.x.length + left + right)


def random_crop(geo: Geometry, t: Any) -> None:
    th, tw = pair(t.size)
    if t.padding is not None:
        pad(geo, t)
    if t.pad_if_needed:
        for axis, want in ((geo.x, tw), (geo.y, th)):  # torchvision pads width first
            short = (want - axis.length).clamp(min=0)
            axis.crop(-short, axis.length + 2 * short)
    h, w = geo.y.length, geo.x.length
    if bool((h < th).any() or (w < tw).any()):
        raise ValueError(f"Required crop size {(th, tw)} is larger than input image size "
                         f"{(int(h.min()), int(w.min()))}")
    geo.y.crop(_randint(h - th + 1), float(th))
    geo.x.crop(_randint(w - tw + 1), float(tw))


def horizontal_flip(geo: Geometry, t: Any) -> None:
    geo.x.flip(torch.rand(geo.n) < t.p)


def vertical_flip(geo: Geometry, t: Any) -> None:
    geo.y.flip(torch.rand(geo.n) < t.p)
