"""ONNX -> serialized TensorRT engine with a strongly typed network.

The ONNX graph decides the precision (never builder flags); the parsed network's tensor types
are checked so an engine is only built in the precision asked for.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pochitrain.errors import BackendMissingError, BuildError
from pochitrain.tensorrt.backend import Backend
from pochitrain.tensorrt.logger import make_logger
from pochitrain.tensorrt.profile import Profile

if TYPE_CHECKING:  # checked against tensorrt-stubs; TensorRT-RTX has the same API
    import tensorrt

# Layers that do the arithmetic: their output type is the precision the engine computes in.
_COMPUTE_LAYERS = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY")


@dataclass
class BuildResult:
    engine: bytes
    seconds: float
    layer_types: dict[str, int]  # output tensor dtype -> count, over the parsed network
    compute_types: dict[str, int]  # the same for conv / matmul layers only
    quantize_layers: int
    timing_cache: Path | None
    warnings: list[str] = field(default_factory=list)


def _parser_errors(parser: tensorrt.OnnxParser) -> list[str]:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = f"node {err.node()} ({err.node_operator()})" if err.node() >= 0 else "model"
        lines.append(f"{where}: {err.code()}: {err.desc()}")
    return lines


def _dtype_name(dtype: Any) -> str:
    return str(dtype).split(".")[-1]


def network_types(network: tensorrt.INetworkDefinition) -> tuple[Counter[str], Counter[str], int]:
    """Output tensor dtype -> count over all layers, the same for conv / matmul layers only,
    and the number of INT8 (or FP8 / INT4) quantize layers."""
    every: Counter[str] = Counter()
    compute: Counter[str] = Counter()
    quantize = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = _dtype_name(layer.type)
        for j in range(layer.num_outputs):
            name = _dtype_name(layer.get_output(j).dtype)
            every[name] += 1
            if kind in _COMPUTE_LAYERS:
                compute[name] += 1
            if kind == "QUANTIZE" and name in ("INT8", "FP8", "INT4"):
                quantize += 1
    return every, compute, quantize


def check_precision(precision: str, compute: Counter[str], quantize: int) -> None:
    """Refuse to build when the parsed network would not compute in ``precision``."""
    total = sum(compute.values())
    if total == 0:
        return  # no conv/matmul: nothing to judge (not a classifier we know)
    want = {"fp32": "FLOAT", "fp16": "HALF"}.get(precision)
    # int8: Q/DQ feeds the conv/matmul layers, whose outputs stay float
    wrong = total - compute.get(want, 0) if want else 0 if quantize else total
    if wrong:
        raise BuildError(
            "ネットワークが指定した精度で計算されません\n"
            f"The parsed network does not compute in {precision.upper()}: {wrong} of {total} "
            f"convolution/matmul layers have another type ({dict(compute)}, {quantize} INT8 "
            "quantize layers). Refusing to build a different precision than asked.",
            "Use the graph written by the matching pochitrain pass (--fp16 / --int8), or convert "
            "without a precision option for FP32.",
        )


def _require_strong_typing(trt: Any, backend: Backend,
                           network: tensorrt.INetworkDefinition, precision: str) -> None:
    """FP16 / INT8 come from the graph's types: only a strongly typed network keeps them."""
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None and not network.get_flag(strongly) and precision != "fp32":
        raise BackendMissingError(
            "この TensorRT では指定した精度のエンジンを保証できません\n"
            f"{backend.describe()} cannot build a strongly typed network, so a {precision.upper()}"
            " engine cannot be guaranteed.",
            "Install TensorRT 10 or later (pip install \"pochitrain[tensorrt]\"), or TensorRT-RTX.",
        )
    if strongly is None and precision != "fp32" and not backend.is_rtx and backend.major < 11:
        raise BackendMissingError(
            "この TensorRT は strongly typed なネットワークに対応していません\n"
            f"{backend.describe()} has no strongly typed networks; {precision.upper()} from the "
            "ONNX graph would not be honoured.",
            "Install TensorRT 10 or later, or TensorRT-RTX.",
        )


