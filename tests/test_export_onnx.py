"""export-onnx: real exports of a resnet18 checkpoint, checked with onnx.checker and ONNX Runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pochitrain.cli.main import run as cli
from pochitrain.errors import UsageError, VerificationError
from pochitrain.meta import META_KEY, file_sha256
from pochitrain.onnx.inspect import read_onnx
from pochitrain.pipeline.export_onnx import export_onnx
from pochitrain.preprocess import Preprocess


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory, untrained_checkpoint: Path) -> Path:
    """A private copy of the checkpoint (exports are written beside it)."""
    folder = tmp_path_factory.mktemp("export") / "models"
    folder.mkdir()
    shutil.copy(untrained_checkpoint, folder / "best.pth")
    return folder


@pytest.fixture(scope="module")
def exported(ckpt_dir: Path, digits_dir: Path):
    return export_onnx(ckpt_dir / "best.pth", data=digits_dir / "val", progress=False)


def _val_batch(digits_dir: Path, n: int) -> np.ndarray:
    from pochitrain.data import open_rgb, scan_image_folder

    samples = scan_image_folder(digits_dir / "val").samples[::23][:n]
    pre = Preprocess.simple(32, 32)
    return np.stack([pre(open_rgb(p)) for p, _ in samples])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_default_export_shape_checker_and_metadata(exported, ckpt_dir: Path) -> None:
    import onnx

    path = ckpt_dir / "best.onnx"
    assert exported.path == path and path.is_file()
    onnx.checker.check_model(str(path), full_check=True)
    info, proto = read_onnx(path)
    assert info.input_name == "input" and info.output_name == "output"
    assert info.input_shape == ["batch_size", 3, 32, 32]
    assert info.output_shape == ["batch_size", 10]
    assert info.pattern == 1 and info.opset == 17
    # metadata round-trip: everything from the checkpoint plus its sha256
    assert info.meta is not None
    assert info.meta.class_names == [str(d) for d in range(10)]
    assert info.meta.model_name == "resnet18"
    assert info.meta.preprocess == Preprocess.simple(32, 32)
    assert info.meta.source["checkpoint_sha256"] == file_sha256(ckpt_dir / "best.pth")
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props[META_KEY])["input_size"] == [32, 32]
    assert proto.producer_name == "pochitrain"
    # verification really ran on real images at batch 1 and 16
    report = exported.report
    assert "images from" in report.inputs
    assert [c.batch_size for c in report.checks] == [1, 16]
    assert all(c.ok and c.max_abs_diff < 1e-3 for c in report.checks)
    assert _leftovers(ckpt_dir) == []


@pytest.mark.parametrize("batch", [1, 16])
def test_onnx_runtime_matches_pytorch(exported, ckpt_dir: Path, digits_dir: Path,
                                      batch: int) -> None:
    import torch

    from pochitrain.checkpoint import load_model
    from pochitrain.inference.onnx_runner import open_onnx_runner

    runner, _ = open_onnx_runner(ckpt_dir / "best.onnx")
    x = _val_batch(digits_dir, batch)
    assert len(x) == batch
    logits, pure = runner.run(x)
    model, _ = load_model(ckpt_dir / "best.pth")
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert logits.shape == (batch, 10) and logits.dtype == np.float32 and pure > 0
    np.testing.assert_allclose(logits, ref, atol=1e-3)
    assert (logits.argmax(1) == ref.argmax(1)).all()


def test_dynamic_spatial_from_run_json(tmp_path: Path, untrained_checkpoint: Path,
                                       digits_dir: Path) -> None:
    """Pattern 2; the verification images come from the run's run.json val_data_root."""
    from pochitrain.inference.onnx_runner import open_onnx_runner

    (tmp_path / "models").mkdir()
    ckpt = tmp_path / "models" / "best.pth"
    shutil.copy(untrained_checkpoint, ckpt)
    (tmp_path / "run.json").write_text(json.dumps({"val_data_root": str(digits_dir / "val")}))
    rc = cli(["export-onnx", str(ckpt), "--dynamic-spatial", "--output",
              str(tmp_path / "dyn.onnx")])
    assert rc == 0
    runner, info = open_onnx_runner(tmp_path / "dyn.onnx")
    assert info.input_shape == ["batch_size", 3, "height", "width"] and info.pattern == 2
    for h, w in [(32, 32), (48, 40)]:
        logits, _ = runner.run(np.zeros((2, 3, h, w), np.float32))
        assert logits.shape == (2, 10)


