"""A torchvision transform chain compiled into a few whole-batch stages for the GPU input.

``compile_chain(ops)`` turns the flattened transforms of a config's Compose into a ``Plan``:
a geometric stage folds consecutive axis-aligned ops (Resize, CenterCrop, RandomResizedCrop,
RandomCrop, Pad, flips) into ONE antialiased resample per image (``gpu_resample``); pixel
stages (ColorJitter, Grayscale, RandomGrayscale, RandomRotation / RandomAffine as one
``grid_sample``, Normalize, dtype conversions) run on the (N, C, H, W) float batch. Each image
gets its own random parameters, drawn for the whole batch from the global torch RNG with
torchvision's distributions (so ``seed`` and DDP's per-rank seeds apply). Values stay float
between stages (torchvision rounds uint8 after each op: below one grey level). A chain this
cannot reproduce gives ``(None, reason)``; the loader then runs it per image.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pochitrain.training import gpu_resample as R

GEOMETRIC: dict[str, Callable[[R.Geometry, Any], None]] = {
    "Resize": R.resize, "CenterCrop": R.center_crop, "RandomResizedCrop": R.random_resized_crop,
    "RandomCrop": R.random_crop, "Pad": R.pad, "RandomHorizontalFlip": R.horizontal_flip,
    "RandomVerticalFlip": R.vertical_flip,
}
DTYPE = frozenset({"ToFloat", "ToTensor", "ConvertImageDtype", "ToDtype", "ToImage",
                   "PILToTensor"})


class Unsupported(Exception):
    """This chain has no batched equivalent (the message says which transform and why)."""


@dataclass
class Stage:
    kind: str  # "geo" (one resample) or "pix" (on the (N, C, H, W) batch)
    fn: Callable[[Any], torch.Tensor]  # takes the list of images or the batch


@dataclass
class Plan:
    stages: list[Stage]
    is_float: bool  # else the values are divided by 255 at the end, as gpu_loader.apply does

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        """(N, C, H, W) float32 from N decoded (C, h_i, w_i) uint8 tensors."""
        x: Any = images
        for stage in self.stages:
            x = stage.fn(x)
        return x if self.is_float else x / 255.0


def _geometry(ops: list[Any], size: tuple[int, int], x: Any) -> torch.Tensor:
    sizes = ([(int(im.shape[-2]), int(im.shape[-1])) for im in x] if isinstance(x, list)
             else [tuple(x.shape[-2:])] * int(x.shape[0]))
    geo = R.Geometry.of(sizes)
    for t in ops:
        GEOMETRIC[type(t).__name__](geo, t)
    if isinstance(x, torch.Tensor) and all(type(t).__name__.endswith("Flip") for t in ops):
        # flips only, on a batch: no resample needed
        mx, my = (geo.x.a < 0).to(x.device), (geo.y.a < 0).to(x.device)
        x = torch.where(mx[:, None, None, None], x.flip(-1), x)
        return torch.where(my[:, None, None, None], x.flip(-2), x)
    return R.resample(list(x) if isinstance(x, torch.Tensor) else x, geo, *size)


# ---- compile --------------------------------------------------------------------------------

def _size_after(name: str, t: Any, size: tuple[int, int] | None) -> tuple[int, int] | None:
    if name in ("RandomHorizontalFlip", "RandomVerticalFlip"):
        return size
    if name in ("CenterCrop", "RandomResizedCrop", "RandomCrop"):
        return R.pair(t.size)
    if name == "Pad":
        if size is None:
            return None
        left, top, right, bottom = R.padding_ltrb(t.padding)
        return size[0] + top + bottom, size[1] + left + right
    # Resize
    if isinstance(t.size, (list, tuple)) and len(t.size) == 2:
        return int(t.size[0]), int(t.size[1])
    if size is None:
        return None
    geo = R.Geometry.of([size])
    R.resize(geo, t)
    return round(float(geo.y.length[0])), round(float(geo.x.length[0]))


def _check_geometric(name: str, t: Any) -> None:
    if name in ("Resize", "RandomResizedCrop"):
        mode = str(getattr(t.interpolation, "value", t.interpolation)).lower()
        if mode not in ("bilinear", "bicubic", "nearest"):
            raise Unsupported(f"{name}(interpolation={mode})")
        if name == "Resize" and t.size is None:
            raise Unsupported("Resize(size=None)")
    if name in ("Pad", "RandomCrop") and (getattr(t, "padding_mode", "constant") != "constant"
                                          or t.fill not in (0, None)):
        raise Unsupported(f"{name} with fill={t.fill!r} / padding_mode="
                              f"{getattr(t, 'padding_mode', None)!r}")


def compile_chain(ops: list[Any]) -> tuple[Plan | None, str | None]:
    """(Plan, None), or (None, why not) naming the transform that has no batched form."""
    state = _Compiler()
    try:
        for t in ops:
            state.add(t)
        state.close()
    except Unsupported as exc:
        return None, str(exc)
    if state.size is None:
        return None, "the transforms leave images of different sizes"
    return Plan(state.stages, state.is_float), None


class _Compiler:
    """One compile's state: the stages so far, the geometric run being collected, the dtype
    conversions deferred past it, the image size once known, whether values are float."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []
        self.geo: list[Any] = []
        self.deferred: list[Any] = []  # dtype conversions met before / inside a geometric run
        self.size: tuple[int, int] | None = None
        self.is_float = False

    def add(self, t: Any) -> None:
        name = type(t).__name__
        if name != "ToFloat" and not type(t).__module__.startswith("torchvision.transforms"):
            raise Unsupported(f"{name} (not a torchvision transform)")
        if name in GEOMETRIC:
            _check_geometric(name, t)
            self.geo.append(t)
            self.size = _size_after(name, t, self.size)
        elif name in DTYPE:
            if self.geo or self.size is None:
                self.deferred.append(t)
            else:
                self.convert(t)
        elif self.size is None:
            raise Unsupported(f"{name} before the images have one size")
        else:
            self.close()
            self.stages.append(Stage("pix", _pixel(name, t, self.is_float)))

    def close(self) -> None:
        """End the geometric run: its stage, then the conversions deferred past it."""
        if self.geo:
            if self.size is None:
                raise Unsupported("the transforms leave images of different sizes")
            self.stages.append(Stage("geo", functools.partial(_geometry, list(self.geo),
                                                              self.size)))
            self.geo.clear()
        for t in self.deferred:  # a scaling commutes with the (linear) resample
            self.convert(t)
        self.deferred.clear()

    def convert(self, t: Any) -> None:
        """The /255 stage of a conversion to float (none when nothing changes)."""
        name = type(t).__name__
        if name in ("ToImage", "PILToTensor"):
            return
        dtype = getattr(t, "dtype", torch.float32)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise Unsupported(f"{name}({dtype})")
        if self.is_float:
            return
        self.is_float = True
        if name == "ToDtype" and not getattr(t, "scale", False):
            return  # float, still 0..255
        self.stages.append(Stage("pix", _div255))


