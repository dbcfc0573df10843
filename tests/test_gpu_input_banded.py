"""The fused Triton resize kernels, run by Triton's interpreter on the CPU: every pixel equals
PIL's resize + crop + normalize (``Preprocess.__call__``) on real decoded images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pochitrain.gpu_input import resize_path, supports, taps, to_batch, window_bounds
from pochitrain.preprocess import Preprocess

pytest.importorskip("triton")

CHECK = r"""
import json, sys
import numpy as np, torch
from PIL import Image
from pochitrain.data import open_rgb
from pochitrain.gpu_input import resize_normalize
from pochitrain.preprocess import Preprocess

paths, cases = json.loads(sys.argv[1])
images = [np.asarray(open_rgb(p)) for p in paths]
tensors = [torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous() for a in images]
worst = []
for case in cases:
    pp = Preprocess.from_dict(case)
    out = torch.empty((len(tensors), 3, *pp.input_size), dtype=torch.float32)
    resize_normalize(tensors, pp, out)
    ref = np.stack([pp(Image.fromarray(a)) for a in images])
    grey = np.abs(out.numpy() - ref) * np.asarray(pp.std).reshape(1, 3, 1, 1) * 255
    worst.append(float(grey.max()))
print(json.dumps(worst))
"""

CASES = [
    Preprocess(input_size=[24, 24], resize=[28], center_crop=[24, 24]),  # downscale + crop
    Preprocess(input_size=[24, 24], resize=[28], center_crop=[24, 24], interpolation="bicubic"),
    Preprocess(input_size=[48, 48], resize=[40], center_crop=[48, 48]),  # crop pads
    Preprocess(input_size=[40, 30], resize=[40, 30], mean=[0.5] * 3, std=[0.25] * 3),  # exact
    Preprocess(input_size=[20, 20], resize=None, center_crop=[20, 20]),  # crop only
]


def _photo(seed: int, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 6 + 1, w // 6 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def test_every_pixel_equals_pil(tmp_path: Path, digits_dir: Path) -> None:
    """JPEGs (decoded by libjpeg) of odd sizes, upscaled and downscaled, a grayscale JPEG and a
    real digit PNG, all in one batch: at most float rounding of the normalization apart."""
    paths = []
    for i, (w, h) in enumerate([(71, 53), (37, 64), (90, 90)]):
        paths.append(tmp_path / f"{i}.jpg")
        _photo(i, w, h).save(paths[-1], quality=85)
    paths.append(tmp_path / "gray.jpg")
    _photo(9, 45, 33).convert("L").save(paths[-1])
    paths.append(next((digits_dir / "val" / "3").glob("*.png")))
    args = json.dumps([[str(p) for p in paths], [c.to_dict() for c in CASES]])
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", CHECK, args], check=False, capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    worst = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(worst) == len(CASES)
    assert max(worst) < 1e-3, worst  # grey levels: no pixel off by one


def test_window_and_taps_follow_pil() -> None:
    # 500 -> 256 bilinear: support 1.95, PIL's ksize = ceil(support) * 2 + 1
    assert taps(500, 256, "bilinear") == 5
    assert taps(500, 256, "bicubic") == 9
    assert taps(100, 300, "bilinear") == 3  # upscaling: the filter is not stretched
    lo, hi = window_bounds(375, 256, 16, 239, "bilinear")
    assert 0 < lo < 30 and 345 < hi <= 375


def test_cpu_and_nearest_use_the_matmul_resize() -> None:
    pp = Preprocess(input_size=[8, 8], resize=[10], center_crop=[8, 8])
    assert resize_path(pp, "cpu").startswith("batched matmuls")
    nearest = Preprocess(input_size=[8, 8], resize=[10], center_crop=[8, 8],
                         interpolation="nearest")
    assert not supports(nearest)
    assert supports(pp)
    import torch

    image = torch.from_numpy(np.asarray(_photo(3, 20, 14)).copy()).permute(2, 0, 1)
    out = torch.empty((1, 3, 8, 8))
    to_batch([image], pp, out)
    ref = pp(_photo(3, 20, 14))
    assert np.abs(out[0].numpy() - ref).max() * 0.229 * 255 < 1.01


@pytest.mark.parametrize("capability", [87, 89, 90])  # Jetson Orin, RTX 40, H100/H200
def test_kernels_compile_to_gpu_code(capability: int, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: Triton compiles the real kernels down to a cubin for each target anyway,
    which catches what the interpreter lets through (types, pointer arithmetic)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from pochitrain.gpu_input import triton_kernels

    for fn, final, out in ((triton_kernels.horizontal, False, "*u8"),
                           (triton_kernels.vertical, True, "*fp32"),
                           (triton_kernels.horizontal, True, "*bf16")):
        names = fn.arg_names
        sig = {"src": "*u8", "img": "*i64", "start": "*i32", "coef": "*i32", "dst": out,
               "norm": "*fp32", names[6]: "i32", names[7]: "i32", "TAPS": "constexpr",
               "FINAL": "constexpr", "BLOCK_L": "constexpr", "BLOCK_O": "constexpr"}
        consts = {"TAPS": 5, "FINAL": final, "BLOCK_L": 16, "BLOCK_O": 64}
        kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                                target=GPUTarget("cuda", capability, 32))
        assert len(kernel.asm["cubin"]) > 1000
        assert f"sm_{capability}" in kernel.asm["ptx"]
