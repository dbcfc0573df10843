"""OnnxRunner / open_onnx_runner with real ONNX Runtime sessions, and infer-onnx end to end."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pochitrain.errors import BackendMissingError, ModelFileError, ShapeError, UsageError
from pochitrain.inference.onnx_runner import open_onnx_runner, resolve_providers


@pytest.fixture(scope="module")
def plain_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A torchvision model exported with plain torch.onnx.export: no pochitrain metadata."""
    import torch
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=5).eval()
    path = tmp_path_factory.mktemp("plain") / "plain.onnx"
    with pytest.warns(DeprecationWarning):  # the legacy exporter says so; we call it on purpose
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return path, model


@pytest.fixture(scope="module")
def static_onnx(tmp_path_factory: pytest.TempPathFactory, untrained_checkpoint: Path) -> Path:
    from pochitrain.onnx.export import ExportShape
    from pochitrain.pipeline.export_onnx import export_onnx

    out = tmp_path_factory.mktemp("static") / "b4.onnx"
    export_onnx(untrained_checkpoint, output=out, shape=ExportShape(static_batch=4),
                verify=False, progress=False)
    return out


def test_plain_export_without_metadata_runs(plain_onnx) -> None:
    import torch

    path, model = plain_onnx
    runner, info = open_onnx_runner(path)
    assert info.meta is None and info.input_name == "x" and info.input_shape == ["n", 3, 32, 32]
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    logits, pure = runner.run(x)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert logits.shape == (3, 5) and pure > 0
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    assert runner.describe()["providers"] == "CPUExecutionProvider"
    runner.check_batch_size(7)  # dynamic batch: any size


def test_wrong_image_size_is_a_shape_error(plain_onnx) -> None:
    runner, _ = open_onnx_runner(plain_onnx[0])
    with pytest.raises(ShapeError, match="could not run"):
        runner.run(np.zeros((1, 3, 40, 40), np.float32))


def test_static_batch_pads_last_batch_and_refuses_other_sizes(static_onnx: Path) -> None:
    runner, info = open_onnx_runner(static_onnx)
    assert info.input_shape == [4, 3, 32, 32] and runner.fixed_batch == 4
    runner.check_batch_size(4)
    with pytest.raises(UsageError, match="--batch-size 4"):
        runner.check_batch_size(8)
    with pytest.raises(UsageError):
        runner.run(np.zeros((5, 3, 32, 32), np.float32))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    full, _ = runner.run(x)
    part, _ = runner.run(x[:3])  # the loop's shorter last batch
    assert part.shape == (3, 10)
    np.testing.assert_allclose(part, full[:3], atol=1e-5)