def _div255(x: torch.Tensor) -> torch.Tensor:
    return x / 255.0


def _pixel(name: str, t: Any, is_float: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The batched op for a pixel transform; clamps at 1 on float images, 255 on uint8."""
    make = _PIXEL.get(name)
    if make is None:
        raise Unsupported(f"{name} has no batched GPU form")
    if name == "Normalize" and not is_float:
        raise Unsupported("Normalize before ToTensor")
    return make(t, 1.0 if is_float else 255.0)


# ---- pixel ops: (transform, bound) -> batched function ---------------------------------------

def _gray(x: torch.Tensor) -> torch.Tensor:  # torchvision's rgb_to_grayscale
    r, g, b = x.unbind(-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def _uniform(n: int, lo_hi: Any) -> torch.Tensor:
    return torch.empty(n).uniform_(float(lo_hi[0]), float(lo_hi[1]))


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device, x.dtype).view(-1, 1, 1, 1)


def _hue(x: torch.Tensor, shift: torch.Tensor, bound: float) -> torch.Tensor:
    """torchvision's adjust_hue (RGB -> HSV, h + shift, back) with one shift per image."""
    x = x / bound
    maxc, minc = x.max(-3).values, x.min(-3).values
    r, g, b = x.unbind(-3)
    eq = maxc == minc
    cr = maxc - minc
    s = cr / torch.where(eq, torch.ones_like(maxc), maxc)
    div = torch.where(eq, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + shift.to(x.device, x.dtype).view(-1, 1, 1), 1.0)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p = (maxc * (1.0 - s)).clamp(0.0, 1.0)
    q = (maxc * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (maxc * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    v = maxc
    table = torch.stack([torch.stack(c, -3) for c in ((v, t, p), (q, v, p), (p, v, t),
                                                        (p, q, v), (t, p, v), (v, p, q))], 1)
    out = table.gather(1, i[:, None, None].expand(-1, 1, 3, -1, -1)).squeeze(1)
    return out * bound


def _color_jitter(t: Any, bound: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def blend(x: torch.Tensor, other: Any, f: torch.Tensor) -> torch.Tensor:
        f = _per_image(f, x)
        return (f * x + (1.0 - f) * other).clamp_(0.0, bound)

    fns: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...] = (
        lambda x, f: blend(x, 0.0, f),  # brightness
        lambda x, f: blend(x, _gray(x).mean((-3, -2, -1), keepdim=True), f),  # contrast
        lambda x, f: blend(x, _gray(x), f),  # saturation
        lambda x, f: _hue(x, f, bound))
    ranges = (t.brightness, t.contrast, t.saturation, t.hue)

    def run(x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        order = torch.rand(n, 4).argsort(1)  # a random permutation per image (randperm(4))
        factors = [None if r is None else _uniform(n, r) for r in ranges]
        x = x.clone()
        for k in range(4):
            for j, fn in enumerate(fns):
                f = factors[j]
                if f is None:
                    continue
                sel = (order[:, k] == j).nonzero()[:, 0]
                if sel.numel():
                    dev = sel.to(x.device)
                    x[dev] = fn(x[dev], f[sel])
        return x
    return run


def _grayscale(t: Any, bound: float) -> Callable[[torch.Tensor], torch.Tensor]:
    channels = int(getattr(t, "num_output_channels", 1))
    return lambda x: _gray(x).expand(-1, channels, -1, -1).contiguous()


def _random_grayscale(t: Any, bound: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        pick = _per_image(torch.rand(int(x.shape[0])) < t.p, x).bool()
        return torch.where(pick, _gray(x).expand_as(x), x)
    return run


def _affine(t: Any, bound: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """RandomRotation / RandomAffine: torchvision's inverse matrices, one grid_sample."""
    rotation = type(t).__name__ == "RandomRotation"
    if rotation and t.expand:
        raise Unsupported("RandomRotation(expand=True)")
    mode = str(getattr(t.interpolation, "value", t.interpolation)).lower()
    if mode not in ("nearest", "bilinear", "bicubic"):
        raise Unsupported(f"{type(t).__name__}(interpolation={mode})")
    fill = t.fill
    if isinstance(fill, dict):
        raise Unsupported(f"{type(t).__name__}(fill={fill!r})")

    def run(x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        angle = _uniform(n, t.degrees).double()
        tx = ty = torch.zeros(n, dtype=torch.float64)
        scale = torch.ones(n, dtype=torch.float64)
        sx = sy = torch.zeros(n, dtype=torch.float64)
        if rotation:
            angle = -angle  # torchvision: rotate passes -angle to the affine matrix
        else:
            if t.translate is not None:
                mx, my = float(t.translate[0] * w), float(t.translate[1] * h)
                tx = torch.empty(n, dtype=torch.float64).uniform_(-mx, mx).round()
                ty = torch.empty(n, dtype=torch.float64).uniform_(-my, my).round()
            if t.scale is not None:
                scale = _uniform(n, t.scale).double()
            if t.shear is not None:
                sx = _uniform(n, t.shear[:2]).double()
                if len(t.shear) == 4:
                    sy = _uniform(n, t.shear[2:]).double()
        centre = (0.0, 0.0) if t.center is None else (t.center[0] - w * 0.5,
                                                      t.center[1] - h * 0.5)
        theta = _inverse_affine(centre, angle, tx, ty, scale, sx, sy)
        return _warp(x, theta, mode, fill)
    return run


def _inverse_affine(centre: tuple[float, float], angle: torch.Tensor, tx: torch.Tensor,
                    ty: torch.Tensor, scale: torch.Tensor, sx: torch.Tensor,
                    sy: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) float64: torchvision's ``_get_inverse_affine_matrix``, per image."""
    rot, sx, sy = angle * (math.pi / 180), sx * (math.pi / 180), sy * (math.pi / 180)
    cx, cy = centre
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    m = torch.stack([d, -b, torch.zeros_like(d), -c, a, torch.zeros_like(d)], 1) / scale[:, None]
    m[:, 2] += m[:, 0] * (-cx - tx) + m[:, 1] * (-cy - ty) + cx
    m[:, 5] += m[:, 3] * (-cx - tx) + m[:, 4] * (-cy - ty) + cy
    return m.view(-1, 2, 3)


def _warp(x: torch.Tensor, theta: torch.Tensor, mode: str, fill: Any) -> torch.Tensor:
    """torchvision's ``_gen_affine_grid`` + ``_apply_grid_transform`` for a batch."""
    n, c, h, w = x.shape
    dev, dt = x.device, x.dtype  # the grid is built where the images are (no host work)
    xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, w, dtype=dt, device=dev)
    ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, h, dtype=dt, device=dev)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w),
                        torch.ones(h, w, dtype=dt, device=dev)], -1).view(1, h * w, 3)
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float64)
    theta = (theta.transpose(1, 2) / scale).to(dev, dt)
    grid = base.expand(n, -1, -1).bmm(theta).view(n, h, w, 2)
    if fill is None:
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    values = [float(fill)] * c if isinstance(fill, (int, float)) else [float(v) for v in fill]
    out = F.grid_sample(torch.cat([x, torch.ones_like(x[:, :1])], 1), grid, mode=mode,
                        padding_mode="zeros", align_corners=False)
    img, mask = out[:, :c], out[:, c:]
    fill_img = torch.tensor(values, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    if mode == "nearest":
        return torch.where(mask < 0.5, fill_img.expand_as(img), img)
    return img * mask + (1.0 - mask) * fill_img


_PIXEL: dict[str, Callable[[Any, float], Callable[[torch.Tensor], torch.Tensor]]] = {
    "ColorJitter": _color_jitter, "Grayscale": _grayscale, "RandomGrayscale": _random_grayscale,
    "RandomRotation": _affine, "RandomAffine": _affine,
    "Normalize": lambda t, bound: t,  # torchvision's Normalize takes batches
}
