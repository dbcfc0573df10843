"""The fused Triton resize kernels, run by Triton's interpreter on the CPU: every pixel equals
PIL's resize + crop + normalize (``Preprocess.__call__``) on real decoded images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from background import Job
from interpreted import PIL_CASES, odd_photo, worst_levels

from pochitrain.gpu_input import resize_path, supports, taps, to_batch, window_bounds
from pochitrain.preprocess import Preprocess

pytest.importorskip("triton")


def test_every_pixel_equals_pil(pil_check: Job) -> None:
    """JPEGs (decoded by libjpeg) of odd sizes, upscaled and downscaled, a grayscale JPEG and a
    real digit PNG, all in one batch (``interpreted.start_pil_check``, started with the
    session): at most float rounding of the normalization apart, in every case; and again
    with each image's windows taken from the cache (the batch reversed)."""
    worst = worst_levels(pil_check)
    assert len(worst) == len(PIL_CASES) + 1  # and the first case again, from the cache
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

    image = torch.from_numpy(np.asarray(odd_photo(3, 20, 14)).copy()).permute(2, 0, 1)
    out = torch.empty((1, 3, 8, 8))
    to_batch([image], pp, out)
    ref = pp(odd_photo(3, 20, 14))
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


def test_windows_kept_by_geometry_equal_new_ones() -> None:
    """The cache of each image's windows gives the rows that planning the batch anew gives,
    whatever mix of kept and new images a batch holds, and keeps about its size."""
    import torch

    from pochitrain.gpu_input.banded import Windows, plan

    pp = Preprocess(input_size=[24, 24], resize=[28], center_crop=[24, 24])
    images = [torch.zeros((3, h, w), dtype=torch.uint8) for h, w in
              ((31, 40), (50, 37), (31, 40), (29, 29), (64, 20))]
    plans = plan(images, pp, 24, 24, "bilinear")
    nine = (24, 24, 9, 9, "bilinear", False)
    windows = Windows(size=3)
    # then the same sizes with more taps, or the vertical pass first: other windows
    for batch, shape in (([0, 1], nine), ([1, 2, 3, 0], nine), ([4, 0, 3], nine), ([3], nine),
                         ([0, 1], (24, 24, 13, 13, "bilinear", False)),
                         ([0, 1], (24, 24, 9, 9, "bilinear", True))):
        got = windows.bands([plans[i] for i in batch], shape, torch.device("cpu"))
        fresh = Windows(size=0).bands([plans[i] for i in batch], shape, torch.device("cpu"))
        for a, b in zip(got, fresh):
            assert a.taps == b.taps
            assert torch.equal(a.start, b.start) and torch.equal(a.coef, b.coef)
        assert windows.count <= 3 + len(batch) and len(windows.where) <= windows.count
