"""Decoded images -> the model's batch: resize, center-crop and normalize on the device.

On CUDA the banded Triton kernels (``banded``, bit-exact to PIL) run where Triton is present;
elsewhere, or once they failed in this process (``options.KERNELS``), the batched matmuls of
``resample`` with PIL's weights and one normalize.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pochitrain.gpu_input.banded import resize_normalize, scale_shift, triton_available
from pochitrain.gpu_input.options import KERNELS, Options
from pochitrain.gpu_input.resample import SUPPORT, resize_batch

if TYPE_CHECKING:
    import torch

    from pochitrain.preprocess import Preprocess


def banded_usable(on_device: bool, mode: str) -> bool:
    """Whether the banded kernels may run: images on a device they run on, a filter they
    have, no earlier failure, no ``POCHI_GPU_RESIZE=matmul``, and Triton importable."""
    return (on_device and mode in SUPPORT and KERNELS.broken is None
            and Options.from_env().gpu_resize != "matmul" and triton_available())


def resize_path(preprocess: Preprocess, device: str) -> str:
    """Which resize :func:`to_batch` uses for ``preprocess`` on ``device``."""
    mode = preprocess.interpolation if preprocess.resize is not None else "bilinear"
    if banded_usable(device.startswith("cuda"), mode):
        return "banded Triton kernels, PIL-exact"
    return "batched matmuls, PIL's weights"


def to_batch(images: list[torch.Tensor], preprocess: Preprocess,
             out: torch.Tensor) -> torch.Tensor:
    """Decoded (3, h, w) uint8 images -> ``out`` (n, 3, H, W): resized, center-cropped and
    normalized; a failure of the kernels is said once, and the matmuls take over."""
    check_one_size(images, preprocess, (int(out.shape[2]), int(out.shape[3])))
    if resize_path(preprocess, str(out.device)).startswith("banded"):
        try:
            return resize_normalize(images, preprocess, out)
        except Exception as exc:  # noqa: BLE001 - a Triton/driver problem: keep serving
            KERNELS.fail(exc, "resize")
    resize_batch(images, preprocess, out)
    return normalize_(out, preprocess)


def check_one_size(images: list[torch.Tensor], preprocess: Preprocess,
                   size: tuple[int, int]) -> None:
    """Without one output size (``Resize(n)`` keeps each image's aspect ratio) the batch's
    images must all come out at ``size``: else the error, not a kernel failure."""
    if preprocess.one_size:
        return
    from pochitrain.batching import sizes_differ

    for i, image in enumerate(images):
        got = preprocess.output_size(int(image.shape[2]), int(image.shape[1]))
        if got != size:
            raise sizes_differ(size, got, f"image {i + 1} of the batch, {image.shape[1]}x"
                               f"{image.shape[2]} before resizing", "; or use --pipeline cpu "
                               "(with -b 1 for pochi infer: one image at a time)")


def normalize_(batch: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """In place: 0..255 values -> (x / 255 - mean) / std, as one fused multiply-add."""
    scale, shift = scale_shift(preprocess, batch.device).view(2, 1, 3, 1, 1)
    return batch.mul_(scale).sub_(shift)


def resize_crop(image: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """(3, h, w) uint8 tensor -> (3, H, W) float32 tensor of 0..255 values."""
    import torch

    h, w = preprocess.input_size
    out = torch.empty((1, 3, h, w), dtype=torch.float32, device=image.device)
    return resize_batch([image], preprocess, out)[0]
