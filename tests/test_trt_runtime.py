"""TensorRT runtime: driven through the API test double, and its load/error paths on real
TensorRT-RTX engines built here (which cannot execute: this machine has no GPU)."""

from __future__ import annotations

import csv
import functools
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trt_double
from trt_double import ContractViolation, CpuPipe, EngineSpec, double_engine, engine_meta

from pochitrain.errors import BackendMissingError, EngineLoadError, ModelFileError, UsageError
from pochitrain.inference.trt_runner import open_trt_runner
from pochitrain.tensorrt.engine_file import write_engine

ROOT = Path(__file__).resolve().parents[1]


def _open(path: Path, batch_size: int | None = None, **pipe_kw: Any):
    return open_trt_runner(path, batch_size, trt=trt_double, pipe=CpuPipe(**pipe_kw))


def _images(n: int, chw: tuple[int, int, int] = (3, 4, 4), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *chw)).astype(np.float32)


# --- the runner through the double ---------------------------------------------------------

def test_runner_matches_reference_and_sets_shape_every_batch(tmp_path: Path) -> None:
    spec = EngineSpec(profile=(1, 4, 8))
    runner, meta = _open(double_engine(tmp_path, spec))
    assert runner.name == "tensorrt" and meta["backend"] == "tensorrt"
    assert runner.default_batch_size == 4  # the profile's opt
    images = _images(10)
    outs = []
    for start in range(0, 10, 4):  # 4, 4 and a last batch of 2: no padding
        logits, pure = runner.run(images[start:start + 4])
        assert logits.dtype == np.float32 and pure >= 0.0
        outs.append(logits)
    logits = np.concatenate(outs)
    np.testing.assert_allclose(logits, spec.reference(images), rtol=1e-5, atol=1e-5)
    context = runner.context
    assert [s[0] for s, _ in context.executions] == [4, 4, 2]
    assert {stream for _, stream in context.executions} == {0x5EED}
    assert (logits.argmax(1) == spec.reference(images).argmax(1)).all()
    info = runner.describe()
    assert info["precision"] == "fp32" and info["backend"] == "tensorrt 10.13.0.35"
    assert info["batch_profile"] == "min 1 / opt 4 / max 8"
    runner.close()
    assert runner.pipe.closed


def test_fp16_io_is_converted(tmp_path: Path) -> None:
    spec = EngineSpec(io_dtype="float16", profile=(1, 2, 2))
    runner, _ = _open(double_engine(tmp_path, spec))
    images = _images(2)
    logits, _ = runner.run(images)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, spec.reference(images), rtol=1e-3, atol=1e-3)
    assert runner.describe()["engine_io"] == "float16 -> float16"


@pytest.mark.parametrize("io_dtype", ["float32", "float16"])
def test_tensor_batches_run_like_arrays(tmp_path: Path, io_dtype: str) -> None:
    """A batch that is already a tensor (the GPU input pipeline's) takes the engine's input
    type and gives the same logits as the array."""
    import torch

    spec = EngineSpec(io_dtype=io_dtype, profile=(1, 2, 2))
    runner, _ = _open(double_engine(tmp_path, spec))
    images = _images(2)
    from_array, _ = runner.run(images)
    from_tensor, _ = runner.run(torch.from_numpy(images))
    np.testing.assert_array_equal(from_tensor, from_array)


def test_static_engine_runs_its_fixed_batch_only(tmp_path: Path) -> None:
    spec = EngineSpec(profile=None, static_batch=1)  # spec pattern 3: no profile
    runner, _ = _open(double_engine(tmp_path, spec))
    assert runner.default_batch_size == 1
    logits, _ = runner.run(_images(1))
    np.testing.assert_allclose(logits, spec.reference(_images(1)), rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match=r"allowed: 1\)"):
        runner.check_batch_size(2)


def test_batch_outside_profile_is_a_usage_error(tmp_path: Path) -> None:
    engine = double_engine(tmp_path, EngineSpec(profile=(2, 4, 8)))
    with pytest.raises(UsageError, match="allowed: 2 to 8") as err:
        _open(engine, batch_size=9)
    assert err.value.exit_code == 2 and "pochi convert" in (err.value.remedy or "")
    runner, _ = _open(engine)
    with pytest.raises(UsageError, match="below the engine profile's minimum"):
        runner.run(_images(1))  # a last batch smaller than the profile's min
    with pytest.raises(UsageError, match="does not fit the engine input"):
        runner.run(_images(2, chw=(3, 5, 5)))
    assert runner.context.executions == []


