"""Preprocess reproduces torchvision's val_transform exactly, from a plain dict."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from pochitrain.errors import ConfigError
from pochitrain.preprocess import Preprocess, from_transform


def _photo(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(w * 1000 + h)
    base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    # upscale noise so the picture has structure that resizing actually changes
    return Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)


@pytest.mark.parametrize(
    "tf",
    [
        T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)]),
        T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(),
                   T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]),
        T.Compose([T.Resize(36, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop((30, 28)),
                   T.ToTensor()]),
        T.Compose([T.CenterCrop(64), T.ToTensor()]),  # crop larger than the image: zero pad
    ],
)
@pytest.mark.parametrize("size", [(50, 37), (37, 50), (32, 32)])
def test_matches_torchvision(tf: T.Compose, size: tuple[int, int]) -> None:
    img = _photo(*size)
    spec = from_transform(tf)
    ours = spec(img)
    theirs = tf(img).numpy()
    assert ours.shape == theirs.shape
    assert ours.shape[1:] == tuple(spec.input_size)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_dict_roundtrip() -> None:
    spec = from_transform(T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor()]))
    again = Preprocess.from_dict(spec.to_dict())
    assert again == spec


def test_unsupported_step_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ColorJitter"):
        from_transform(T.Compose([T.Resize(32), T.ColorJitter(0.1), T.ToTensor()]))


def test_size_unknown_without_input_size() -> None:
    with pytest.raises(ConfigError, match="does not fix the image size"):
        from_transform(T.Compose([T.Resize(32), T.ToTensor()]))
    assert from_transform(T.Compose([T.Resize(32), T.ToTensor()]), [32, 32]).input_size == [32, 32]


def test_grey_and_rgba_images_become_rgb() -> None:
    spec = Preprocess.simple(8, 8)
    for mode in ("L", "RGBA", "P"):
        assert spec(Image.new(mode, (10, 12))).shape == (3, 8, 8)