def test_static_batch_new_size_random_inputs(tmp_path: Path, untrained_checkpoint: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Pattern 3 at another input size; no data anywhere -> random inputs with a warning."""
    ckpt = tmp_path / "best.pth"
    shutil.copy(untrained_checkpoint, ckpt)
    out = export_onnx(ckpt, input_size=(40, 40), shape=_shape(static_batch=3), progress=False)
    assert "No --data given" in capsys.readouterr().out
    assert out.report.inputs == "random inputs"
    assert [c.batch_size for c in out.report.checks] == [3]
    info, _ = read_onnx(tmp_path / "best.onnx")
    assert info.input_shape == [3, 3, 40, 40] and info.output_shape == [3, 10]
    assert info.pattern == 3
    assert info.meta.input_size == [40, 40]
    assert info.meta.preprocess.resize == [40, 40]


def test_resized_preprocess_keeps_crop_fraction() -> None:
    pre = Preprocess(input_size=[224, 224], resize=[256], center_crop=[224, 224])
    new = pre.resized_to((112, 112))
    assert new.resize == [128] and new.center_crop == [112, 112] and new.input_size == [112, 112]
    assert pre.resized_to((224, 224)) is pre


def _shape(**kw):
    from pochitrain.onnx.export import ExportShape

    return ExportShape(**kw)


# --- bad input: clear message, exit != 0, nothing written -------------------------------------

def test_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["export-onnx", str(tmp_path / "nope.pth")]) == 1
    err = capsys.readouterr().err
    assert "Checkpoint not found" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None])
def test_not_our_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            content: bytes | None) -> None:
    import torch

    path = tmp_path / "other.pth"
    if content is None:
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)  # a real but foreign checkpoint
    else:
        path.write_bytes(content)
    assert cli(["export-onnx", str(path)]) == 1
    err = capsys.readouterr().err
    assert "checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "other.onnx").exists()


def test_input_size_zero_is_refused(ckpt_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(["export-onnx", str(ckpt_dir / "best.pth"), "--input-size", "0", "224"])
    assert exc.value.code == 2
    assert "must be 1 or more" in capsys.readouterr().err


def test_input_size_one_value(tmp_path: Path, ckpt_dir: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.onnx"
    assert cli(["export-onnx", str(ckpt_dir / "best.pth"), "--input-size", "224",
                "-o", str(out)]) == 2
    assert "two values" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("where", ["missing_dir", "sys"])
def test_unwritable_output_folder(tmp_path: Path, ckpt_dir: Path, where: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    # /sys refuses new files even to root, where chmod-based checks would pass
    out = tmp_path / "no" / "such" / "x.onnx" if where == "missing_dir" else Path("/sys/x.onnx")
    if where == "sys" and not Path("/sys").is_dir():
        pytest.skip("no /sys on this platform")
    assert cli(["export-onnx", str(ckpt_dir / "best.pth"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Output folder" in err or "output folder" in err
    assert not out.exists()


def test_existing_output_needs_overwrite(tmp_path: Path, ckpt_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "taken.onnx"
    out.write_bytes(b"keep me")
    assert cli(["export-onnx", str(ckpt_dir / "best.pth"), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


def test_overwrite_replaces_and_skip_verify(tmp_path: Path, ckpt_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "taken.onnx"
    out.write_bytes(b"old")
    assert cli(["export-onnx", str(ckpt_dir / "best.pth"), "-o", str(out), "--overwrite",
                "--skip-verify", "--opset", "18"]) == 0
    assert "Verification skipped" in capsys.readouterr().out
    info, _ = read_onnx(out)
    assert info.opset == 18 and info.input_shape == ["batch_size", 3, 32, 32]


@pytest.mark.parametrize("args, needle", [
    (["--opset", "5"], "--opset 5 is not supported"),
    (["-o", "model.txt"], "must end in .onnx"),
])
def test_bad_options(tmp_path: Path, ckpt_dir: Path, capsys: pytest.CaptureFixture[str],
                     args: list[str], needle: str) -> None:
    args = [str(tmp_path / a) if a.endswith(".txt") else a for a in args]
    assert cli(["export-onnx", str(ckpt_dir / "best.pth"), *args]) == 2
    assert needle in capsys.readouterr().err


def test_exclusive_shape_options(ckpt_dir: Path) -> None:
    with pytest.raises(SystemExit):
        cli(["export-onnx", str(ckpt_dir / "best.pth"), "--dynamic-spatial",
             "--static-batch", "2"])
    with pytest.raises(UsageError):
        _shape(dynamic_spatial=True, static_batch=2)


def test_verification_failure_leaves_no_file(tmp_path: Path, ckpt_dir: Path, digits_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph that really computes something else (the classifier's bias shifted on disk)
    is caught."""
    import onnx
    from onnx import numpy_helper

    import pochitrain.pipeline.export_onnx as pipe

    real_export = pipe.export_model

    def export_then_corrupt(model, path, *args, **kwargs) -> None:
        real_export(model, path, *args, **kwargs)
        proto = onnx.load(str(path))
        classifier = [node for node in proto.graph.node if node.op_type == "Gemm"][-1]
        for init in proto.graph.initializer:
            if init.name == classifier.input[2]:
                bias = numpy_helper.to_array(init).copy()
                bias[3] += 5.0
                init.CopyFrom(numpy_helper.from_array(bias, init.name))
        onnx.save(proto, str(path))

    monkeypatch.setattr(pipe, "export_model", export_then_corrupt)
    out = tmp_path / "bad.onnx"
    with pytest.raises(VerificationError, match="disagree"):
        export_onnx(ckpt_dir / "best.pth", output=out, data=digits_dir / "val", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_verification_data(tmp_path: Path, ckpt_dir: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.onnx"
    assert cli(["export-onnx", str(ckpt_dir / "best.pth"), "-o", str(out),
                "--data", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