def test_two_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="2 input"):
        _open(double_engine(tmp_path, EngineSpec(extra_inputs=1)))


def test_engine_of_another_version_says_reconvert(tmp_path: Path) -> None:
    engine = double_engine(tmp_path, EngineSpec(version="8.6.1"))
    with pytest.raises(EngineLoadError) as err:
        _open(engine)
    text = str(err.value)
    assert "tensorrt 8.6.1" in text and "10.13.0.35" in text  # recorded vs installed
    assert "version 8.6.1" in text  # TensorRT's own log line is passed on
    assert "pochi convert" in (err.value.remedy or "") and "best.onnx" in err.value.remedy


# --- the double rejects the mistakes the real API punishes -----------------------------------

def _context(spec: EngineSpec) -> Any:
    engine = trt_double.Runtime(trt_double.Logger()).deserialize_cuda_engine(spec.to_bytes())
    assert engine is not None
    return engine.create_execution_context()


def _buffers(n: int, spec: EngineSpec) -> tuple[np.ndarray, np.ndarray]:
    x = _images(n, spec.chw)
    y = np.zeros((n, spec.num_classes), np.float32)
    for arr in (x, y):
        trt_double.register(arr.ctypes.data, arr.nbytes)
    return x, y


def test_double_computes_with_a_correct_call_sequence() -> None:
    spec = EngineSpec()
    ctx = _context(spec)
    x, y = _buffers(3, spec)
    assert ctx.set_input_shape("input", (3, *spec.chw))
    assert tuple(ctx.get_tensor_shape("output")) == (3, spec.num_classes)
    ctx.set_tensor_address("input", x.ctypes.data)
    ctx.set_tensor_address("output", y.ctypes.data)
    assert ctx.execute_async_v3(0x1234)
    np.testing.assert_allclose(y, spec.reference(x), rtol=1e-5, atol=1e-5)


def test_double_rejects_execution_without_input_shape() -> None:
    spec = EngineSpec()
    ctx = _context(spec)
    x, y = _buffers(2, spec)
    assert tuple(ctx.get_tensor_shape("output")) == (-1, spec.num_classes)
    ctx.set_tensor_address("input", x.ctypes.data)
    ctx.set_tensor_address("output", y.ctypes.data)
    with pytest.raises(ContractViolation, match="input shape of 'input' not set"):
        ctx.execute_async_v3(0x1234)


def test_double_rejects_a_missing_address() -> None:
    spec = EngineSpec()
    ctx = _context(spec)
    x, _ = _buffers(2, spec)
    ctx.set_input_shape("input", (2, *spec.chw))
    ctx.set_tensor_address("input", x.ctypes.data)
    with pytest.raises(ContractViolation, match="no address set for tensor 'output'"):
        ctx.execute_async_v3(0x1234)


def test_double_rejects_a_too_small_buffer() -> None:
    spec = EngineSpec()
    ctx = _context(spec)
    x, y = _buffers(2, spec)
    ctx.set_input_shape("input", (4, *spec.chw))  # 4 images, buffers hold 2
    ctx.set_tensor_address("input", x.ctypes.data)
    ctx.set_tensor_address("output", y.ctypes.data)
    with pytest.raises(ContractViolation, match="does not hold"):
        ctx.execute_async_v3(0x1234)


@pytest.mark.parametrize("handle", [0, 1, 2])
def test_double_rejects_the_default_stream(handle: int) -> None:
    spec = EngineSpec()
    ctx = _context(spec)
    x, y = _buffers(1, spec)
    ctx.set_input_shape("input", (1, *spec.chw))
    ctx.set_tensor_address("input", x.ctypes.data)
    ctx.set_tensor_address("output", y.ctypes.data)
    with pytest.raises(ContractViolation, match="default stream"):
        ctx.execute_async_v3(handle)


