"""Batched resize + center-crop on the GPU that reproduces PIL's ``Image.resize`` arithmetic.

PIL resizes 8-bit images separably (horizontal pass, clip8, vertical pass) with 22-bit
fixed-point weights of a filter stretched by the downscale factor. PIL's windows are built here
(:func:`band`, shared with the Triton kernels of ``banded``) and laid out as dense matrices, so
a group of images (zero-padded to its largest) is resized by two batched matmuls; results equal
PIL's up to float32 rounding in the sums. Nearest (PIL's affine nearest) is a one-hot matrix.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from pochitrain.preprocess import Preprocess

SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}  # filter support radius, in source pixels
PRECISION_BITS = 32 - 8 - 2  # PIL's fixed-point precision for 8-bit images


def geometry(preprocess: Preprocess, h: int, w: int) -> tuple[int, int, int, int]:
    """(resized h, resized w, crop offset top, crop offset left) for an image of h x w; an
    offset is negative when the crop is larger than the image (zero padding)."""
    from pochitrain.preprocess import resized_size

    rh, rw = (h, w) if preprocess.resize is None else resized_size(h, w, preprocess.resize)
    if preprocess.center_crop is None:
        return rh, rw, 0, 0
    ch, cw = preprocess.center_crop

    def offset(size: int, crop: int) -> int:
        return -((crop - size) // 2) if crop > size else round((size - crop) / 2.0)

    return rh, rw, offset(rh, ch), offset(rw, cw)


def pil_filter(x: torch.Tensor, mode: str) -> torch.Tensor:
    import torch

    x = x.abs()
    if mode == "bilinear":
        return (1.0 - x).clamp_(min=0.0)
    a = -0.5
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    outer = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, inner, torch.where(x < 2.0, outer, torch.zeros_like(x)))


def taps(in_len: int, out_len: int, mode: str) -> int:
    """Window length PIL allocates for one output pixel (``ksize``)."""
    support = SUPPORT[mode] * max(in_len / out_len, 1.0)
    return math.ceil(support) * 2 + 1


def window_bounds(in_len: int, out_len: int, first: int, last: int,
                  mode: str) -> tuple[int, int]:
    """[lo, hi) input pixels that resized pixels ``first..last`` (inclusive) read."""
    scale = in_len / out_len
    support = SUPPORT[mode] * max(scale, 1.0)
    lo = max(int((first + 0.5) * scale - support + 0.5), 0)
    hi = min(int((last + 0.5) * scale + support + 0.5), in_len)
    return lo, hi


def pil_window(center: torch.Tensor, inside: torch.Tensor, src_len: torch.Tensor,
               filterscale: torch.Tensor, n_taps: int, mode: str,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's ``precompute_coeffs`` in float64 for a batch along one axis: ``center``
    (n, n_out) source coordinate of each output pixel, ``inside`` (n, n_out) whether it comes
    from the image (else zero: crop padding), ``src_len`` and ``filterscale`` (n,) the source
    length and filter stretch. Returns the first input pixel (n, n_out) and ``n_taps``
    normalised weights (n, n_out, n_taps), zero past the window."""
    import torch

    fs = filterscale[:, None]
    support = SUPPORT[mode] * fs
    xmin = torch.trunc(center - support + 0.5).clamp(min=0.0)
    xmax = torch.minimum(torch.trunc(center + support + 0.5), src_len[:, None])
    j = xmin[:, :, None] + torch.arange(n_taps, device=center.device, dtype=center.dtype)
    w = pil_filter((j - center[:, :, None] + 0.5) * (1.0 / fs[:, :, None]), mode)  # PIL: * ss
    w = w * ((j < xmax[:, :, None]) & inside[:, :, None])
    total = w[:, :, :1].clone()
    for i in range(1, n_taps):  # PIL's summation order, so that rounding agrees
        total += w[:, :, i:i + 1]
    w = torch.where(total != 0, w / torch.where(total != 0, total, 1.0), 0.0)
    return torch.where(inside, xmin, 0.0), w


