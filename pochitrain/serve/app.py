"""FastAPI routes of API v1 over a served model.

``POST /api/v1/predict`` takes (by Content-Type):
  application/json      the original's PredictRequest: one image, base64 ``raw`` BGR + shape,
                        or ``jpeg`` (any JPEG / PNG / WebP bytes)       -> PredictResponse
  multipart/form-data   one or more files in ``files`` (JPEG / PNG / WebP)
                                                                        -> BatchPredictResponse
  image/jpeg|png|webp   the image file as the whole body               -> PredictResponse
``top_k`` as a query parameter (or a JSON / form field). ``GET /api/v1/health``,
``/api/v1/model-info``, ``/api/v1/version``, ``/metrics``, ``/openapi.json`` and a
self-contained page describing it at ``/docs`` (no CDN assets: it works offline).

On the event loop only HTTP and bookkeeping run: JSON / base64 parsing, decoding and
preprocessing go to a thread pool, the model to the batcher's worker thread. A request's
pixels are counted from the image headers before anything is decoded (413 over
``max_request_pixels``), and one request takes at most half the decode threads.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from pochitrain.serve import schemas
from pochitrain.serve.batcher import Batcher, Stopping
from pochitrain.serve.decode import (
    ENCODED_FORMATS,
    GENERIC_TYPES,
    IMAGE_TYPES,
    BadInput,
    Payload,
    b64decode,
    check_request_pixels,
    media_type,
    raw_array,
)
from pochitrain.serve.metrics import Metrics
from pochitrain.serve.middleware import LimitAndLog, busy, shutting_down
from pochitrain.serve.multipart import read_form
from pochitrain.serve.schemas import ServeSettings

if TYPE_CHECKING:
    from pochitrain.serve.model import ServeModel

PREFIX = "/api/v1"
PREDICT_PATH = f"{PREFIX}/predict"
STOP_WAIT_S = 1.0  # at shutdown, for a model call still running after the drain
UTF8_BOM = b"\xef\xbb\xbf"
INLINE_BYTES = 1 << 20  # bodies / images up to this size are parsed on the event loop
MAX_ECHO_CHARS, MAX_ECHO_ITEMS, MAX_ECHO_DEPTH = 200, 20, 4  # of the input a 422 echoes
ROUTES = {PREDICT_PATH, f"{PREFIX}/health", f"{PREFIX}/model-info",
          f"{PREFIX}/version", "/metrics", "/docs", "/openapi.json"}


def create_app(model: ServeModel, settings: ServeSettings) -> FastAPI:
    """The app; its lifespan starts the decode pool and the batcher and drains them."""
    metrics = Metrics(lambda: float(batcher.depth))
    batcher = Batcher(model.run_batch, max_batch=settings.max_batch,
                      max_wait_s=settings.max_wait_ms / 1000.0, queue_limit=settings.queue,
                      on_batch=metrics.observe_batch)
    pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="pochi-decode")
    predict = Predict(model, settings, batcher, metrics, pool)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:  # in-flight requests are answered (or cut): a later one gets 503
            predict.stopping = True
            await asyncio.to_thread(batcher.stop, STOP_WAIT_S)
            pool.shutdown(wait=True, cancel_futures=True)

    # /docs is our own page (schemas.docs_page): Swagger UI and ReDoc load from a CDN
    app = FastAPI(title="pochitrain serve", version=schemas.API_VERSION, lifespan=lifespan,
                  description="Image classification over HTTP (API v1 of pochitrain).",
                  docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.add_middleware(FastPredict, predict=predict)  # added first: inside LimitAndLog
    app.add_middleware(LimitAndLog, settings=settings, metrics=metrics, routes=ROUTES)
    add_error_handlers(app)
    add_predict_route(app, predict)
    add_info_routes(app, model, settings, metrics)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """BadInput as JSON ``{"detail": ja + en, "error"}``; a 422 as the original (FastAPI's
    default) wrote it, ``detail`` a list of ``{type, loc, msg, ...}``, with ``message``
    (ja + en) and ``error`` added."""
    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return refusal(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(unprocessable_body(_invalid(exc.errors())), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def routing(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code not in (404, 405):  # nothing else is raised by routing
            return JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)
        where = f"{request.method} {request.url.path}"
        body = ({"detail": f"このパスはありません: {where}\nNo endpoint at {where}: the API's "
                 "paths are listed at /docs.", "error": "not_found"} if exc.status_code == 404
                else {"detail": f"このパスでは使えないメソッドです: {where}\n{where} is not "
                      f"allowed (allowed: {(exc.headers or {}).get('Allow', '-')}): see /docs.",
                      "error": "method_not_allowed"})
        if request.method == "HEAD":
            return Response(status_code=exc.status_code, headers=exc.headers)
        return JSONResponse(body, exc.status_code, exc.headers)


def refusal(exc: BadInput) -> JSONResponse:
    """The answer to a refused request."""
    body = unprocessable_body(exc) if exc.status == 422 else exc.body()
    return JSONResponse(body, exc.status, exc.headers)


def unprocessable_body(exc: BadInput) -> dict[str, Any]:
    """The original's 422 body (FastAPI's: ``detail`` lists the errors), plus ours."""
    errors = exc.errors  # pydantic's, or one entry in FastAPI's shape for our own checks
    if errors is None:
        errors = [{"type": exc.code, "loc": ["body"], "msg": exc.en, "input": None}]
    return {"detail": json_safe(errors), "message": str(exc), "error": exc.code}


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` (pydantic's errors, which echo the input) as plain JSON: NaN / Infinity and
    bytes that are not UTF-8 as text, long strings and deep or long containers cut short,
    so a 422 never fails to encode (a 500) nor echoes a whole body back."""
    if depth > MAX_ECHO_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in list(value.items())[:MAX_ECHO_ITEMS]}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value[:MAX_ECHO_ITEMS]]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[:MAX_ECHO_CHARS]).decode("utf-8", "replace")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "..."


