"""`pochi serve MODEL`: an HTTP inference server (API v1), micro-batched, for any model file."""

from __future__ import annotations

import argparse
import math

from pochitrain.cli.common import (
    add_config,
    add_runtime_options,
    non_negative_float,
    number_arg,
    positive_float,
    positive_int,
)

MAX_PORT = 65535  # as serve.server.MAX_PORT, which is not imported here (start-up time)

DESCRIPTION = """\
Serve a .pth, .onnx or .engine model over HTTP (the original pochitrain's API v1).

  POST /api/v1/predict     JSON (base64 'raw' BGR + shape, or 'jpeg'), a multipart upload of
                           one or more JPEG/PNG/WebP files, or an image body; ?top_k=K
  GET  /api/v1/health, /api/v1/model-info, /api/v1/version, /metrics (Prometheus), /docs

Concurrent requests are gathered into batches of up to --max-batch images, waiting at most
--max-wait-ms for a batch to fill; one worker thread runs the model. When --queue images are
waiting, new requests get 503 with Retry-After; so do bodies beyond --max-inflight-mb, refused
before they are read. A request head or body that stalls for --read-timeout gets 408. SIGTERM
or Ctrl+C: stop accepting, answer the requests in flight (those still running after
--drain-timeout get 503), exit 0. --workers N runs N such server processes on the port (the
kernel spreads connections over them), each with its own model. Needs the serve extra:
pip install "pochitrain[serve]".
See docs/readme_serve.md.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="a .pth checkpoint, .onnx model or TensorRT .engine")
    add_config(parser)
    parser.add_argument("--backend", choices=tuple(BACKEND_NAMES), default=None,
                        help="the original's option: the runtime MODEL is expected to need "
                        "(pytorch, onnx, tensorrt or trt); checked against MODEL's file type, "
                        "which picks the runtime anyway")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=port_number, default=8000,
                        help="port, 1 to 65535 (default: 8000)")
    add_runtime_options(parser, "cpu")
    parser.add_argument("--workers", type=worker_count, default="auto", metavar="N",
                        help="server processes sharing the port, each with its own model, "
                        "batcher and decode threads; auto (default) = 1 where the model runs "
                        "on the CPU, else one per 4 CPU cores, at most 4; /metrics sums them "
                        "all")
    b = parser.add_argument_group("batching and limits")
    b.add_argument("--max-batch", type=positive_int, default=32, metavar="N",
                   help="most images per model call (default: 32; 1 turns batching off)")
    b.add_argument("--max-wait-ms", type=non_negative_float, default=5.0, metavar="T",
                   help="longest wait for a batch to fill after its first image (default: 5)")
    b.add_argument("--queue", type=positive_int, default=512, metavar="N",
                   help="most images accepted and not yet answered; beyond it requests get "
                   "503 + Retry-After (default: 512)")
    b.add_argument("--max-images", type=positive_int, default=64, metavar="N",
                   help="most files in one multipart request (default: 64)")
    b.add_argument("--max-request-pixels", type=positive_int, default=200_000_000, metavar="N",
                   help="most decoded pixels per request, all images together, counted from "
                   "the headers before decoding; beyond it 413 (default: 200000000)")
    b.add_argument("--decode-workers", type=positive_int, default=None, metavar="N",
                   help="threads that decode and preprocess images, per worker (default: "
                   "CPU cores / --workers, at most 16)")
    b.add_argument("--no-access-log", action="store_true",
                   help="do not log one line per request")
    b.add_argument("--pipeline", choices=("auto", "cpu", "gpu"), default="auto",
                   help="input pipeline, as in pochi infer: gpu = nvJPEG decode + "
                   "resize/crop/normalize on the GPU in the model thread (every runtime on "
                   "CUDA); cpu = PIL decode + resize in the decode threads; auto (default) = "
                   "gpu when the model runs on CUDA")
    add_connection_limits(parser)


def add_connection_limits(parser: argparse.ArgumentParser) -> None:
    c = parser.add_argument_group("connections, request bodies and stopping")
    c.add_argument("--max-body-mb", type=megabytes, default=16.0, metavar="MB",
                   help="largest request body; larger ones get 413 (default: 16)")
    c.add_argument("--max-inflight-mb", type=megabytes, default=None, metavar="MB",
                   help="request body bytes being received or held at once, all requests of "
                   "a worker together; a request that does not fit gets 503 busy + "
                   "Retry-After before its body is read (default: --max-body-mb x the "
                   "smaller of --queue and 16)")
    c.add_argument("--max-concurrent", type=positive_int, default=None, metavar="N",
                   help="requests in flight per worker (request head received, not yet "
                   "answered); beyond it 503 busy (default: 1024 or 2 x --queue if more)")
    c.add_argument("--read-timeout", type=positive_float, default=15.0, metavar="S",
                   help="longest wait for a request head, or for the next part of a body; "
                   "then 408 and the connection closes (default: 15)")
    c.add_argument("--drain-timeout", type=seconds, default=30.0, metavar="S",
                   help="on SIGTERM, seconds to let in-flight requests finish; those still "
                   "running then get 503 shutting_down (default: 30; 0: at once)")


def worker_count(text: str) -> int | str:
    """--workers: "auto" or a whole number of 1 or more."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or auto") from None


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 < value <= MAX_PORT:
        raise argparse.ArgumentTypeError(
            f"ポート番号は 1〜{MAX_PORT} の整数です: {text!r}\n"
            f"expected a port number from 1 to {MAX_PORT}, got {text!r}")
    return value