def _parse(trt: Any, backend: Backend, network: tensorrt.INetworkDefinition, logger: Any,
           onnx_path: Path) -> tensorrt.OnnxParser:
    """The parser that filled ``network``: it owns the weights, so keep it until the build."""
    parser: tensorrt.OnnxParser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external weight files (.onnx.data) next to the model
    if not parser.parse_from_file(str(onnx_path)):
        details = _parser_errors(parser) or logger.errors[-5:] or ["(no details)"]
        raise BuildError(
            f"TensorRT の ONNX パーサーが {onnx_path.name} を読めませんでした / The "
            f"{backend.name} ONNX parser rejected {onnx_path.name}:\n  " + "\n  ".join(details),
            "The graph uses an operator or form this TensorRT version does not support: "
            "re-export with another opset (e.g. 17), or simplify the graph (onnxsim).",
        )
    return parser


def _builder_config(trt: Any, builder: tensorrt.Builder, network: tensorrt.INetworkDefinition,
                    profile: Profile, workspace_size: int | None) -> tensorrt.IBuilderConfig:
    """Workspace limit, the batch profile (not for a fixed-shape graph), detailed layer info."""
    config: tensorrt.IBuilderConfig = builder.create_builder_config()
    if workspace_size is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_size)
    if profile.pattern != 3:
        opt: tensorrt.IOptimizationProfile = builder.create_optimization_profile()
        name = network.get_input(0).name
        opt.set_shape(name, trt.Dims(profile.min), trt.Dims(profile.opt), trt.Dims(profile.max))
        config.add_optimization_profile(opt)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    return config


def _load_timing_cache(config: tensorrt.IBuilderConfig, backend: Backend,
                       timing_cache: Path | None) -> Path | None:
    """Give the builder the timing cache file's contents; the path to save it to, or None."""
    if timing_cache is None or not backend.has_timing_cache:
        return None
    data = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        cache = config.create_timing_cache(b"")  # stale/foreign cache: start afresh
        config.set_timing_cache(cache, True)
    return timing_cache


def build_engine(backend: Backend, onnx_path: Path, profile: Profile, precision: str,
                 workspace_size: int | None = None, timing_cache: Path | None = None,
                 status: Any = None) -> BuildResult:
    """Parse ``onnx_path`` into a strongly typed network and build a serialized engine;
    ``status(str)`` shows the current stage."""
    trt = backend.module
    say = status or (lambda _msg: None)
    logger = make_logger(trt)
    builder: tensorrt.Builder = trt.Builder(logger)
    network: tensorrt.INetworkDefinition = builder.create_network(backend.network_flags())
    _require_strong_typing(trt, backend, network, precision)
    say(f"parsing {onnx_path.name}")
    parser = _parse(trt, backend, network, logger, onnx_path)  # noqa: F841 - owns the weights
    every, compute, quantize = network_types(network)
    check_precision(precision, compute, quantize)
    config = _builder_config(trt, builder, network, profile, workspace_size)
    cache_used = _load_timing_cache(config, backend, timing_cache)
    say(f"building {precision.upper()} engine with {backend.describe()}")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise BuildError(
            "エンジンを作成できませんでした\n"
            f"{backend.name} could not build an engine from {onnx_path.name}:\n  "
            + "\n  ".join(logger.errors[-8:] or ["(no error message from the builder)"]),
            "Try a larger --workspace-size, another opset, or FP32; run on the GPU the engine "
            "is meant for.",
        )
    engine = bytes(memoryview(serialized))
    if cache_used is not None:
        from pochitrain.workspace import atomic_write_bytes

        cache_used.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache_used, bytes(memoryview(config.get_timing_cache().serialize())))
    return BuildResult(engine, seconds, dict(every), dict(compute), quantize, cache_used,
                       list(logger.warnings))


def gpu_info() -> dict[str, str] | None:
    """Name and compute capability of GPU 0, when torch sees one; None on CPU-only machines."""
    import os
    import sys

    # no NVIDIA driver: skip importing torch (seconds) just to learn there is no GPU
    if "torch" not in sys.modules and not os.path.exists("/proc/driver/nvidia/version") \
            and sys.platform.startswith("linux"):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
        return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:  # noqa: BLE001 - a broken CUDA setup is "unknown", not a failure
        return None