def band(in_len: torch.Tensor, out_len: torch.Tensor, offset: torch.Tensor, lo: torch.Tensor,
         n_out: int, n_taps: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's windows for a resize + center crop, in the kernels' form. ``in_len``,
    ``out_len``, ``offset``, ``lo``: (n,) int64 (input length, resized length, crop offset,
    first input pixel kept). Returns ``start`` (n, n_out) int32, relative to ``lo``, and
    ``coef`` (n, n_out, n_taps) int32 fixed-point weights."""
    import torch

    f64 = torch.float64
    size_in = in_len.to(f64)
    scale = size_in / out_len.to(f64)
    o = torch.arange(n_out, device=in_len.device, dtype=f64)[None, :] + offset.to(f64)[:, None]
    inside = (o >= 0) & (o < out_len.to(f64)[:, None])
    xmin, w = pil_window((o + 0.5) * scale[:, None], inside, size_in, scale.clamp(min=1.0),
                         n_taps, mode)
    start = (xmin - lo.to(f64)[:, None]).clamp(min=0.0)
    return start.to(torch.int32), fixed_point(w).to(torch.int32)


def fixed_point(w: torch.Tensor) -> torch.Tensor:
    """float64 weights -> PIL's 22-bit fixed point (``normalize_coeffs_8bpc``), still float."""
    import torch

    return torch.trunc(w * float(1 << PRECISION_BITS) + torch.where(w < 0, -0.5, 0.5))


def weights(in_len: torch.Tensor, out_len: torch.Tensor, offset: torch.Tensor, n_out: int,
            n_in: int, mode: str, n_taps: int = 0) -> torch.Tensor:
    """(n, n_out, n_in) float32 resize matrices: the taps of :func:`band` laid out densely;
    output index i samples resized pixel ``offset + i`` (a zero row outside)."""
    import torch

    dev = in_len.device
    if mode == "nearest":
        src = _nearest_sources(in_len.tolist(), out_len.tolist(), offset.tolist(), n_out)
        o = torch.arange(n_out, device=dev)[None, :] + offset[:, None]
        inside = ((o >= 0) & (o < out_len[:, None]))[:, :, None]
        j = torch.arange(n_in, device=dev)[None, None, :]
        return ((j == src.to(dev)[:, :, None]) & inside).to(torch.float32)
    start, coef = band(in_len, out_len, offset, torch.zeros_like(in_len), n_out, n_taps, mode)
    cols = start.long()[..., None] + torch.arange(n_taps, device=dev)
    return dense(cols, coef.to(torch.float32) / float(1 << PRECISION_BITS), n_in)


def dense(j: torch.Tensor, w: torch.Tensor, n_in: int) -> torch.Tensor:
    """(n, n_out, n_in) float32 matrices from taps: input pixel ``j`` (n, n_out, K) int64
    with weight ``w`` (n, n_out, K); indices outside 0..n_in-1 must carry weight 0."""
    import torch

    out = torch.zeros((*j.shape[:2], n_in), dtype=torch.float32, device=w.device)
    return out.scatter_add_(2, j.clamp(0, n_in - 1), w.to(torch.float32))


def separable(x: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor,
              clip8: bool) -> torch.Tensor:
    """(n, H, C, W) float -> (n, C, out_h, out_w) by two ``bmm`` (columns, then rows);
    ``clip8``: round to whole levels in 0..255 after each pass, as PIL stores 8-bit images."""
    import torch

    n, h, c, w = x.shape
    out_h, out_w = int(wy.shape[1]), int(wx.shape[1])
    t = torch.bmm(x.reshape(n, h * c, w), wx.transpose(1, 2))  # (n, H*C, out_w)
    if clip8:
        _round_u8_(t)
    y = torch.bmm(wy, t.view(n, h, c * out_w))  # (n, out_h, C*out_w)
    if clip8:
        _round_u8_(y)
    return y.view(n, out_h, c, out_w).permute(0, 2, 1, 3)


def _nearest_sources(in_len: list[int], out_len: list[int], offset: list[int],
                     n_out: int) -> torch.Tensor:
    """(n, n_out) source index per output pixel, accumulated by repeated float64 addition
    as PIL's ImagingScaleAffine does, so pixels exactly on a boundary go where PIL puts them."""
    import numpy as np
    import torch

    out = np.full((len(in_len), n_out), -1.0)
    for k, (size_in, size_out, off) in enumerate(zip(in_len, out_len, offset)):
        step = size_in / size_out
        coords = np.cumsum(np.concatenate([[step * 0.5], np.full(size_out - 1, step)]))
        src = np.minimum(np.floor(coords), size_in - 1)
        lo, hi = max(0, off), min(size_out, off + n_out)
        out[k, lo - off:hi - off] = src[lo:hi]
    return torch.from_numpy(out)


def _round_u8_(x: torch.Tensor) -> torch.Tensor:
    """PIL's clip8: floor(v + 0.5) clamped to 0..255, in place."""
    return x.add_(0.5).floor_().clamp_(0.0, 255.0)


def resize_group(images: list[torch.Tensor], preprocess: Preprocess,
                 mode: str) -> torch.Tensor:
    """(3, h_k, w_k) uint8 tensors -> (n, 3, H, W) float32 of whole 0..255 levels."""
    import torch

    dev = images[0].device
    hs = [int(im.shape[1]) for im in images]
    ws = [int(im.shape[2]) for im in images]
    geo = [geometry(preprocess, h, w) for h, w in zip(hs, ws)]
    n, hmax, wmax = len(images), max(hs), max(ws)
    out_h, out_w = preprocess.center_crop or geo[0][:2]  # resize_batch grouped by size
    # (n, H, 3, W), as separable takes them
    if len(set(zip(hs, ws))) == 1:
        x8 = torch.stack([im.permute(1, 0, 2) for im in images])
    else:
        x8 = torch.empty((n, hmax, 3, wmax), dtype=torch.uint8, device=dev)  # pad: weight 0
        for k, im in enumerate(images):
            x8[k, :hs[k], :, :ws[k]].copy_(im.permute(1, 0, 2))
    params = torch.tensor([[hs[k], ws[k], *geo[k]] for k in range(n)]).to(dev)
    t_y = 0 if mode == "nearest" else max(taps(h, g[0], mode) for h, g in zip(hs, geo))
    t_x = 0 if mode == "nearest" else max(taps(w, g[1], mode) for w, g in zip(ws, geo))
    wy = weights(params[:, 0], params[:, 2], params[:, 4], out_h, hmax, mode, t_y)
    wx = weights(params[:, 1], params[:, 3], params[:, 5], out_w, wmax, mode, t_x)
    return separable(x8.float(), wy, wx, clip8=True)


def groups(sizes: list[tuple[int, int]], budget: int) -> list[list[int]]:
    """Indices grouped by similar size (sorted by height, then width) so that each group's
    zero-padded float batch stays under ``budget`` elements (n * 3 * Hmax * Wmax)."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    out: list[list[int]] = []
    cur: list[int] = []
    hm = wm = 0
    for i in order:
        h, w = sizes[i]
        nh, nw = max(hm, h), max(wm, w)
        if cur and (len(cur) + 1) * 3 * nh * nw > budget:
            out.append(cur)
            cur, nh, nw = [], h, w
        cur.append(i)
        hm, wm = nh, nw
    if cur:
        out.append(cur)
    return out


def resize_batch(images: list[torch.Tensor], preprocess: Preprocess, out: torch.Tensor,
                 budget: int = 96 * 2**20) -> torch.Tensor:
    """Resize + center-crop ``images`` into ``out`` ((n, 3, H, W) float32, 0..255 values)."""
    import torch

    mode = preprocess.interpolation if preprocess.resize is not None else "bilinear"
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    keyed: dict[tuple[int, int] | None, list[int]] = {}
    for i, (h, w) in enumerate(sizes):  # without a crop sizes must agree after the resize
        key = None if preprocess.center_crop is not None else geometry(preprocess, h, w)[:2]
        keyed.setdefault(key, []).append(i)
    parts = [[idx[k] for k in g] for idx in keyed.values()
             for g in groups([sizes[i] for i in idx], budget)]
    for part in parts:
        y = resize_group([images[i] for i in part], preprocess, mode)
        if part == list(range(len(images))):
            out.copy_(y)
        else:
            out[torch.tensor(part, device=out.device)] = y
    return out
