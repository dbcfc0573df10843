"""Optimization-profile resolution (spec: "Optimization Profile の仕組み").

The spec's rule: min = opt = max; batch 1; C from the ONNX; H/W from the ONNX when fixed, else
from ``--input-size`` (required then). Beyond the spec, ``--batch-size N`` fixes the batch at N
and ``--batch MIN OPT MAX`` gives a real batch range; both are refused for a fully static ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass

from pochitrain.errors import ShapeError, UsageError
from pochitrain.onnx.inspect import OnnxInfo

Shape = tuple[int, int, int, int]


@dataclass
class Profile:
    pattern: int
    min: Shape  # pattern 3 (no optimization profile): min = opt = max, the static shape
    opt: Shape
    max: Shape

    @property
    def static_shape(self) -> Shape | None:
        return self.opt if self.pattern == 3 else None

    @property
    def input_shape(self) -> Shape:
        """The shape used for checks and calibration (opt, or the static shape)."""
        return self.opt

    def to_dict(self) -> dict[str, list[int]] | None:
        if self.pattern == 3:
            return None
        return {k: list(getattr(self, k)) for k in ("min", "opt", "max")}

    def text(self) -> str:
        if self.pattern == 3:
            return f"none (static {_fmt(self.opt)})"
        if self.min == self.max:
            return f"min=opt=max={_fmt(self.min)}"
        return f"min={_fmt(self.min)} opt={_fmt(self.opt)} max={_fmt(self.max)}"


def _fmt(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def dynamic_shape_error(info: OnnxInfo) -> ShapeError:
    names = ", ".join(f"dim {i} ({['batch', 'channels', 'height', 'width'][i]}="
                      f"{info.input_shape[i]!r})" for i in info.dynamic_dims if i >= 2)
    return ShapeError(
        "ONNXモデルに動的シェイプが含まれています: "
        f"入力 {info.input_name!r} の shape {info.shape_text()} は H/W が動的です。\n"
        f"The ONNX model has dynamic spatial dimensions: {names}. TensorRT needs a fixed "
        "input size for the optimization profile.",
        "--input-size で実際に使う解像度を指定してください / Give the resolution you will "
        f"infer at, e.g.: pochi convert {info.path.name} --input-size 224 224",
    )


def _check_options(info: OnnxInfo, batch_size: int | None,
                   batch_range: tuple[int, int, int] | None) -> int:
    """The batch options make sense together; returns the graph's fixed channel count."""
    if batch_size is not None and batch_range is not None:
        raise UsageError("--batch-size と --batch は同時に指定できません\n"
                         "--batch-size and --batch cannot be used together.",
                         "Use --batch-size N for a fixed batch, or --batch MIN OPT MAX.")
    if batch_range is not None and not batch_range[0] <= batch_range[1] <= batch_range[2]:
        raise UsageError("--batch は MIN <= OPT <= MAX の順に指定してください\n"
                         f"--batch needs MIN <= OPT <= MAX, got {list(batch_range)}.",
                         "Example: --batch 1 8 32")
    channels = info.input_shape[1]
    if not isinstance(channels, int):
        raise ShapeError(
            "チャネルの次元が可変です\n"
            f"{info.path.name}: the channel dimension of {info.input_name!r} is dynamic "
            f"{info.shape_text()}; pochitrain handles RGB input with 3 fixed channels.",
            "Re-export the model with a fixed channel dimension (3).",
        )
    return channels


def _static_profile(info: OnnxInfo, input_size: tuple[int, int] | None,
                    batch_options: bool) -> Profile:
    """Pattern 3: the graph's own shape, no optimization profile."""
    if batch_options:
        raise UsageError(
            f"{info.path.name} は完全静的 ONNX です (パターン3): バッチサイズ変更不可。\n"
            f"The ONNX input is fully static {info.shape_text()}: its batch size is fixed "
            "in the graph, so --batch-size / --batch cannot change it.",
            "Drop --batch-size/--batch, or re-export with a dynamic batch dimension "
            '(dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}}).',
        )
    static = tuple(int(d) for d in info.input_shape)
    if input_size is not None and tuple(input_size) != static[2:]:
        raise UsageError(
            "--input-size が ONNX の固定の入力サイズと一致しません\n"
            f"--input-size {input_size[0]} {input_size[1]} does not match the static ONNX "
            f"input {info.shape_text()}.",
            "Drop --input-size: a fully static ONNX takes its H/W from the graph.",
        )
    return Profile(3, static, static, static)  # type: ignore[arg-type]


def _height_width(info: OnnxInfo, input_size: tuple[int, int] | None) -> tuple[int, int]:
    """H/W from the graph when fixed there, else from ``--input-size`` (which must agree with
    any dimension the graph does fix)."""
    fixed = info.fixed_hw
    if fixed is not None:
        if input_size is not None and tuple(input_size) != fixed:
            raise UsageError(
                "--input-size が ONNX の入力サイズと一致しません\n"
                f"--input-size {input_size[0]} {input_size[1]} does not match the ONNX input "
                f"{info.shape_text()} (H/W are fixed in the graph).",
                "Drop --input-size (pattern 1 takes H/W from the ONNX), or re-export the model "
                "at the size you want.",
            )
        return fixed
    if input_size is None:
        raise dynamic_shape_error(info)
    h, w = input_size
    for axis, value in ((2, h), (3, w)):
        dim = info.input_shape[axis]
        if isinstance(dim, int) and dim != value:
            raise UsageError(
                "--input-size が ONNX の入力の固定の次元と矛盾します\n"
                f"--input-size {h} {w} conflicts with the ONNX input {info.shape_text()} "
                f"(dim {axis} is fixed at {dim}).",
                "Give the sizes the graph allows.",
            )
    return h, w


def _batch_range(info: OnnxInfo, batch_size: int | None,
                 batch_range: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """(min, opt, max) batch: the graph's fixed batch, ``--batch``, or ``--batch-size`` (1)."""
    batch = info.input_shape[0]
    if isinstance(batch, int):
        # pattern 2 with a fixed batch: nothing to choose for the batch
        if batch_size is not None or batch_range is not None:
            raise UsageError("バッチの次元が固定されています\n"
                             f"The batch dimension of {info.shape_text()} is fixed at {batch}.",
                             "Drop --batch-size/--batch.")
        return batch, batch, batch
    n = batch_size or 1
    return batch_range or (n, n, n)


def resolve_profile(info: OnnxInfo, input_size: tuple[int, int] | None = None,
                    batch_size: int | None = None,
                    batch_range: tuple[int, int, int] | None = None) -> Profile:
    """Profile for ``info`` following the spec (see module docstring)."""
    channels = _check_options(info, batch_size, batch_range)
    if info.pattern == 3:
        return _static_profile(info, input_size,
                               batch_size is not None or batch_range is not None)
    h, w = _height_width(info, input_size)
    lo, opt, hi = _batch_range(info, batch_size, batch_range)
    return Profile(info.pattern, (lo, channels, h, w), (opt, channels, h, w),
                   (hi, channels, h, w))
