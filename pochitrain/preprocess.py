"""Inference preprocessing as data, not code.

Every model file carries a ``Preprocess`` as a plain dict, so ONNX Runtime and TensorRT
inference need neither torch nor the config. ``from_transform`` reads the supported subset of
a torchvision ``val_transform``; PIL + NumPy reproduce it exactly (the same PIL resize call).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from pochitrain.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PIL_MODES = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass
class Preprocess:
    """RGB image -> float32 CHW array of ``input_size``."""

    input_size: list[int]
    resize: list[int] | None = None  # [h, w], or [s]: the smaller edge to s
    center_crop: list[int] | None = None  # [h, w]
    interpolation: str = "bilinear"
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        def ints(key: str) -> list[int] | None:
            return None if data.get(key) is None else [int(v) for v in data[key]]

        try:
            return cls(
                input_size=[int(v) for v in data["input_size"]],
                resize=ints("resize"), center_crop=ints("center_crop"),
                interpolation=str(data.get("interpolation", "bilinear")),
                mean=[float(v) for v in data.get("mean", IMAGENET_MEAN)],
                std=[float(v) for v in data.get("std", IMAGENET_STD)],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                "前処理のメタデータが正しくありません\n"
                f"Preprocessing metadata is malformed: {data!r}",
                "Re-export the model with this version of pochitrain, or pass -c CONFIG.",
            ) from exc

    @classmethod
    def simple(cls, height: int, width: int) -> Preprocess:
        """Resize straight to (height, width), ImageNet normalisation."""
        return cls(input_size=[height, width], resize=[height, width])

    def resized_to(self, size: tuple[int, int]) -> Preprocess:
        """The same steps producing ``size`` images: Resize((h, w)) becomes Resize(size),
        Resize(s) + CenterCrop keeps the crop fraction."""
        h, w = size
        if list(self.input_size) == [h, w]:
            return self
        if self.center_crop is None:
            return replace(self, input_size=[h, w], resize=[h, w])
        resize = self.resize
        if resize is not None:
            scale = h / self.center_crop[0]
            resize = [max(1, round(v * scale)) for v in resize]
        return replace(self, input_size=[h, w], resize=resize, center_crop=[h, w])

    @property
    def one_size(self) -> bool:
        """Whether every image comes out at one size (a crop, or ``Resize((H, W))``):
        ``Resize(n)`` alone keeps each image's aspect ratio."""
        return self.center_crop is not None or (self.resize is not None
                                                and len(self.resize) == 2)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(H, W) this preprocessing produces from an image of the given size."""
        h, w = height, width
        if self.resize is not None:
            h, w = resized_size(h, w, self.resize)
        if self.center_crop is not None:
            h, w = self.center_crop
        return h, w

    def __call__(self, image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":
            image = rgb8(image)
        if self.resize is not None:
            h, w = resized_size(image.height, image.width, self.resize)
            if (h, w) != (image.height, image.width):
                image = image.resize((w, h), _PIL_MODES[self.interpolation])
        if self.center_crop is not None:
            image = _center_crop(image, *self.center_crop)
        arr = np.asarray(image, dtype=np.float32) / 255.0
        mean, std = (np.asarray(v, dtype=np.float32) for v in (self.mean, self.std))
        arr = (arr - mean) / std
        return np.ascontiguousarray(arr.transpose(2, 0, 1))


def rgb8(image: Image.Image) -> Image.Image:
    """Any PIL image as a new 8-bit RGB image. 16-bit grayscale (modes I;16*, I) is scaled,
    v -> round(v / 257): ``convert("RGB")`` would clip every value over 255 to white. Files,
    PIL images given to the Python API and the model's preprocessing all come through here."""
    if image.mode.startswith("I;16") or image.mode == "I":
        arr = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def resized_size(h: int, w: int, size: list[int]) -> tuple[int, int]:
    """(h, w) of an h x w image after ``Resize(size)`` alone: [H, W], or the short edge."""
    if len(size) == 2:
        return size[0], size[1]
    # torchvision semantics for an int size: the smaller edge becomes `size`.
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size[0], int(size[0] * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def _center_crop(image: Image.Image, ch: int, cw: int) -> Image.Image:
    w, h = image.size
    if ch > h or cw > w:
        # torchvision pads with zeros before cropping; do the same.
        padded = Image.new("RGB", (max(w, cw), max(h, ch)))
        padded.paste(image, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
        image, (w, h) = padded, padded.size
    top = round((h - ch) / 2.0)
    left = round((w - cw) / 2.0)
    return image.crop((left, top, left + cw, top + ch))


def from_transform(transform: Any, input_size: list[int] | None = None) -> Preprocess:
    """A torchvision transform (single or Compose) as a ``Preprocess``; ConfigError names the
    first step that cannot be reproduced outside torch."""
    steps = list(getattr(transform, "transforms", [transform]))
    resize: list[int] | None = None
    crop: list[int] | None = None
    interpolation = "bilinear"
    mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    for step in steps:
        name = type(step).__name__
        if name == "Resize":
            size = step.size
            resize = [int(size)] if isinstance(size, int) else [int(v) for v in size]
            if len(resize) == 1 and getattr(step, "max_size", None):
                raise _unsupported(name + "(max_size=...)")
            interpolation = str(getattr(step.interpolation, "value", step.interpolation)).lower()
            if interpolation not in _PIL_MODES:
                raise _unsupported(f"Resize(interpolation={interpolation})")
        elif name == "CenterCrop":
            crop = [int(v) for v in step.size]
            if len(crop) == 1:
                crop = [crop[0], crop[0]]
        elif name == "Normalize":
            mean, std = [float(v) for v in step.mean], [float(v) for v in step.std]
        elif name in ("ToTensor", "PILToTensor", "ConvertImageDtype", "ToImage", "ToDtype",
                      "ToPILImage"):
            continue
        else:
            raise _unsupported(name)
    out = crop or (resize if resize is not None and len(resize) == 2 else None)
    if out is None:
        if input_size is None:
            raise ConfigError(
                "val_transform で画像サイズが決まりません\n"
                "val_transform does not fix the image size (no CenterCrop or Resize((h, w))).",
                "Add transforms.Resize((H, W)) or CenterCrop to val_transform, or set input_size.",
            )
        out = list(input_size)
    return Preprocess(input_size=[int(out[0]), int(out[1])], resize=resize, center_crop=crop,
                      interpolation=interpolation, mean=mean, std=std)


def _unsupported(name: str) -> ConfigError:
    return ConfigError(
        "この val_transform の処理は ONNX/TensorRT の推論で再現できません\n"
        f"val_transform step {name} cannot be reproduced for ONNX/TensorRT inference.",
        "Use Resize, CenterCrop, ToTensor and Normalize in val_transform (augmentations belong "
        "in train_transform).",
    )
