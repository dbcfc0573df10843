"""--benchmark-json on pochi infer / infer-onnx: benchmark_result.json in the original's schema."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest

from pochitrain.cli.main import run

# Written from the reference (original v1.8.3, section 7.1): schema_version 1.0.0, no extra
# keys but the two top-k metrics this project adds.
_NUM = {"type": "number"}
BENCHMARK_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "timestamp_jst", "env_name", "suite_name", "repeat_index",
                 "runtime", "precision", "model_name", "pipeline", "device", "options",
                 "metrics", "samples"],
    "properties": {
        "schema_version": {"const": "1.0.0"},
        "timestamp_jst": {"type": "string",
                          "pattern": r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"},
        "env_name": {"type": "string", "minLength": 1},
        "suite_name": {"type": ["string", "null"]},
        "repeat_index": {"type": ["integer", "null"]},
        "runtime": {"enum": ["pytorch", "onnx", "tensorrt"]},
        "precision": {"type": ["string", "null"]},
        "model_name": {"type": "string"},
        "pipeline": {"type": "string"},
        "device": {"type": "string"},
        "options": {
            "type": "object", "additionalProperties": False,
            "required": ["gpu_non_blocking", "pin_memory", "batch_size", "image_size"],
            "properties": {
                "gpu_non_blocking": {"type": "boolean"},
                "pin_memory": {"type": "boolean"},
                "batch_size": {"type": "integer", "minimum": 1},
                "image_size": {"type": "array", "items": {"type": "integer"},
                               "minItems": 2, "maxItems": 2},
            },
        },
        "metrics": {
            "type": "object", "additionalProperties": False,
            "required": ["avg_inference_ms", "avg_e2e_ms", "throughput_inference_ips",
                         "throughput_e2e_ips", "accuracy_percent"],
            "properties": {"avg_inference_ms": _NUM, "avg_e2e_ms": _NUM,
                           "throughput_inference_ips": _NUM, "throughput_e2e_ips": _NUM,
                           "accuracy_percent": {"type": ["number", "null"]},
                           # added to the original's schema: top-k accuracy
                           "top_k": {"type": ["integer", "null"], "minimum": 2},
                           "top_k_accuracy_percent": {"type": ["number", "null"]}},
        },
        "samples": {
            "type": "object", "additionalProperties": False,
            "required": ["num_samples", "measured_samples", "warmup_samples"],
            "properties": {k: {"type": "integer", "minimum": 0}
                           for k in ("num_samples", "measured_samples", "warmup_samples")},
        },
    },
}


@pytest.fixture(scope="module")
def onnx_models(untrained_checkpoint: Path, onnx_export: Callable[..., Path],
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The FP32 export and its FP16 pass, the latter under a misleading file name."""
    import onnx

    from pochitrain.onnx.fp16 import convert_to_fp16

    folder = tmp_path_factory.mktemp("bench_onnx")
    fp32 = onnx_export(untrained_checkpoint)
    fp16, _ = convert_to_fp16(onnx.load(str(fp32)))
    named_fp32 = folder / "model_fp32.onnx"  # precision must come from the graph, not the name
    onnx.save(fp16, str(named_fp32))
    return {"fp32": fp32, "fp16": named_fp32}


def _run(verb: str, model: Path, data: Path, out: Path, *extra: str) -> dict:
    rc = run([verb, str(model), "--data", str(data), "-o", str(out), "--quiet",
              "--benchmark-json", *extra])
    assert rc == 0
    data_ = json.loads((out / "benchmark_result.json").read_text(encoding="utf-8"))
    jsonschema.validate(data_, BENCHMARK_SCHEMA)
    return data_


def test_pytorch_benchmark_json(untrained_checkpoint: Path, val_pairs: Path,
                                tmp_path: Path) -> None:
    res = _run("infer", untrained_checkpoint, val_pairs, tmp_path / "pt", "--device", "cpu",
               "-b", "4", "--benchmark-env-name", "ci-box")
    assert res["runtime"] == "pytorch" and res["precision"] == "fp32"
    assert res["env_name"] == "ci-box" and res["device"] == "cpu" and res["pipeline"] == "cpu"
    assert res["model_name"] == "resnet18" and res["options"]["image_size"] == [32, 32]
    assert res["options"]["batch_size"] == 4 and res["samples"]["num_samples"] == 20
    assert res["samples"]["warmup_samples"] == 8  # 2 warm-up runs of the first batch of 4
    assert res["metrics"]["avg_inference_ms"] > 0
    assert 0 <= res["metrics"]["accuracy_percent"] <= 100
    # 10 classes: top-5; never below top-1, and the same figure as the summary's line
    assert res["metrics"]["top_k"] == 5
    top5 = res["metrics"]["top_k_accuracy_percent"]
    assert res["metrics"]["accuracy_percent"] <= top5 <= 100
    summary = next((tmp_path / "pt").glob("*summary*.txt")).read_text(encoding="utf-8")
    assert f"Top-5 accuracy: {top5:.2f}%" in summary
    details = json.loads((tmp_path / "pt" / "benchmark_details.json").read_text())
    assert details["batch_images"] == [4] * 5  # warm-up calls are not latencies
    assert len(details["batch_pure_ms"]) == 5 and details["peak_gpu_memory_mb"] is None
    assert details["timestamp_local"][-6] in "+-"  # local time carries its offset


def test_onnx_precision_from_graph(onnx_models: dict[str, Path], val_pairs: Path,
                                   tmp_path: Path) -> None:
    res32 = _run("infer-onnx", onnx_models["fp32"], val_pairs, tmp_path / "a", "--providers", "cpu")
    res16 = _run("infer-onnx", onnx_models["fp16"], val_pairs, tmp_path / "b", "--providers", "cpu")
    assert (res32["runtime"], res32["precision"], res32["device"]) == ("onnx", "fp32", "cpu")
    assert res16["precision"] == "fp16"  # file name says fp32, the graph says fp16
    assert res32["env_name"].endswith("-CPU")
    assert res16["metrics"]["accuracy_percent"] == pytest.approx(
        res32["metrics"]["accuracy_percent"], abs=10.0)


def test_tensorrt_precision_from_sidecar() -> None:
    from pochitrain.inference.trt_runner import TensorRTRunner

    precision = TensorRTRunner.precision.fget  # type: ignore[attr-defined]
    # the runner of model_fp16.engine whose sidecar records int8: the sidecar wins
    assert precision(SimpleNamespace(info={"precision": "int8"})) == "int8"
    # no sidecar: unknown (null), never the file name
    assert precision(SimpleNamespace(info={"precision": "unknown"})) is None
