"""FastAPI routes of API v1 over a ``ServeModel``.

``POST /api/v1/predict`` takes (by Content-Type):
  application/json      the original's PredictRequest: one image, base64 ``raw`` BGR + shape,
                        or ``jpeg`` (any JPEG / PNG / WebP bytes)       -> PredictResponse
  multipart/form-data   one or more files in ``files`` (JPEG / PNG / WebP)
                                                                        -> BatchPredictResponse
  image/jpeg|png|webp   the image file as the whole body               -> PredictResponse
``top_k`` as a query parameter (or a JSON / form field). ``GET /api/v1/health``,
``/api/v1/model-info``, ``/api/v1/version``, ``/metrics``, OpenAPI docs at ``/docs``.

On the event loop only HTTP and bookkeeping run: JSON / base64 parsing, decoding and
preprocessing go to a thread pool, the model to the batcher's worker thread.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from pochitrain.serve import schemas
from pochitrain.serve.batcher import Batcher
from pochitrain.serve.decode import (
    ENCODED_FORMATS,
    GENERIC_TYPES,
    IMAGE_TYPES,
    BadInput,
    Payload,
    b64decode,
    check_part_type,
    media_type,
    raw_array,
)
from pochitrain.serve.metrics import Metrics
from pochitrain.serve.middleware import LimitAndLog

PREFIX = "/api/v1"


@dataclass
class ServeSettings:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    queue: int = 512  # images admitted (decoding, queued or in the model) at most
    max_body_bytes: int = 16 * 1024 * 1024
    max_images: int = 64  # images per request
    decode_workers: int = 4
    retry_after_s: int = 1
    access_log: bool = True


def create_app(model: Any, settings: ServeSettings) -> FastAPI:
    """The app; its lifespan starts the decode pool and the batcher and drains them."""
    from pochitrain import __version__

    metrics = Metrics(lambda: float(batcher.depth))
    # A shared model (``--shared-model``) gathers and counts the batches itself: here they
    # are sent as soon as the previous one is answered.
    remote = getattr(model, "remote", False)
    batcher = Batcher(model.run_batch, max_batch=settings.max_batch,
                      max_wait_s=0.0 if remote else settings.max_wait_ms / 1000.0,
                      queue_limit=settings.queue,
                      on_batch=None if remote else metrics.observe_batch)
    pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="pochi-decode")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        batcher.start()
        try:
            yield
        finally:  # uvicorn has let in-flight requests finish: drain what is left
            await asyncio.get_running_loop().run_in_executor(None, batcher.stop, 60.0)
            pool.shutdown(wait=True)

    app = FastAPI(title="pochitrain serve", version=schemas.API_VERSION, lifespan=lifespan,
                  description="Image classification over HTTP (API v1 of pochitrain).")
    app.state.batcher = batcher
    routes = {f"{PREFIX}/predict", f"{PREFIX}/health", f"{PREFIX}/model-info",
              f"{PREFIX}/version", "/metrics", "/docs", "/openapi.json"}
    app.add_middleware(LimitAndLog, max_body=settings.max_body_bytes, metrics=metrics,
                       routes=routes, log=settings.access_log)

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_invalid(exc.errors()).body(), status_code=422)

    async def in_pool(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def prepare_json(body: bytes) -> tuple[Payload, int | None]:
        """JSON body -> (payload, top_k); runs in the pool (base64 of big images)."""
        from pydantic import ValidationError

        try:
            req = schemas.PredictRequest.model_validate_json(body)
        except ValidationError as exc:
            raise _invalid(exc.errors()) from None
        data = b64decode(req.image_data)
        if req.format in ENCODED_FORMATS:
            return Payload("image_data", data=data), req.top_k
        return Payload("image_data", array=raw_array(data, req.shape, req.dtype)), req.top_k

    async def read_payloads(request: Request) -> tuple[list[Payload], int | None, bool]:
        """(payloads, top_k from the body, single-image response?)"""
        kind = media_type(request.headers.get("content-type"))
        if kind == "application/json":
            payload, k = await in_pool(prepare_json, await request.body())
            return [payload], k, True
        if kind == "multipart/form-data":
            return await _multipart(request, settings.max_images) + (False,)
        if kind in IMAGE_TYPES or kind in GENERIC_TYPES[1:]:
            return [Payload("body", data=await request.body())], None, True
        raise BadInput(415, "unsupported_media_type",
                       f"対応していないメディアタイプです: {kind or '(なし)'}",
                       f"Unsupported Content-Type {kind or '(none)'!r}: send application/json "
                       "(API v1), multipart/form-data (files) or an image/jpeg, image/png or "
                       "image/webp body.")

    @app.post(f"{PREFIX}/predict", response_model=schemas.PredictResponse,
              responses={200: {"model": schemas.BatchPredictResponse,
                               "description": "PredictResponse for JSON / image bodies, "
                               "BatchPredictResponse for multipart uploads"},
                         **{s: {"model": schemas.ErrorBody} for s in (400, 413, 415, 422, 503)}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": schemas.PredictRequest.model_json_schema()},
                  "multipart/form-data": {"schema": schemas.MULTIPART_SCHEMA},
                  "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}})
    async def predict(request: Request,
                      top_k: int | None = Query(None, ge=1, description="k best classes "
                                                "to return (default 1)")) -> Response:
        start = time.perf_counter()
        payloads, body_k, single = await read_payloads(request)
        k = min(top_k or body_k or 1, len(model.class_names))
        if len(payloads) > settings.queue:
            raise BadInput(413, "too_many_images",
                           f"画像が多すぎます ({len(payloads)} 枚、上限 {settings.queue} 枚)。",
                           f"{len(payloads)} images in one request, more than the queue of "
                           f"{settings.queue}: send fewer per request.")
        if not batcher.admit(len(payloads)):
            metrics.rejected.inc()
            return JSONResponse(_queue_full(settings.queue), status_code=503,
                                headers={"Retry-After": str(settings.retry_after_s)})
        metrics.queued(len(payloads))
        try:
            if len(payloads) == 1:  # the common case, without gather's extra future
                prepared = [await in_pool(model.prepare, payloads[0])]
            else:
                prepared = await asyncio.gather(*(in_pool(model.prepare, p) for p in payloads))
            rows = await batcher.submit(list(prepared))
        finally:
            batcher.release(len(payloads))
            metrics.queued(-len(payloads))
        for row in rows:
            if isinstance(row, BadInput):
                raise row
            if isinstance(row, BaseException):
                return JSONResponse(_model_failed(row), status_code=500)
        preds = [_prediction(row, k, model.class_names) for row in rows]
        ms = round((time.perf_counter() - start) * 1000.0, 3)
        if single:
            return JSONResponse({**preds[0], "e2e_time_ms": ms, "backend": model.runtime})
        for pred, payload in zip(preds, payloads):
            pred["filename"] = payload.name
        return JSONResponse({"predictions": preds, "count": len(preds), "e2e_time_ms": ms,
                             "backend": model.runtime})

    @app.get(f"{PREFIX}/health", response_model=schemas.Health)
    async def health() -> dict[str, Any]:
        return {"status": "healthy", "model_loaded": True, "backend": model.runtime}

    @app.get(f"{PREFIX}/model-info", response_model=schemas.ModelInfo)
    async def model_info() -> dict[str, Any]:
        return {**model.info(), "max_batch": settings.max_batch,
                "max_wait_ms": settings.max_wait_ms, "queue": settings.queue}

    @app.get(f"{PREFIX}/version", response_model=schemas.Version)
    async def version() -> dict[str, Any]:
        return {"pochitrain_version": __version__, "api_version": schemas.API_VERSION,
                "backend_versions": model.backend_versions()}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app


async def _multipart(request: Request, max_images: int) -> tuple[list[Payload], int | None]:
    from pochitrain.serve.multipart import parse

    parts = parse(await request.body(), request.headers.get("content-type", ""),
                  max_files=max_images, max_fields=16)
    payloads: list[Payload] = []
    top_k: int | None = None
    for part in parts:
        if part.filename is not None:
            name = part.filename or part.name
            check_part_type(part.content_type, name)
            payloads.append(Payload(name, data=part.data))
        elif part.name == "top_k":
            value = part.data.decode("utf-8", "replace")
            try:
                top_k = int(value)
            except ValueError:
                raise BadInput(422, "bad_top_k", f"top_k が整数ではありません: {value!r}",
                               f"top_k must be a whole number, got {value!r}.") from None
            if top_k < 1:
                raise BadInput(422, "bad_top_k", "top_k は 1 以上にしてください。",
                               f"top_k must be 1 or more, got {top_k}.")
    if not payloads:
        raise BadInput(422, "no_files", "画像ファイルがありません。",
                       "The multipart body has no file: send images in the 'files' field.")
    return payloads, top_k


def _prediction(row: np.ndarray, k: int, names: list[str]) -> dict[str, Any]:
    order = np.argsort(-row, kind="stable")[:k]
    best = int(order[0])
    return {"class_id": best, "class_name": names[best], "confidence": float(row[best]),
            "probabilities": [float(p) for p in row],
            "top_k": [{"class_id": int(i), "class_name": names[int(i)],
                       "probability": float(row[int(i)])} for i in order]}


def _invalid(errors: Any) -> BadInput:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', '')}")
    text = "; ".join(parts)
    return BadInput(422, "invalid_request", f"リクエストの内容が正しくありません: {text}",
                    f"The request is not valid: {text}")


def _queue_full(limit: int) -> dict[str, str]:
    return {"detail": f"サーバーが混み合っています (待ち行列 {limit} 枚が満杯)。しばらくして"
                      f"再送してください。\nThe server is busy: its queue of {limit} images is "
                      "full. Retry after the Retry-After seconds.",
            "error": "queue_full"}


def _model_failed(exc: BaseException) -> dict[str, str]:
    message = getattr(exc, "message", None) or str(exc)
    return {"detail": f"推論中にエラーが発生しました。\nInference failed: {message}",
            "error": "inference_failed"}
