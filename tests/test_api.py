"""The Python API: names importable from pochitrain, str paths, and the documented example."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _doc_example() -> str:
    text = (ROOT / "docs" / "readme_python_api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    example = next(b for b in blocks if "Predictor(onnx_path)" in b)
    assert 'checkpoint = Path("work_dirs/' in example and 'val = Path("data/digits/val")' in example
    return example


def test_import_is_lazy_and_lists_the_api() -> None:
    code = ("import sys, pochitrain; "
            "assert {'train', 'export_onnx', 'convert', 'infer', 'Predictor'} <= set(dir(pochitrain)); "
            "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules; "
            "from pochitrain import Predictor; print(Predictor.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "pochitrain.predictor"
    import pochitrain

    with pytest.raises(AttributeError):
        pochitrain.no_such_name  # noqa: B018


def test_documented_example_runs(trained_checkpoint: Path, digits_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The README example, run as written; only the two paths point at this session's data
    (its val folder: 3 images of each digit)."""
    ckpt = tmp_path / "models" / trained_checkpoint.name
    ckpt.parent.mkdir()
    shutil.copy(trained_checkpoint, ckpt)
    val = tmp_path / "val"
    for digit in (digits_dir / "val").iterdir():
        (val / digit.name).mkdir(parents=True)
        for image in sorted(digit.glob("*.png"))[:3]:
            shutil.copy(image, val / digit.name / image.name)
    code = _doc_example()
    code = re.sub(r'checkpoint = Path\(".*?"\)', f"checkpoint = Path({str(ckpt)!r})", code)
    code = code.replace('val = Path("data/digits/val")', f"val = Path({str(val)!r})")
    namespace: dict[str, object] = {}
    exec(compile(code, "readme_python_api.md", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "accuracy" in out and ckpt.with_suffix(".onnx").is_file()
    assert (ckpt.parent / f"{ckpt.stem}_fp16.engine").is_file()
    # Predictor agrees with pochi infer's CSV for the same image and model
    from pochitrain import Predictor, infer

    onnx_path = ckpt.with_suffix(".onnx")
    image = next((digits_dir / "val" / "7").glob("*.png"))
    row = infer(str(onnx_path), data=str(image), output=str(tmp_path / "one"), progress=False)
    with Predictor(str(onnx_path)) as p:
        pred = p.predict(image)
        probs = p.probabilities(np.stack([p.preprocess(image)]))
    assert pred.index == row.result.preds[0]
    assert pred.probability == pytest.approx(row.result.confidences[0], abs=1e-6)
    assert probs.shape == (1, 10) and probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_predictor_bad_inputs(untrained_checkpoint: Path, tmp_path: Path) -> None:
    from pochitrain import PochiError, Predictor

    with Predictor(untrained_checkpoint, device="cpu") as p:
        for bad in (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8), 42,
                    tmp_path / "missing.png"):
            with pytest.raises(PochiError):
                p.predict(bad)
        junk = tmp_path / "junk.png"
        junk.write_bytes(b"not an image")
        with pytest.raises(PochiError, match="cannot be decoded"):
            p.predict(junk)
        assert p.predict([]) == []
        gray = np.full((20, 20), 128, np.uint8)
        assert len(p.predict(gray, top_k=20).top_k) == 10  # capped at the number of classes


def test_convert_accepts_str_paths_and_refuses_unknown_options(tmp_path: Path) -> None:
    from pochitrain import ConvertOptions, PochiError, convert

    opts = ConvertOptions(onnx_path=str(tmp_path / "m.onnx"), output=str(tmp_path / "m.engine"))
    assert isinstance(opts.onnx_path, Path) and isinstance(opts.output, Path)
    with pytest.raises(PochiError, match="Unknown convert option"):
        convert(str(tmp_path / "m.onnx"), fp16=True)
    with pytest.raises(PochiError, match="Unknown precision"):
        ConvertOptions(onnx_path=tmp_path / "m.onnx", precision="int4")


@pytest.mark.parametrize("decoder", ["pybase64", "base64"])
def test_base64_as_clients_write_it_with_and_without_pybase64(
        decoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SIMD decoder (the serve extra) and the standard library read the same texts to the
    same bytes, and refuse the same ones."""
    import base64
    import binascii

    from pochitrain.api import serializers

    if decoder == "base64":
        monkeypatch.setattr(serializers, "strict_b64decode", base64.b64decode)
    data = bytes(range(256)) * 40 + b"\x01"  # a length that needs padding
    std = base64.b64encode(data).decode()
    readable = [std, std.encode(), std.rstrip("="), base64.urlsafe_b64encode(data).decode(),
                "data:image/jpeg;base64," + std, "\n".join(std[i:i + 76]
                                                        for i in range(0, len(std), 76))]
    for text in readable:
        assert serializers.b64decode_lenient(text) == data
    for text in ("ab!c", "abc=d", "=abc", "ab\u00e9c", std[:-3] + "*=="):
        with pytest.raises((binascii.Error, ValueError)):
            serializers.b64decode_lenient(text)
