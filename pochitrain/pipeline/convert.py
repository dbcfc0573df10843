"""`pochi convert`: ONNX -> TensorRT engine (+ ``<engine>.json`` metadata).

Steps: read the ONNX and its shape pattern -> resolve the optimization profile (spec rule) ->
check every output path -> make the precision graph (``PRECISION_PASSES``: FP16 cast checked
with ONNX Runtime, INT8 Q/DQ calibrated and checked; FP32 is the ONNX itself) -> strongly typed
build -> engine and sidecar written atomically.

Intermediate graphs belong to the engine they were made for: ``<engine stem>.onnx`` /
``<engine stem>_qdq.onnx`` beside the engine (e.g. ``best_fp16.onnx``,
``best_int8_qdq.onnx``), so two engines never share (or overwrite) one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pochitrain.console import info, warn
from pochitrain.errors import ModelFileError, UsageError
from pochitrain.tensorrt.profile import Profile

VERIFY_IMAGES = 64  # images for the FP16 check: enough to see a broken cast, quick on a CPU
PRECISIONS = ("fp32", "fp16", "int8")


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
    int8: Any = None  # pochitrain.onnx.int8.Int8Options (default options when None)
    progress: bool = True

    def __post_init__(self) -> None:
        # str paths from Python callers: everything below works on Path
        for name in ("onnx_path", "output", "timing_cache", "verify_data"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        if self.precision not in PRECISIONS:
            raise UsageError("不明な精度が指定されています\n"
                             f"Unknown precision {self.precision!r}.",
                             "Use --fp16, --int8 or neither (precision='fp32'|'fp16'|'int8').")
        if self.workspace_size is not None and self.workspace_size < 1:
            raise UsageError("--workspace-size には正のバイト数を指定してください\n"
                             "--workspace-size must be a positive number of bytes.",
                             "Example: --workspace-size 1073741824 (1 GiB)")


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


@dataclass
class _Job:
    """What the steps of one conversion share."""

    opts: ConvertOptions
    onnx_info: Any  # onnx.inspect.OnnxInfo
    model: Any  # onnx.ModelProto (weights may be external)
    profile: Profile
    engine_path: Path
    graph_path: Path  # the graph the engine is built from
    say: Callable[[str], None] = print
    wrote_graph: bool = False  # this run gave graph_path its content


def default_timing_cache(backend_name: str, version: str) -> Path:
    """$XDG_CACHE_HOME/pochitrain/timing-<backend>-<version>.cache (~/.cache when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pochitrain" / f"timing-{backend_name}-{version}.cache"


def precision_graph_path(engine_path: Path, precision: str) -> Path | None:
    """The intermediate graph of an engine: None for FP32 (built from the ONNX itself)."""
    if precision == "fp32":
        return None
    stem = engine_path.stem
    if not stem.endswith(f"_{precision}"):
        stem = f"{stem}_{precision}"
    return engine_path.with_name(f"{stem}_qdq.onnx" if precision == "int8" else f"{stem}.onnx")


# ---- precision passes: (job) -> record for the sidecar ---------------------------------------

def _fp16_pass(job: _Job) -> dict[str, Any]:
    import onnx

    from pochitrain.onnx.fp16 import MIN_TOP1_AGREEMENT, compare_with_onnxruntime, convert_to_fp16
    from pochitrain.workspace import atomic_path

    opts = job.opts
    job.say("FP16 pass: casting weights and activations to float16 (float32 input/output)")
    model = job.model
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        model = onnx.load(str(opts.onnx_path))  # external weights are needed for the cast
    fp16, stats = convert_to_fp16(model)
    batch, source = _verification_batch(job)
    threshold = (opts.fp16_min_agreement if opts.fp16_min_agreement is not None
                 else MIN_TOP1_AGREEMENT)
    # checked before it gets its final name, which must still be free
    with atomic_path(job.graph_path, replace=opts.overwrite, what="FP16 ONNX graph") as tmp:
        onnx.save(fp16, str(tmp))
        job.say(f"checking the FP16 graph against FP32 with ONNX Runtime on {source}")
        agreement = compare_with_onnxruntime(opts.onnx_path, tmp, batch, threshold)
    job.wrote_graph = True
    info(f"FP16 check: top-1 agreement with FP32 {agreement.top1_agreement:.1%} on "
         f"{agreement.images} images ({source}), max |logit diff| {agreement.max_abs_diff:.4g} "
         f"(minimum agreement {threshold:.0%})")
    return {"cast": stats, "check": {**agreement.to_dict(), "source": source,
                                     "min_top1_agreement": threshold}}


def _int8_pass(job: _Job) -> dict[str, Any]:
    from pochitrain.onnx.int8 import Int8Options, prepare_int8

    job.say("INT8 pass: calibrating and writing the Q/DQ graph")
    int8 = job.opts.int8 or Int8Options(calib_data=None)
    return prepare_int8(job.opts.onnx_path, job.onnx_info, job.profile.input_shape,
                        job.onnx_info.meta, int8, job.graph_path)


PRECISION_PASSES: dict[str, Callable[[_Job], dict[str, Any]]] = {
    "fp16": _fp16_pass,
    "int8": _int8_pass,
}


def _verification_batch(job: _Job) -> tuple[Any, str]:
    """Real images for the FP16 check (--verify-data, else the run's val data), or random."""
    from pochitrain.onnx.verify import verification_batches
    from pochitrain.preprocess import Preprocess
    from pochitrain.resolve import find_val_data

    h, w = job.profile.input_shape[2:]
    meta = job.onnx_info.meta
    pre = (meta.preprocess if meta is not None else Preprocess.simple(h, w)).resized_to((h, w))
    data = job.opts.verify_data or find_val_data(job.opts.onnx_path)
    if data is None:
        warn("no --verify-data and no val_data_root found near the ONNX: the FP16 check uses "
             "random inputs, which is weaker than real images.")
    batches, source = verification_batches(pre, data, [VERIFY_IMAGES])
    return batches[0], source


# ---- steps --------------------------------------------------------------------------------

def _plan(opts: ConvertOptions) -> _Job:
    """Read the ONNX, resolve the profile and every output path; nothing is written yet."""
    from pochitrain.onnx.inspect import read_onnx
    from pochitrain.tensorrt.engine_file import check_outputs, default_engine_path
    from pochitrain.tensorrt.profile import resolve_profile
    from pochitrain.workspace import check_writable

    onnx_info, model = read_onnx(opts.onnx_path)
    if onnx_info.input_dtype != "float32":
        raise ModelFileError(
            "float32 の ONNX モデルを指定してください\n"
            f"{opts.onnx_path.name}: input {onnx_info.input_name!r} is {onnx_info.input_dtype}; "
            "pochitrain converts float32 ONNX models (the precision passes make FP16/INT8).",
            "Convert the float32 export; use --fp16 / --int8 for lower precision.")
    profile = resolve_profile(onnx_info, opts.input_size, opts.batch_size, opts.batch_range)
    engine_path = opts.output or default_engine_path(opts.onnx_path, opts.precision)
    if engine_path.suffix == ".json" or engine_path.resolve() == opts.onnx_path.resolve():
        raise UsageError("--output が入力ファイルを上書きしてしまいます\n"
                         f"--output {engine_path} would overwrite an input or a sidecar.",
                         "Use a path ending in .engine.")
    check_outputs(engine_path, opts.overwrite)
    graph = precision_graph_path(engine_path, opts.precision)
    if graph is not None and graph.resolve() == opts.onnx_path.resolve():
        raise UsageError("変換後のグラフが入力の ONNX ファイルと同じパスになります\n"
                         f"The {opts.precision.upper()} graph of {engine_path.name} would be "
                         f"{graph.name}, the input ONNX itself.",
                         "Choose another --output name for the engine.")
    if opts.precision == "fp16" and graph is not None:
        check_writable(graph, opts.overwrite, what="FP16 ONNX graph")
    # the INT8 Q/DQ graph doubles as a calibration cache (reused when its key matches)
    return _Job(opts, onnx_info, model, profile, engine_path, graph or opts.onnx_path)


def _timing_cache(opts: ConvertOptions, backend: Any) -> Path | None:
    if opts.no_timing_cache:
        return None
    if not backend.has_timing_cache:
        if opts.timing_cache is not None:
            warn("TensorRT-RTX has no timing cache (its timing-cache calls are no-ops); "
                 "--timing-cache is ignored.")
        return None
    return opts.timing_cache or default_timing_cache(backend.name, backend.version)


def _engine_model_meta(job: _Job) -> dict[str, Any] | None:
    """The model metadata, its preprocessing matched to the engine's H, W (pattern 2 built at
    another --input-size keeps the same steps, rescaled)."""
    meta = job.onnx_info.meta
    if meta is None:
        return None
    hw = (int(job.profile.input_shape[2]), int(job.profile.input_shape[3]))
    from pochitrain.meta import ModelMeta

    return ModelMeta(meta.class_names, meta.preprocess.resized_to(hw), meta.model_name,
                     meta.source).to_dict()


def _build_record(job: _Job, result: Any, precision_record: dict[str, Any] | None
                  ) -> dict[str, Any]:
    opts = job.opts
    return {
        "workspace_size": opts.workspace_size,
        "timing_cache": str(result.timing_cache) if result.timing_cache else None,
        "build_seconds": round(result.seconds, 3),
        "precision_graph": str(job.graph_path.resolve()),
        "options": {
            "input_size": list(opts.input_size) if opts.input_size else None,
            "batch_size": opts.batch_size,
            "batch": list(opts.batch_range) if opts.batch_range else None,
            "backend_choice": opts.backend,
            "strongly_typed": True,
            "network_compute_types": result.compute_types,
            "network_tensor_types": result.layer_types,
            "quantize_layers": result.quantize_layers,
            "fp16": precision_record if opts.precision == "fp16" else None,
        },
    }


def convert(opts: ConvertOptions | str | Path, **options: Any) -> ConvertResult:
    """Build an engine. ``convert("best.onnx", precision="fp16")`` or ``convert(ConvertOptions(...))``;
    keyword ``options`` are ConvertOptions fields."""
    from pochitrain import __version__
    from pochitrain.tensorrt.backend import load_backend
    from pochitrain.tensorrt.build import build_engine, gpu_info
    from pochitrain.tensorrt.engine_file import (
        engine_metadata,
        read_engine_metadata,
        sidecar_path,
        write_engine,
    )
    from pochitrain.workspace import disk_space_guard

    if not isinstance(opts, ConvertOptions):
        unknown = set(options) - {f.name for f in fields(ConvertOptions)}
        if unknown:
            raise UsageError("不明な変換オプションがあります\n"
                             f"Unknown convert option(s): {', '.join(sorted(unknown))}.",
                             "See pochitrain.ConvertOptions for the accepted names.")
        from pochitrain.arguments import file_argument

        opts = ConvertOptions(onnx_path=file_argument("onnx_path", opts, "'model.onnx'"),
                              **options)
    job = _plan(opts)
    backend = load_backend(opts.backend)
    new_graph = opts.precision == "fp16" and not job.graph_path.exists()
    try:
        with _stages(opts.progress) as job.say:
            job.say(f"{opts.onnx_path.name}: input {job.onnx_info.input_name} "
                    f"{job.onnx_info.shape_text()}, pattern {job.profile.pattern}, profile "
                    f"{job.profile.text()}")
            record = None
            if opts.precision != "fp32":
                with disk_space_guard(job.graph_path):  # the pass's scratch files too
                    record = PRECISION_PASSES[opts.precision](job)
            result = build_engine(backend, job.graph_path, job.profile, opts.precision,
                                  opts.workspace_size, _timing_cache(opts, backend),
                                  status=job.say)
        meta = engine_metadata(
            backend=backend, precision=opts.precision, profile=job.profile,
            onnx_info=job.onnx_info, model=_engine_model_meta(job), source_onnx=opts.onnx_path,
            build=_build_record(job, result, record),
            calibration=record if opts.precision == "int8" else None, gpu=gpu_info(),
            version=__version__)
        write_engine(job.engine_path, result.engine, meta, opts.overwrite)
    except BaseException:
        if new_graph and job.wrote_graph:  # a failed run leaves nothing new behind
            job.graph_path.unlink(missing_ok=True)
        raise
    extra = [job.graph_path] if job.graph_path != opts.onnx_path else []
    return ConvertResult(job.engine_path, sidecar_path(job.engine_path),
                         read_engine_metadata(job.engine_path), job.profile,
                         len(result.engine), result.seconds, job.graph_path, extra)


@contextlib.contextmanager
def _stages(enabled: bool) -> Iterator[Callable[[str], None]]:
    """A spinner showing the current stage (nothing when progress is off); each stage is also
    printed as a line, so the log keeps them."""
    if not enabled:
        yield lambda text: None
        return
    from pochitrain.console import make_progress

    with make_progress(True, kind="spinner") as progress:
        task = progress.add_task("starting", total=None)

        def say(text: str) -> None:
            progress.update(task, description=text)
            progress.console.print(f"  {text}", highlight=False)
        yield say
