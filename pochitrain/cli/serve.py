"""`pochi serve MODEL`: an HTTP inference server (API v1), micro-batched, for any model file."""

from __future__ import annotations

import argparse

from pochitrain.cli.common import add_config, non_negative_float, positive_int

DESCRIPTION = """\
Serve a .pth, .onnx or .engine model over HTTP (the original pochitrain's API v1).

  POST /api/v1/predict     JSON (base64 'raw' BGR + shape, or 'jpeg'), a multipart upload of
                           one or more JPEG/PNG/WebP files, or an image body; ?top_k=K
  GET  /api/v1/health, /api/v1/model-info, /api/v1/version, /metrics (Prometheus), /docs

Concurrent requests are gathered into batches of up to --max-batch images, waiting at most
--max-wait-ms for a batch to fill; one worker thread runs the model. When --queue images are
waiting, new requests get 503 with Retry-After. SIGTERM or Ctrl+C: stop accepting, answer the
requests in flight, exit 0. --workers N runs N such server processes on the port (the
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
    parser.add_argument("--port", type=positive_int, default=8000, help="port (default: 8000)")
    parser.add_argument("--device", default="auto",
                        help="PyTorch only: auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--providers", nargs="+", default=None, metavar="EP",
                        help="ONNX only: execution providers, e.g. cpu, cuda, tensorrt "
                        "(default: cpu)")
    parser.add_argument("--workers", type=positive_int, default=1, metavar="N",
                        help="server processes sharing the port, each with its own model, "
                        "batcher and decode threads (default: 1); /metrics sums them all")
    b = parser.add_argument_group("batching and limits")
    b.add_argument("--max-batch", type=positive_int, default=32, metavar="N",
                   help="most images per model call (default: 32; 1 turns batching off)")
    b.add_argument("--max-wait-ms", type=non_negative_float, default=5.0, metavar="T",
                   help="longest wait for a batch to fill after its first image (default: 5)")
    b.add_argument("--queue", type=positive_int, default=512, metavar="N",
                   help="most images accepted and not yet answered; beyond it requests get "
                   "503 + Retry-After (default: 512)")
    b.add_argument("--max-body-mb", type=non_negative_float, default=16.0, metavar="MB",
                   help="largest request body; larger ones get 413 (default: 16)")
    b.add_argument("--max-images", type=positive_int, default=64, metavar="N",
                   help="most files in one multipart request (default: 64)")
    b.add_argument("--max-request-pixels", type=positive_int, default=200_000_000, metavar="N",
                   help="most decoded pixels per request, all images together, counted from "
                   "the headers before decoding; beyond it 413 (default: 200000000)")
    b.add_argument("--decode-workers", type=positive_int, default=None, metavar="N",
                   help="threads that decode and preprocess images, per worker (default: "
                   "CPU cores / --workers, at most 16)")
    b.add_argument("--drain-timeout", type=non_negative_float, default=30.0, metavar="S",
                   help="on SIGTERM, seconds to let in-flight requests finish (default: 30)")
    b.add_argument("--no-access-log", action="store_true",
                   help="do not log one line per request")
    b.add_argument("--pipeline", choices=("auto", "cpu", "gpu"), default="auto",
                   help="input pipeline, as in pochi infer: gpu = nvJPEG decode + "
                   "resize/crop/normalize on the GPU in the model thread (every runtime on "
                   "CUDA); cpu = PIL decode + resize in the decode threads; auto (default) = "
                   "gpu when the model runs on CUDA")
    gpu = parser.add_argument_group("PyTorch on a GPU (.pth only)")
    gpu.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                     help="autocast precision of the model call on CUDA (default: fp32)")
    gpu.add_argument("--channels-last", action="store_true",
                     help="run the model in channels_last (NHWC) memory layout")


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

    from pochitrain.serve import require_extra

    check_backend(args.model, getattr(args, "backend", None))
    require_extra()
    from pochitrain.pipeline.infer import torch_options
    from pochitrain.serve.app import ServeSettings
    from pochitrain.serve.server import ServeOptions
    from pochitrain.serve.workers import serve

    model = Path(args.model)
    options = ServeOptions(
        model=model, config=Path(args.config) if args.config else None, host=args.host,
        port=args.port, device=args.device, providers=args.providers, pipeline=args.pipeline,
        torch_options=torch_options(model, args.precision, args.channels_last, False),
        drain_timeout_s=args.drain_timeout, workers=args.workers)
    settings = ServeSettings(
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue=args.queue,
        max_body_bytes=int(args.max_body_mb * 1_000_000), max_images=args.max_images,
        max_request_pixels=args.max_request_pixels,
        decode_workers=args.decode_workers or max(1, min(16, (os.cpu_count() or 1)
                                                         // args.workers)),
        access_log=not args.no_access_log)
    return serve(options, settings)
