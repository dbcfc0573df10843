"""Engine files and their metadata sidecar ``<engine>.json`` (format "pochitrain-engine-v1").

The engine stays a plain TensorRT plan (trtexec loads it); what pochitrain needs to run it
lives beside it in JSON, tied to it by ``engine_sha256``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.errors import ModelFileError, UsageError
from pochitrain.workspace import atomic_write_bytes, atomic_write_text, check_writable

if TYPE_CHECKING:
    from pochitrain.onnx.inspect import OnnxInfo
    from pochitrain.tensorrt.backend import Backend
    from pochitrain.tensorrt.profile import Profile

ENGINE_FORMAT = "pochitrain-engine-v1"
PRECISION_SUFFIX = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}
# required key -> (type(s), what it must be): checked on read, so an edited sidecar gets a
# message naming the key instead of a TypeError deep inside the runtime.
REQUIRED_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "format": ((str,), "a string"),
    "backend": ((str,), "a string"),
    "backend_version": ((str,), "a string"),
    "precision": ((str,), "one of fp32, fp16, int8"),
    "pattern": ((int,), "1, 2 or 3"),
    "input": ((dict,), "an object"),
    "output": ((dict,), "an object"),
    "model": ((dict, type(None)), "an object or null"),
    "source_onnx": ((dict,), "an object"),
    "engine_sha256": ((str,), "a string"),
    "build": ((dict,), "an object"),
}


def engine_metadata(*, backend: Backend, precision: str, profile: Profile, onnx_info: OnnxInfo,
                    model: dict[str, Any] | None, source_onnx: Path,
                    build: dict[str, Any], calibration: dict[str, Any] | None,
                    gpu: dict[str, str] | None, version: str) -> dict[str, Any]:
    """The sidecar dict for a new engine (``write_engine`` adds ``engine_sha256``); ``model``:
    the ModelMeta dict, already matched to the engine's input size."""
    from pochitrain.meta import file_sha256

    meta: dict[str, Any] = {
        "format": ENGINE_FORMAT,
        "backend": backend.name,
        "backend_version": backend.version,
        "precision": precision,
        "pattern": profile.pattern,
        "input": {"name": onnx_info.input_name, "dtype": "float32",
                  "onnx_shape": list(onnx_info.input_shape), "profile": profile.to_dict()},
        "output": {"name": onnx_info.output_name, "dtype": "float32",
                   "onnx_shape": list(onnx_info.output_shape)},
        "model": model,
        "source_onnx": {"path": str(source_onnx.resolve()), "sha256": file_sha256(source_onnx)},
        "build": build,
        "calibration": calibration,
        "gpu": gpu,
        "created": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "pochitrain_version": version,
    }
    if profile.pattern == 3:
        meta["input"]["static_shape"] = list(profile.input_shape)
    return meta


def default_engine_path(onnx_path: Path, precision: str) -> Path:
    """``<stem>.engine`` / ``<stem>_fp16.engine`` / ``<stem>_int8.engine`` beside the ONNX."""
    return onnx_path.with_name(f"{onnx_path.stem}{PRECISION_SUFFIX[precision]}.engine")


def sidecar_path(engine_path: Path | str) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def check_outputs(engine_path: Path, overwrite: bool, notice: bool = True) -> None:
    """Fail before building when the engine or its sidecar would be clobbered; a sidecar
    whose engine is gone describes nothing and is replaced with a notice."""
    if engine_path.is_dir():
        raise UsageError("--output がフォルダです\n"
                         f"--output {engine_path} is a folder.",
                         "Give a file name ending in .engine, e.g. --output "
                         f"{engine_path / 'model.engine'}.")
    check_writable(engine_path, overwrite, what="Engine file")
    sidecar = sidecar_path(engine_path)
    if sidecar.exists() and not engine_path.exists() and not sidecar.is_dir():
        if notice:
            from pochitrain.console import info

            info(f"replacing {sidecar.name}: its engine {engine_path.name} no longer exists")
        return
    check_writable(sidecar, overwrite, what="Engine metadata file")


def write_engine(engine_path: Path | str, engine_bytes: bytes, meta: dict[str, Any],
                 overwrite: bool) -> None:
    """Write the engine, then its sidecar (with ``engine_sha256``), each atomically. Without
    ``overwrite`` the engine takes its name only if it is still free; when the sidecar cannot
    be written the engine is removed again: an engine never appears without its metadata."""
    engine_path = Path(engine_path)
    check_outputs(engine_path, overwrite, notice=False)  # said when the build started
    meta = dict(meta, engine_sha256=hashlib.sha256(engine_bytes).hexdigest())
    text = json.dumps(meta, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(engine_path, engine_bytes, replace=overwrite, what="Engine file")
    try:
        atomic_write_text(sidecar_path(engine_path), text)
    except BaseException:
        engine_path.unlink(missing_ok=True)
        raise


def bare_engine_metadata(engine_path: Path | str) -> dict[str, Any]:
    """Metadata for an engine without a sidecar (built by the original pochitrain, trtexec...):
    TensorRT assumed, precision unknown, no model metadata (class names and preprocessing then
    come from a config: ``infer-trt ENGINE -c config.py``)."""
    from pochitrain.console import info

    info(f"{Path(engine_path).name} にメタデータファイルがありません / no "
         f"{sidecar_path(engine_path).name} beside the engine: running it as a plain TensorRT "
         "engine (precision unknown).")
    return {"format": None, "backend": "tensorrt", "backend_version": "unknown",
            "precision": "unknown", "pattern": None, "input": {}, "output": {}, "model": None,
            "source_onnx": {}, "engine_sha256": None, "build": {}, "sidecar": False}


def read_engine_metadata(engine_path: Path | str) -> dict[str, Any]:
    """The sidecar of ``engine_path`` as a dict; ModelFileError when missing or malformed."""
    path = sidecar_path(engine_path)
    remedy = ("Re-create the engine with 'pochi convert MODEL.onnx' (it writes the engine and "
              f"{path.name} together), and keep the two files side by side.")
    if not path.is_file():
        raise ModelFileError(
            "エンジンのメタデータがありません\n"
            f"The engine metadata file is missing: {path}", remedy)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError("エンジンのメタデータが正しい JSON ではありません\n"
                             f"The engine metadata file {path} is not valid JSON ({exc}).",
                             remedy) from exc
    if not isinstance(meta, dict) or meta.get("format") != ENGINE_FORMAT:
        raise ModelFileError(
            "pochitrain のエンジンのメタデータではありません\n"
            f"{path} is not pochitrain engine metadata (expected format {ENGINE_FORMAT!r}).",
            remedy)
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelFileError("エンジンのメタデータに不足している項目があります\n"
                             f"The engine metadata {path} lacks: {', '.join(missing)}.", remedy)
    for key, (types, what) in REQUIRED_KEYS.items():
        value = meta[key]
        bad_type = not isinstance(value, types) or isinstance(value, bool)
        if bad_type or (key == "precision" and value not in PRECISION_SUFFIX) or (
                key == "pattern" and value not in (1, 2, 3)):
            raise ModelFileError(
                "エンジンのメタデータの値が正しくありません\n"
                f"The engine metadata {path} has a wrong value for {key!r}: {value!r} "
                f"(expected {what}).", remedy)
    return meta


def engine_matches(engine_path: Path | str, meta: dict[str, Any]) -> bool:
    """True when the engine file's sha256 is the one recorded in ``meta``."""
    from pochitrain.meta import file_sha256

    return file_sha256(engine_path) == meta.get("engine_sha256")
