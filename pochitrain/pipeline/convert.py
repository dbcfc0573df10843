"""`pochi convert`: ONNX -> TensorRT engine (+ ``<engine>.json`` metadata).

Steps: read the ONNX and its shape pattern -> resolve the optimization profile (spec rule) ->
make the precision graph (FP32: the ONNX itself; FP16: cast pass checked with ONNX Runtime;
INT8: Q/DQ pass) -> strongly typed build -> engine and sidecar written atomically.
Every output is checked for clobbering before any work starts.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pochitrain.console import info, warn
from pochitrain.errors import ModelFileError, UsageError
from pochitrain.tensorrt.profile import Profile

VERIFY_IMAGES = 64  # images for the FP16 check: enough to see a broken cast, quick on a CPU


@dataclass
class ConvertOptions:
    onnx_path: Path
    precision: str = "fp32"  # "fp32" | "fp16" | "int8"
    input_size: tuple[int, int] | None = None
    output: Path | None = None
    overwrite: bool = False
    workspace_size: int | None = None
    backend: str = "auto"
    batch_size: int | None = None
    batch_range: tuple[int, int, int] | None = None
    timing_cache: Path | None = None  # None: the default cache; see no_timing_cache
    no_timing_cache: bool = False
    verify_data: Path | None = None
    fp16_min_agreement: float | None = None
    int8: Any = None  # pochitrain.onnx.int8.Int8Options
    progress: bool = True


@dataclass
class ConvertResult:
    engine_path: Path
    metadata_path: Path
    metadata: dict[str, Any]
    profile: Profile
    engine_size: int
    build_seconds: float
    precision_graph: Path
    extra_files: list[Path] = field(default_factory=list)


def default_timing_cache(backend_name: str, version: str) -> Path:
    """$XDG_CACHE_HOME/pochitrain/timing-<backend>-<version>.cache (~/.cache when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pochitrain" / f"timing-{backend_name}-{version}.cache"


class _Stages:
    """A rich spinner with the current stage (or plain lines when progress is off)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> _Stages:  # noqa: PYI034
        if self.enabled:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            from pochitrain.console import console

            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                     TimeElapsedColumn(), console=console(), transient=True)
            self.progress.__enter__()
            self.task = self.progress.add_task("starting", total=None)
        return self

    def __call__(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=text)
            self.progress.console.print(f"  {text}", highlight=False)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)


def _check_free(path: Path, overwrite: bool, what: str) -> None:
    from pochitrain.workspace import check_writable

    check_writable(path, overwrite, what=what)


def _verification_batch(opts: ConvertOptions, info_: Any, profile: Profile) -> tuple[Any, str]:
    """Real images for the FP16 check (--verify-data, else the run's val data), or random."""
    from pochitrain.config import find_val_data
    from pochitrain.onnx.verify import verification_batches
    from pochitrain.preprocess import Preprocess

    h, w = profile.input_shape[2:]
    meta = info_.meta
    pre = meta.preprocess if meta is not None else Preprocess.simple(h, w)
    pre = pre.resized_to((h, w))
    data = opts.verify_data or find_val_data(opts.onnx_path)
    if data is None:
        warn("no --verify-data and no val_data_root found near the ONNX: the FP16 check uses "
             "random inputs, which is weaker than real images.")
    batches, source = verification_batches(pre, data, [VERIFY_IMAGES])
    return batches[0], source


def _make_fp16_graph(opts: ConvertOptions, info_: Any, model: Any, profile: Profile,
                     path: Path, say: Any) -> dict[str, Any]:
    import onnx

    from pochitrain.onnx.fp16 import MIN_TOP1_AGREEMENT, compare_with_onnxruntime, convert_to_fp16
    from pochitrain.workspace import atomic_path

    say("FP16 pass: casting weights and activations to float16 (float32 input/output)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        model = onnx.load(str(opts.onnx_path))  # external weights are needed for the cast
    fp16, stats = convert_to_fp16(model)
    with atomic_path(path) as tmp:
        onnx.save(fp16, str(tmp))
    batch, source = _verification_batch(opts, info_, profile)
    say(f"checking the FP16 graph against FP32 with ONNX Runtime on {source}")
    threshold = opts.fp16_min_agreement if opts.fp16_min_agreement is not None \
        else MIN_TOP1_AGREEMENT
    static_batch = profile.input_shape[0] if profile.pattern == 3 else 1
    agreement = compare_with_onnxruntime(opts.onnx_path, path, batch, threshold,
                                         batch_size=static_batch)
    info(f"FP16 check: top-1 agreement with FP32 {agreement.top1_agreement:.1%} on "
         f"{agreement.images} images ({source}), max |logit diff| {agreement.max_abs_diff:.4g} "
         f"(minimum agreement {threshold:.0%})")
    return {"cast": stats, "check": {**agreement.to_dict(), "source": source,
                                     "min_top1_agreement": threshold}}


def _make_int8_graph(opts: ConvertOptions, info_: Any, profile: Profile, path: Path,
                     say: Any) -> dict[str, Any]:
    try:
        from pochitrain.onnx.int8 import prepare_int8
    except ImportError as exc:
        raise UsageError("--int8 is not implemented yet in this build of pochitrain.",
                         "Use FP32 (default) or --fp16 for now.") from exc
    say("INT8 pass: calibrating and writing the Q/DQ graph")
    return prepare_int8(opts.onnx_path, info_, profile.input_shape, info_.meta, opts.int8, path)


def convert(opts: ConvertOptions) -> ConvertResult:
    from pochitrain import __version__
    from pochitrain.meta import file_sha256
    from pochitrain.onnx.inspect import read_onnx
    from pochitrain.tensorrt.backend import load_backend
    from pochitrain.tensorrt.build import build_engine, gpu_info
    from pochitrain.tensorrt.engine_file import (
        check_outputs,
        default_engine_path,
        read_engine_metadata,
        sidecar_path,
        write_engine,
    )
    from pochitrain.tensorrt.profile import resolve_profile

    precision = opts.precision
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"Unknown precision {precision!r}.", "Use --fp16, --int8 or neither.")
    if opts.workspace_size is not None and opts.workspace_size < 1:
        raise UsageError("--workspace-size must be a positive number of bytes.",
                         "Example: --workspace-size 1073741824 (1 GiB)")
    info_, model = read_onnx(opts.onnx_path)
    if info_.input_dtype != "float32":
        raise ModelFileError(
            f"{opts.onnx_path.name}: input {info_.input_name!r} is {info_.input_dtype}; "
            "pochitrain converts float32 ONNX models (the precision passes make FP16/INT8).",
            "Convert the float32 export; use --fp16 / --int8 for lower precision.")
    profile = resolve_profile(info_, opts.input_size, opts.batch_size, opts.batch_range)

    engine_path = Path(opts.output) if opts.output else default_engine_path(opts.onnx_path,
                                                                            precision)
    if engine_path.suffix == ".json" or engine_path.resolve() == opts.onnx_path.resolve():
        raise UsageError(f"--output {engine_path} would overwrite an input or a sidecar.",
                         "Use a path ending in .engine.")
    check_outputs(engine_path, opts.overwrite)
    graph_path = opts.onnx_path
    if precision == "fp16":
        graph_path = engine_path.with_name(f"{opts.onnx_path.stem}_fp16.onnx")
    elif precision == "int8":
        graph_path = opts.onnx_path.with_name(f"{opts.onnx_path.stem}_int8_qdq.onnx")
    if precision == "fp16":
        _check_free(graph_path, opts.overwrite, "FP16 ONNX graph")
    # the INT8 Q/DQ graph is also a calibration cache (reused when its key matches): the INT8
    # pass owns it, and it is kept when the build fails

    backend = load_backend(opts.backend)
    cache: Path | None = None
    if not opts.no_timing_cache:
        cache = opts.timing_cache or default_timing_cache(backend.name, backend.version)
    if cache is not None and not backend.has_timing_cache:
        if opts.timing_cache is not None:
            warn("TensorRT-RTX has no timing cache (its timing-cache calls are no-ops); "
                 "--timing-cache is ignored.")
        cache = None

    created = precision == "fp16" and not graph_path.exists()
    try:
        with _Stages(opts.progress) as say:
            say(f"{opts.onnx_path.name}: input {info_.input_name} {info_.shape_text()}, "
                f"pattern {profile.pattern}, profile {profile.text()}")
            precision_record: dict[str, Any] | None = None
            calibration = None
            if precision == "fp16":
                precision_record = _make_fp16_graph(opts, info_, model, profile, graph_path, say)
            elif precision == "int8":
                calibration = _make_int8_graph(opts, info_, profile, graph_path, say)
            result = build_engine(backend, graph_path, profile, precision, opts.workspace_size,
                                  cache, status=say)
    except BaseException:
        if created:
            graph_path.unlink(missing_ok=True)  # a failed run leaves nothing new behind
        raise

    meta: dict[str, Any] = {
        "format": "pochitrain-engine-v1",
        "backend": backend.name,
        "backend_version": backend.version,
        "precision": precision,
        "pattern": profile.pattern,
        "input": {"name": info_.input_name, "dtype": "float32",
                  "onnx_shape": list(info_.input_shape), "profile": profile.to_dict()},
        "output": {"name": info_.output_name, "dtype": "float32",
                   "onnx_shape": list(info_.output_shape)},
        "model": info_.meta.to_dict() if info_.meta is not None else None,
        "source_onnx": {"path": str(opts.onnx_path.resolve()),
                        "sha256": file_sha256(opts.onnx_path)},
        "build": {
            "workspace_size": opts.workspace_size,
            "timing_cache": str(result.timing_cache) if result.timing_cache else None,
            "build_seconds": round(result.seconds, 3),
            "precision_graph": str(graph_path.resolve()),
            "options": {
                "input_size": list(opts.input_size) if opts.input_size else None,
                "batch_size": opts.batch_size,
                "batch": list(opts.batch_range) if opts.batch_range else None,
                "backend_choice": opts.backend,
                "strongly_typed": True,
                "network_compute_types": result.compute_types,
                "network_tensor_types": result.layer_types,
                "quantize_layers": result.quantize_layers,
                "fp16": precision_record,
            },
        },
        "calibration": calibration,
        "gpu": gpu_info(),
        "created": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "pochitrain_version": __version__,
    }
    if profile.pattern == 3:
        meta["input"]["static_shape"] = list(profile.input_shape)
    try:
        write_engine(engine_path, result.engine, meta, opts.overwrite)
    except BaseException:
        if created:
            graph_path.unlink(missing_ok=True)
        raise
    written = read_engine_metadata(engine_path)
    return ConvertResult(engine_path, sidecar_path(engine_path), written, profile,
                         len(result.engine), result.seconds, graph_path,
                         [graph_path] if graph_path != opts.onnx_path else [])