def test_corrupt_onnx(tmp_path: Path, plain_onnx, digits_dir: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.cli.main import run as cli

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(ModelFileError):
        open_onnx_runner(junk)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(plain_onnx[0].read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        open_onnx_runner(truncated)
    out = tmp_path / "res"
    assert cli(["infer", str(truncated), "--data", str(digits_dir / "val"), "-o", str(out),
                "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "ONNX モデルとして読み込めません" in err and "truncated or not ONNX" in err
    assert "Traceback" not in err and not out.exists()
    with pytest.raises(ModelFileError, match="not found"):
        open_onnx_runner(tmp_path / "missing.onnx")


def _save_graph(path: Path, inputs: list[list[int | str]], op: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(f"in{i}", TensorProto.FLOAT, s)
           for i, s in enumerate(inputs)]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    node = helper.make_node(op, [i.name for i in ins], ["out"])
    graph = helper.make_graph([node], "g", ins, [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_session_reads_the_model_as_the_onnx_package_does(
        plain_onnx, static_onnx: Path, untrained_checkpoint: Path,
        onnx_export: Callable[..., Path]) -> None:
    """Running a model takes its names, shapes, element type and pochitrain metadata from the
    ONNX Runtime session: the same as read_onnx gives from the file (the opset aside)."""
    import dataclasses

    from pochitrain.onnx.inspect import read_onnx

    for path in (plain_onnx[0], static_onnx, onnx_export(untrained_checkpoint, 2)):
        _, from_session = open_onnx_runner(path)
        from_file, _ = read_onnx(path)
        assert dataclasses.replace(from_file, opset=0) == from_session
    assert from_session.meta is not None and from_session.dynamic_dims == [0, 2, 3]


def test_running_an_onnx_model_does_not_import_onnx(untrained_checkpoint: Path,
                                                    onnx_export: Callable[..., Path]) -> None:
    """The onnx package (about a second to import on a small machine) is left to the commands
    that read or edit graphs; running one needs ONNX Runtime alone."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from pochitrain.inference.onnx_runner import open_onnx_runner\n"
            f"runner, info = open_onnx_runner({str(onnx_export(untrained_checkpoint))!r})\n"
            "probs, _ = runner.run(np.zeros((2, 3, 32, 32), np.float32))\n"
            "print(probs.shape, info.meta.model_name, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["(2,", "10)", "resnet18", "False"], out.stdout + out.stderr


def test_wrong_rank_and_several_inputs(tmp_path: Path) -> None:
    rank2 = _save_graph(tmp_path / "rank2.onnx", [["n", 10]], "Relu")
    with pytest.raises(ModelFileError, match="expected \\(batch, 3, H, W\\)"):
        open_onnx_runner(rank2)
    two = _save_graph(tmp_path / "two.onnx", [["n", 3, 8, 8], ["n", 3, 8, 8]], "Add")
    with pytest.raises(ModelFileError, match="2 input"):
        open_onnx_runner(two)


def test_providers() -> None:
    available = ["CPUExecutionProvider"]
    assert resolve_providers(None, available) == ["CPUExecutionProvider"]
    assert resolve_providers(["CPUExecutionProvider"], available) == ["CPUExecutionProvider"]
    with_gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["cuda"], with_gpu) == with_gpu
    with pytest.raises(BackendMissingError, match="CUDAExecutionProvider") as exc:
        resolve_providers(["cuda"], available)
    assert "onnxruntime-gpu" in exc.value.remedy
    with pytest.raises(BackendMissingError, match="TensorrtExecutionProvider"):
        resolve_providers(["tensorrt"], available)
    with pytest.raises(UsageError, match="Unknown"):
        resolve_providers(["fast"], available)


def test_cuda_request_through_the_factory(plain_onnx) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BackendMissingError, match="onnxruntime-gpu|could not start"):
        open_onnx_runner(plain_onnx[0], ["cuda"])


def _predictions(csv_path: Path) -> dict[str, str]:
    with csv_path.open(encoding="utf-8") as f:
        return {row["image_path"]: row["predicted"] for row in csv.DictReader(f)}


def test_infer_onnx_agrees_with_pytorch(tmp_path: Path, untrained_checkpoint: Path,
                                        onnx_export: Callable[..., Path], digits_dir: Path) -> None:
    """pochi infer on the .pth and infer-onnx on its export give the same predictions."""
    from pochitrain.cli.main import run as cli

    onnx_path = onnx_export(untrained_checkpoint)
    data = str(digits_dir / "val")
    assert cli(["infer", str(untrained_checkpoint), "--data", data, "-b", "32", "--quiet",
                "--device", "cpu", "-o", str(tmp_path / "pt")]) == 0
    assert cli(["infer-onnx", str(onnx_path), "--data", data, "-b", "32", "--quiet",
                "-o", str(tmp_path / "ox")]) == 0
    pt = _predictions(tmp_path / "pt" / "pytorch_inference_results.csv")
    ox = _predictions(tmp_path / "ox" / "onnx_inference_results.csv")
    assert len(pt) == len(ox) > 300 and pt.keys() == ox.keys()
    same = sum(pt[k] == ox[k] for k in pt) / len(pt)
    assert same >= 0.995
    summary = (tmp_path / "ox" / "onnx_inference_summary.txt").read_text(encoding="utf-8")
    assert "CPUExecutionProvider" in summary
    lines = summary.splitlines()  # the original's extra lines for ONNX, in its form
    assert "プロバイダー: ['CPUExecutionProvider']" in lines
    assert any(line.startswith("パイプライン: ") for line in lines)


def test_infer_onnx_refuses_fixed_size_that_differs_from_preprocessing(
        tmp_path: Path, untrained_checkpoint: Path, digits_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A 40x40 graph whose metadata preprocessing yields 32x32: refused before any image runs."""
    from pochitrain.checkpoint import load_model
    from pochitrain.cli.main import run as cli
    from pochitrain.onnx.export import export_model

    model, meta = load_model(untrained_checkpoint)
    path = tmp_path / "mismatch.onnx"
    export_model(model, path, meta, (40, 40))  # meta still says 32x32
    out = tmp_path / "res"
    assert cli(["infer-onnx", str(path), "--data", str(digits_dir / "val"), "--quiet",
                "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "40x40" in err and "32x32" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_tensor_batches_are_bound_in_place_and_equal_numpy(plain_onnx, static_onnx: Path) -> None:
    """The GPU input pipeline hands torch tensors to the runner: they are bound with IOBinding
    (on the CPU here; the same code binds CUDA memory on a GPU), padded for a fixed batch."""
    import torch

    path, _ = plain_onnx
    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32), dtype=np.float32)
    for model_path, n in ((path, 5), (static_onnx, 3)):
        runner, _ = open_onnx_runner(model_path)
        want, _ = runner.run(x[:n])
        got, pure = runner.run(torch.from_numpy(x[:n]))
        assert got.shape == want.shape and pure > 0
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_two_onnxruntime_installs_in_one_folder_are_reported(tmp_path: Path) -> None:
    """Real package metadata for both onnxruntime and onnxruntime-gpu in one folder (what
    pip leaves after installing the GPU build over the CPU one)."""
    import subprocess
    import sys

    for name in ("onnxruntime", "onnxruntime_gpu"):
        info = tmp_path / f"{name}-1.20.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 1.20.0\n")
    code = ("from pochitrain.inference.onnx_runner import check_single_install; "
            "check_single_install()")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    assert "both onnxruntime and onnxruntime-gpu are installed" in out.stdout
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in out.stdout
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout == ""  # this venv has the CPU build only
