"""Profile resolution (spec table) and backend detection; no engine builds here."""

from __future__ import annotations

from pathlib import Path

import pytest

from pochitrain.errors import BackendMissingError, ShapeError, UsageError
from pochitrain.onnx.inspect import OnnxInfo
from pochitrain.tensorrt.backend import load_backend
from pochitrain.tensorrt.profile import resolve_profile


def _info(shape: list) -> OnnxInfo:
    return OnnxInfo(Path("m.onnx"), "input", shape, "float32", "output", [shape[0], 10],
                    None, 17)


def test_pattern1_batch_one_hw_from_onnx() -> None:
    p = resolve_profile(_info(["batch_size", 3, 224, 224]))
    assert p.pattern == 1
    assert p.min == p.opt == p.max == (1, 3, 224, 224)
    assert p.to_dict() == {"min": [1, 3, 224, 224], "opt": [1, 3, 224, 224],
                           "max": [1, 3, 224, 224]}


def test_pattern1_input_size_must_match() -> None:
    assert resolve_profile(_info(["b", 3, 64, 48]), (64, 48)).opt == (1, 3, 64, 48)
    with pytest.raises(UsageError, match="does not match"):
        resolve_profile(_info(["b", 3, 64, 48]), (224, 224))


def test_pattern2_requires_input_size_with_spec_message() -> None:
    with pytest.raises(ShapeError) as exc:
        resolve_profile(_info(["batch_size", 3, "height", "width"]))
    err = exc.value
    assert err.exit_code == 2
    assert err.message.startswith("ONNXモデルに動的シェイプが含まれています")
    assert "height" in err.message and "width" in err.message
    assert "--input-size 224 224" in err.remedy
    p = resolve_profile(_info(["batch_size", 3, "height", "width"]), (96, 128))
    assert p.pattern == 2 and p.min == p.opt == p.max == (1, 3, 96, 128)


def test_pattern2_one_fixed_side_must_agree() -> None:
    info = _info(["batch_size", 3, 64, "width"])
    assert resolve_profile(info, (64, 80)).opt == (1, 3, 64, 80)
    with pytest.raises(UsageError, match="fixed at 64"):
        resolve_profile(info, (32, 80))


def test_pattern3_no_profile_and_batch_refused() -> None:
    p = resolve_profile(_info([2, 3, 32, 32]))
    assert p.pattern == 3 and p.to_dict() is None and p.static_shape == (2, 3, 32, 32)
    for kwargs in ({"batch_size": 4}, {"batch_range": (1, 2, 4)}):
        with pytest.raises(UsageError, match="バッチサイズ変更不可"):
            resolve_profile(_info([2, 3, 32, 32]), **kwargs)


def test_batch_size_and_range() -> None:
    info = _info(["batch_size", 3, 32, 32])
    assert resolve_profile(info, batch_size=8).to_dict()["max"] == [8, 3, 32, 32]
    p = resolve_profile(info, batch_range=(1, 4, 16))
    assert (p.min[0], p.opt[0], p.max[0]) == (1, 4, 16)
    with pytest.raises(UsageError, match="MIN <= OPT <= MAX"):
        resolve_profile(info, batch_range=(4, 2, 8))


def test_auto_backend_finds_tensorrt_rtx() -> None:
    # CI must have TensorRT-RTX: this fails (not skips) without it.
    backend = load_backend("auto")
    assert backend.name in ("tensorrt", "tensorrt_rtx")
    assert load_backend("tensorrt-rtx").name == "tensorrt_rtx"
    assert load_backend("tensorrt_rtx").version.startswith("1.")


def test_missing_backend_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def fake(name: str, *args: object):
        if name.startswith("tensorrt"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(BackendMissingError) as exc:
        load_backend("auto")
    assert 'pochitrain[tensorrt]' in exc.value.remedy
    assert 'pochitrain[tensorrt-rtx]' in exc.value.remedy
    with pytest.raises(BackendMissingError, match="tensorrt_rtx_bindings"):
        load_backend("tensorrt-rtx")


def test_stub_only_tensorrt_is_not_a_backend() -> None:
    # tensorrt-stubs (installed for mypy) leaves an importable, empty 'tensorrt' package.
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        import tensorrt as mod

        if not hasattr(mod, "Builder"):
            with pytest.raises(BackendMissingError, match="pochitrain\\[tensorrt\\]"):
                load_backend("tensorrt")
            return
    pytest.skip("a real TensorRT is installed (or no stub package): nothing to check")