def test_double_refuses_shapes_outside_the_profile_and_unknown_names() -> None:
    spec = EngineSpec(profile=(1, 4, 8))
    ctx = _context(spec)
    assert not ctx.set_input_shape("input", (9, *spec.chw))
    assert not ctx.set_input_shape("input", (2, 3, 5, 5))
    assert "input" not in ctx.shapes
    with pytest.raises(ContractViolation, match="no tensor named"):
        ctx.set_tensor_address("images", 0x1000)
    with pytest.raises(ContractViolation, match="not an input"):
        ctx.set_input_shape("output", (1, 10))


def test_runner_on_the_default_stream_is_caught(tmp_path: Path) -> None:
    runner, _ = _open(double_engine(tmp_path, EngineSpec()), stream_handle=0)
    with pytest.raises(ContractViolation, match="default stream"):
        runner.run(_images(2))


# --- real files: missing engine, real TensorRT-RTX engines -----------------------------------

def test_missing_engine_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="エンジンファイルが見つかりません") as err:
        open_trt_runner(tmp_path / "nope.engine")
    assert "Engine file not found" in err.value.message and "pochi convert" in err.value.remedy


def test_engine_without_sidecar_runs_as_plain_tensorrt(tmp_path: Path) -> None:
    """Engines built elsewhere (the original pochitrain, trtexec) have no sidecar: they open
    with precision unknown and no model metadata (infer-trt -c config.py supplies it)."""
    engine = tmp_path / "bare.engine"
    spec = EngineSpec()
    engine.write_bytes(spec.to_bytes())
    runner, meta = _open(engine)
    assert meta["model"] is None and meta["sidecar"] is False
    assert runner.describe()["precision"] == "unknown"
    images = _images(2)
    logits, _ = runner.run(images)
    np.testing.assert_allclose(logits, spec.reference(images), rtol=1e-5, atol=1e-5)
    runner.close()