@dataclass
class Predict:
    """``POST /predict``: payloads -> decode pool -> batcher -> JSON answer."""

    model: ServeModel
    settings: ServeSettings
    batcher: Batcher
    metrics: Metrics
    pool: ThreadPoolExecutor
    stopping: bool = False  # the lifespan ended: the pool and the batcher take no more work

    async def in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.stopping:
            raise Stopping("server stopping")
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def read_payloads(self, request: Request) -> tuple[list[Payload], int | None, bool]:
        """(payloads, top_k from the body, single-image response?)"""
        encoding = media_type(request.headers.get("content-encoding"))
        if encoding not in ("", "identity"):  # its bytes would be read as JSON or an image
            raise BadInput(415, "unsupported_media_type",
                           f"圧縮された本文には対応していません: Content-Encoding {encoding}",
                           f"Content-Encoding {encoding!r} is not supported: send the body "
                           "uncompressed (images are compressed already).")
        kind = media_type(request.headers.get("content-type"))
        if kind == "application/json":
            body = await request.body()
            # a photo's JSON parses in microseconds: a pool hop would cost more than that
            payload, k = (_prepare_json(body) if len(body) <= INLINE_BYTES
                          else await self.in_pool(_prepare_json, body))
            return [payload], k, True
        if kind == "multipart/form-data":  # parsed off the event loop: a large body takes time
            payloads, k = await asyncio.to_thread(read_form, await request.body(),
                                                  request.headers["content-type"],
                                                  max_files=self.settings.max_images)
            return payloads, k, False
        if kind in IMAGE_TYPES or kind in GENERIC_TYPES[1:]:
            return [Payload("body", data=await request.body())], None, True
        raise BadInput(415, "unsupported_media_type",
                       f"対応していないメディアタイプです: {kind or '(なし)'}",
                       f"Unsupported Content-Type {kind or '(none)'!r}: send application/json "
                       "(API v1), multipart/form-data (files) or an image/jpeg, image/png or "
                       "image/webp body.")

    async def classify(self, payloads: list[Payload]) -> list[Any]:
        """One result per payload: a row or an exception."""
        queue = self.settings.queue
        if len(payloads) > queue:
            raise BadInput(413, "too_many_images",
                           f"画像が多すぎます ({len(payloads)} 枚、上限 {queue} 枚)。",
                           f"{len(payloads)} images in one request, more than the queue of "
                           f"{queue}: send fewer per request.")
        if len(payloads) > 1:  # headers read off the decode pool, which may be busy
            await asyncio.to_thread(check_request_pixels, payloads,
                                    self.settings.max_request_pixels)
        if not self.batcher.admit(len(payloads)):
            self.metrics.rejected.inc()
            raise busy("queue_full", f"待ち行列 {queue} 枚が満杯",
                       f"its queue of {queue} images is full", self.settings.retry_after_s)
        self.metrics.queued(len(payloads))
        try:
            return await self.batcher.submit(await self.prepare(payloads))
        finally:
            self.batcher.release(len(payloads))
            self.metrics.queued(-len(payloads))

    async def prepare(self, payloads: list[Payload]) -> list[Any]:
        """Every payload decoded and preprocessed, in order. At most half the decode threads
        work for one request at a time, so another request's images never queue behind all
        of a large request's images; once one image fails, the rest are not decoded."""
        if len(payloads) == 1:  # the common case: its pixels checked in the same pool task
            payload = payloads[0]
            encoded = (self.model.still_encoded(payload)
                       if len(payload.data or b"") <= INLINE_BYTES else None)
            if encoded is not None:  # nothing to decode here: no pool hop
                check_request_pixels([payload], self.settings.max_request_pixels)
                return [encoded]
            return [await self.in_pool(self.prepare_one, payload)]
        share = asyncio.Semaphore(max(1, self.settings.decode_workers // 2))

        async def one(payload: Payload) -> Any:
            async with share:
                return await self.in_pool(self.model.prepare, payload)

        tasks = [asyncio.ensure_future(one(p)) for p in payloads]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:  # the request is answered (or gone): its queue slots go back
            for task in tasks:
                task.cancel()
            raise

    def prepare_one(self, payload: Payload) -> Any:
        check_request_pixels([payload], self.settings.max_request_pixels)
        return self.model.prepare(payload)

    async def __call__(self, request: Request, top_k: int | None) -> Response:
        start = time.perf_counter()
        try:
            payloads, body_k, single = await self.read_payloads(request)
            rows = await self.classify(payloads)
        except Stopping:  # arrived after the drain had ended
            raise shutting_down() from None
        k = min(top_k or body_k or 1, len(self.model.class_names))
        for row in rows:
            if isinstance(row, BadInput):
                raise row
            if isinstance(row, BaseException):
                message = getattr(row, "message", None) or str(row)
                raise BadInput(500, "inference_failed", "推論中にエラーが発生しました。",
                               f"Inference failed: {message}")
        preds = [_prediction(row, k, self.model.class_names) for row in rows]
        ms = round((time.perf_counter() - start) * 1000.0, 3)
        backend = self.model.runtime
        if single:
            return JSONResponse({**preds[0], "e2e_time_ms": ms, "backend": backend})
        for pred, payload in zip(preds, payloads):
            pred["filename"] = payload.name
        return JSONResponse({"predictions": preds, "count": len(preds), "e2e_time_ms": ms,
                             "backend": backend})


@dataclass
class FastPredict:
    """``POST /api/v1/predict`` without a query string, answered ahead of FastAPI's routing:
    the same ``Predict`` call and the same bodies, without the framework's per-request
    routing, parameter and exception layers, which were much of a request's time on the
    event loop (docs/benchmarks.md). Everything else (``top_k`` in the query included) goes through FastAPI,
    whose route also documents this one."""

    app: ASGIApp
    predict: Predict

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST" or scope["query_string"]
                or scope["path"] != PREDICT_PATH):
            await self.app(scope, receive, send)
            return
        try:
            response: Response = await self.predict(Request(scope, receive), None)
        except BadInput as exc:
            response = refusal(exc)
        await response(scope, receive, send)


# status -> the ``error`` codes a refusal with it carries (the /docs page lists them)
ERROR_CODES = {400: "undecodable_image, bad_multipart, bad_http",
               413: "body_too_large, too_many_images, too_many_pixels, "
                    "too_many_request_pixels",
               408: "read_timeout", 415: "unsupported_media_type",
               500: "inference_failed, internal_error",
               503: "queue_full, busy (both with Retry-After), shutting_down"}


def add_predict_route(app: FastAPI, predict: Predict) -> None:
    @app.post(PREDICT_PATH, response_model=schemas.PredictResponse,
              responses={200: {"model": schemas.BatchPredictResponse,
                               "description": "PredictResponse for JSON / image bodies, "
                               "BatchPredictResponse for multipart uploads"},
                         **{s: {"model": schemas.ErrorBody, "description": text}
                            for s, text in ERROR_CODES.items()},
                         422: {"model": schemas.UnprocessableBody,
                               "description": "bad_base64, bad_shape, bad_dtype, "
                               "invalid_request, bad_top_k, no_files"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": schemas.PredictRequest.model_json_schema()},
                  "multipart/form-data": {"schema": schemas.MULTIPART_SCHEMA},
                  "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}})
    async def predict_route(request: Request,
                            top_k: int | None = Query(None, ge=1, description="k best classes "
                                                      "to return (default 1)")) -> Response:
        return await predict(request, top_k)


def add_info_routes(app: FastAPI, model: ServeModel, settings: ServeSettings,
                    metrics: Metrics) -> None:
    """health, model-info, version, the Prometheus ``/metrics`` and the ``/docs`` page."""
    from pochitrain import __version__

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

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(schemas.docs_page(app.openapi()))

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)


def _prepare_json(body: bytes) -> tuple[Payload, int | None]:
    """JSON body -> (payload, top_k); runs in the pool (base64 of big images)."""
    from pydantic import ValidationError

    body = body.removeprefix(UTF8_BOM)  # some Windows clients write one; JSON may skip it
    try:
        req = schemas.PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc.errors()) from None
    data = b64decode(req.image_data)
    if req.format in ENCODED_FORMATS:
        return Payload("image_data", data=data), req.top_k
    return Payload("image_data", array=raw_array(data, req.shape, req.dtype)), req.top_k


def _prediction(row: np.ndarray, k: int, names: list[str]) -> dict[str, Any]:
    order = np.argsort(-row, kind="stable")[:k]
    best = int(order[0])
    return {"class_id": best, "class_name": names[best], "confidence": float(row[best]),
            "probabilities": [float(p) for p in row],
            "top_k": [{"class_id": int(i), "class_name": names[int(i)],
                       "probability": float(row[int(i)])} for i in order]}


def _invalid(errors: Any) -> BadInput:
    """A request that failed pydantic's validation; its errors go into the 422 body."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', '')}")
    text = "; ".join(parts)
    return BadInput(422, "invalid_request", f"リクエストの内容が正しくありません: {text}",
                    f"The request is not valid: {text}", errors=list(errors))

