"""Chunk, pad, run, softmax: the one way a batch of images goes through a model call; and
``InputBatch``, the one shape of the batches a pass hands to it.

Used by the model facade (``Predictor``, ``pochi serve``), the shared inference loop and the
ONNX checks of export / FP16 / INT8, so the padding rule is the same everywhere.

Padding rule: a model whose batch dimension is fixed only takes batches of exactly that
size. A shorter chunk is padded by repeating its last image and the padded rows are dropped
from the output, so every returned row belongs to a real input.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # imported where used: the GPU reader's helper process imports no NumPy
    import numpy as np


class InputBatch(NamedTuple):
    """One batch of a pass over image files, from the CPU path (``inference.loop``) or the GPU
    input pipeline alike: the images, float32 (N, 3, H, W) (a NumPy array, or a tensor on the
    model's device; None when every file of the batch was skipped), their paths and labels,
    and the files skipped because they could not be decoded."""

    images: Any
    paths: list[Path]
    labels: list[int]
    skipped: list[Path]


def pad_to(batch: Any, size: int) -> Any:
    """Repeat the last row until ``batch`` (NumPy array or torch tensor) has ``size`` rows."""
    import numpy as np

    short = size - len(batch)
    if short <= 0:
        return batch
    if isinstance(batch, np.ndarray):
        return np.concatenate([batch, np.repeat(batch[-1:], short, axis=0)])
    import torch

    return torch.cat([batch, batch[-1:].expand(short, *batch.shape[1:])])


def true_ranks(probs: np.ndarray, labels: list[int]) -> list[int]:
    """Per row, how many classes are more probable than the true one (0: top-1 right); -1 for
    an unlabelled row (label -1)."""
    import numpy as np

    rows = np.arange(len(labels))
    known = np.asarray(labels) >= 0
    true_p = probs[rows, np.where(known, labels, 0)]
    ranks = (probs > true_p[:, None]).sum(axis=1)
    return [int(r) if k else -1 for r, k in zip(ranks, known)]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for large logits)."""
    import numpy as np

    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def run_chunked(call: Callable[[Any], Any], data: Any, step: int,
                fixed: int | None = None) -> np.ndarray:
    """Float32 (N, K) outputs of ``call`` over ``data`` (N, C, H, W), ``step`` rows a call.

    ``fixed``: the model's only batch size; chunks are then ``fixed`` rows, the last one
    padded. NumPy chunks are made contiguous float32; device tensors are passed as they are.
    """
    import numpy as np

    step = fixed or step
    outs = []
    for start in range(0, len(data), step):
        chunk = data[start:start + step]
        n = len(chunk)
        if isinstance(chunk, np.ndarray):
            chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if fixed:
            chunk = pad_to(chunk, fixed)
        outs.append(np.asarray(call(chunk), dtype=np.float32)[:n])
    return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)


def stack_one_size(arrays: list[np.ndarray], names: list[Any],
                   batched: bool = False) -> np.ndarray:
    """Preprocessed images as one array; a clear error where the preprocessing keeps each
    image's aspect ratio (``Resize(n)`` with no crop) and the sizes differ. ``batched``: the
    caller can also go one image at a time (``-b 1``)."""
    import numpy as np

    first = arrays[0].shape
    for array, name in zip(arrays, names):
        if array.shape != first:
            raise sizes_differ(first[1:], array.shape[1:], name,
                               "; or pass -b 1 to infer one image at a time" if batched else "")
    return np.stack(arrays)


def sizes_differ(first: tuple[int, ...], other: tuple[int, ...], name: object,
                 alone: str = "") -> Exception:
    """The error for a preprocessing whose images come out in several sizes (H x W);
    ``alone``: how the caller could take one image at a time."""
    from pochitrain.errors import ConfigError

    a, b = (f"{s[0]}x{s[1]}" for s in (first, other))
    return ConfigError(
        f"前処理後の画像サイズが画像によって異なります ({a} と {b}: {name})。\n"
        f"The preprocessing gives images of different sizes ({a} and {b}, at {name}): "
        "its Resize(n) keeps each image's aspect ratio and nothing crops them to one "
        "size, so they cannot be batched.",
        "Use a val_transform that ends in one size: a crop (e.g. "
        "transforms.CenterCrop(224) after transforms.Resize(256)) or "
        f"transforms.Resize((H, W)){alone}.")