@pytest.fixture(scope="module")
def rtx_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real TensorRT-RTX engine (linear classifier, 3x8x8, batch 1..4) with its sidecar."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pochitrain.tensorrt.backend import load_backend
    from pochitrain.tensorrt.build import build_engine
    from pochitrain.tensorrt.profile import Profile

    root = tmp_path_factory.mktemp("rtx")
    w = np.random.default_rng(0).standard_normal((10, 192)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "w"], ["output"], transB=1)],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                               ["batch_size", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch_size", 10])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx_path = root / "tiny.onnx"
    onnx.save(model, str(onnx_path))
    backend = load_backend("tensorrt_rtx")
    profile = Profile(1, (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    result = build_engine(backend, onnx_path, profile, "fp32")
    engine = root / "tiny.engine"
    write_engine(engine, result.engine,
                 engine_meta("tensorrt_rtx", backend.version, (3, 8, 8), 10, (1, 2, 4)),
                 overwrite=False)
    return engine


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif("_cuda()", reason="checks the CPU-only path")
def test_real_engine_without_cuda_says_no_cuda(rtx_engine: Path) -> None:
    with pytest.raises(BackendMissingError, match="No CUDA device") as err:
        open_trt_runner(rtx_engine)
    assert "infer-onnx" in (err.value.remedy or "")


def test_real_engine_that_cannot_deserialize(rtx_engine: Path) -> None:
    # Past the CUDA check (CPU pipe): real TensorRT-RTX deserialization fails on this machine
    # (no driver; on a GPU of another compute capability it fails the same way).
    if _cuda():
        pytest.skip("a CUDA machine may deserialize this engine")
    with pytest.raises(EngineLoadError) as err:
        open_trt_runner(rtx_engine, pipe=CpuPipe())
    text = str(err.value)
    assert "エンジンを読み込めません" in text and "cannot be deserialized" in text
    assert "built with tensorrt_rtx 1." in text and "installed: tensorrt_rtx 1." in text
    assert "TensorRT:" in text and "cuda" in text.lower()  # the runtime's own reason
    assert "pochi convert" in err.value.remedy


def test_corrupt_real_engine(rtx_engine: Path, tmp_path: Path) -> None:
    engine = Path(shutil.copy(rtx_engine, tmp_path / "cut.engine"))
    shutil.copy(str(rtx_engine) + ".json", str(engine) + ".json")
    engine.write_bytes(rtx_engine.read_bytes()[:1000])  # truncated copy
    with pytest.raises(EngineLoadError, match="cannot be deserialized"):
        open_trt_runner(engine, pipe=CpuPipe())


def test_backend_in_metadata_not_installed(rtx_engine: Path, tmp_path: Path) -> None:
    import json

    engine = Path(shutil.copy(rtx_engine, tmp_path / "full.engine"))
    meta = json.loads(Path(str(rtx_engine) + ".json").read_text())
    meta["backend"], meta["backend_version"] = "tensorrt", "10.13.0"
    Path(str(engine) + ".json").write_text(json.dumps(meta))
    with pytest.raises(BackendMissingError, match="built with tensorrt, which is not") as err:
        open_trt_runner(engine, pipe=CpuPipe())
    assert "pochitrain[tensorrt]" in (err.value.remedy or "")


@pytest.mark.skipif("_cuda()", reason="checks the CPU-only path")
def test_cli_errors_are_clear(rtx_engine: Path, digits_dir: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.cli.main import run

    out = tmp_path / "out"
    missing = tmp_path / "missing.engine"
    assert run(["infer-trt", str(missing), "--data", str(digits_dir / "val"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "エンジンファイルが見つかりません" in err and "Traceback" not in err
    assert run(["infer-trt", str(rtx_engine), "--data", str(digits_dir / "val"),
                "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "CUDA" in err and "Traceback" not in err
    assert not out.exists()


# --- the whole infer pipeline with the double: same files and columns as other runtimes ----

def test_infer_pipeline_writes_tensorrt_files(digits_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pochitrain.inference import trt_runner as runtime
    from pochitrain.meta import ModelMeta
    from pochitrain.pipeline.infer import infer
    from pochitrain.preprocess import Preprocess
    from pochitrain.reports import RESULT_COLUMNS, InferenceResult, summary_text
    from pochitrain.sample_data import CLASS_NAMES

    data = tmp_path / "val"
    for cls in sorted((digits_dir / "val").iterdir()):
        (data / cls.name).mkdir(parents=True)
        for img in sorted(cls.iterdir())[:2]:
            shutil.copy(img, data / cls.name / img.name)
    model = ModelMeta(CLASS_NAMES, Preprocess.simple(32, 32), model_name="linear").to_dict()
    spec = EngineSpec(chw=(3, 32, 32), profile=(1, 8, 8))
    engine = double_engine(tmp_path, spec, model=model)
    monkeypatch.setattr(runtime, "open_trt_runner", functools.partial(
        runtime.open_trt_runner, trt=trt_double, pipe=CpuPipe()))
    trt_out = infer(engine, data=data, output=tmp_path / "trt", progress=False)
    assert sorted(p.name for p in trt_out.files) == [
        "classification_report.csv", "confusion_matrix.png",
        "tensorrt_inference_results.csv", "tensorrt_inference_summary.txt"]
    rows = list(csv.DictReader((tmp_path / "trt" / "tensorrt_inference_results.csv").open()))
    assert list(rows[0].keys()) == RESULT_COLUMNS and len(rows) == 20
    # predictions are the double's reference on the preprocessed images
    pre = Preprocess.simple(32, 32)
    from PIL import Image

    batch = np.stack([pre(Image.open(r["image_path"]).convert("RGB")) for r in rows])
    assert [int(r["predicted"]) for r in rows] == spec.reference(batch).argmax(1).tolist()

    def labels(path: Path) -> list[str]:
        return [line.split(":")[0] for line in path.read_text(encoding="utf-8").splitlines()]

    trt_labels = labels(tmp_path / "trt" / "tensorrt_inference_summary.txt")
    # the summary lines every runtime writes, in the same order
    any_run = InferenceResult("tensorrt", CLASS_NAMES, paths=[data], labels=[0], preds=[0],
                              confidences=[1.0], ranks=[0])
    standard = summary_text(any_run, {"model": "m", "data": "d", "input_size": "32x32",
                                      "pipeline": "cpu"})
    standard_labels = [line.split(":")[0] for line in standard.splitlines()][1:]
    assert trt_labels[1:len(standard_labels) + 1] == standard_labels
    for key in ("backend", "precision", "batch_profile"):
        assert key in trt_labels
    assert "バッチサイズ / Batch size: 8" in (tmp_path / "trt" /
                                             "tensorrt_inference_summary.txt").read_text()