# a size of at least one byte (a smaller one would refuse every body)
megabytes = number_arg(lambda v: v * 1_000_000 >= 1 and math.isfinite(v),
                       "1 バイト以上のサイズ (MB) を指定してください: {text!r}\n"
                       "expected a size in MB of at least 0.000001 (one byte), got {text!r}")
seconds = number_arg(lambda v: 0 <= v < math.inf, "0 以上の秒数を指定してください: {text!r}\n"
                     "expected seconds, 0 or more, got {text!r}")


# --backend name -> the runtime of the model file's type (pochitrain.model.BACKENDS)
BACKEND_NAMES = {"pytorch": "pytorch", "onnx": "onnx", "tensorrt": "tensorrt", "trt": "tensorrt"}


def check_backend(model: str, backend: str | None) -> None:
    """UsageError when ``--backend`` names another runtime than the model file's type."""
    if backend is None:
        return
    from pochitrain.errors import UsageError
    from pochitrain.model import backend_for

    runtime = backend_for(model).runtime
    if BACKEND_NAMES[backend] != runtime:
        raise UsageError(
            f"--backend {backend} ですが, {model} は {runtime} 用のモデルです。\n"
            f"--backend {backend} was given, but {model} is for the {runtime} runtime.",
            f"Use --backend {runtime}, or leave it out: the file type picks the runtime.")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from pochitrain.model import check_model_file
    from pochitrain.serve import require_extra

    check_backend(args.model, getattr(args, "backend", None))
    check_model_file(args.model)  # a mistyped path is told before the server's imports
    require_extra()
    from pochitrain.model import torch_options
    from pochitrain.serve.app import ServeSettings
    from pochitrain.serve.server import ServeOptions
    from pochitrain.serve.workers import auto_workers, serve

    model = Path(args.model)
    workers = (auto_workers(model, args.device, args.providers) if args.workers == "auto"
               else args.workers)
    options = ServeOptions(
        model=model, config=Path(args.config) if args.config else None, host=args.host,
        port=args.port, device=args.device, providers=args.providers, pipeline=args.pipeline,
        torch_options=torch_options(model, args.precision, args.channels_last, False),
        drain_timeout_s=args.drain_timeout, workers=workers)
    settings = ServeSettings(
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue=args.queue,
        max_body_bytes=int(args.max_body_mb * 1_000_000), max_images=args.max_images,
        max_request_pixels=args.max_request_pixels,
        max_inflight_bytes=int((args.max_inflight_mb or 0) * 1_000_000),
        max_requests=args.max_concurrent or 0, read_timeout_s=args.read_timeout,
        decode_workers=args.decode_workers or max(1, min(16, (os.cpu_count() or 1)
                                                         // workers)),
        access_log=not args.no_access_log)
    return serve(options, settings)
