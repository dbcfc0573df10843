"""The server's settings, the request / response models of API v1 (the original's fields,
plus ``top_k``), and the ``/docs`` page written from the app's OpenAPI schema.

Python 3.10: no ``typing.Self`` (the original's import of it broke its whole CLI there).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any, Literal

from pydantic import BaseModel, Field

API_VERSION = "1.0.0"


@dataclass
class ServeSettings:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    queue: int = 512  # images admitted (decoding, queued or in the model) at most
    max_body_bytes: int = 16 * 1024 * 1024
    max_images: int = 64  # images per request
    max_request_pixels: int = 200_000_000  # decoded pixels per request, all images together
    decode_workers: int = 4
    max_inflight_bytes: int = 0  # body bytes of all requests in flight; 0: from the above
    max_requests: int = 0  # requests in flight (head received); 0: from the queue
    read_timeout_s: float = 15.0  # a request head, or a pause inside a body, at most
    retry_after_s: int = 1
    access_log: bool = True


class PredictRequest(BaseModel):
    image_data: str = Field(description="base64 of the image: raw HWC uint8 BGR pixels "
                            "(format 'raw', OpenCV order) or an encoded JPEG / PNG / WebP file")
    format: Literal["raw", "jpeg", "jpg", "png", "webp", "image"] = Field(
        "raw", description="'raw' (needs shape) or an encoded image ('jpeg' takes any "
        "JPEG / PNG / WebP bytes)")
    shape: list[int] | None = Field(None, description="[H, W, 3] for 'raw' "
                                       "([H, W] or [H, W, 1]: grayscale)")
    dtype: str = Field("uint8", description="pixel type of 'raw' data: only uint8")
    top_k: int | None = Field(None, ge=1, description="also return the k best "
                                 "classes (default 1)")


class TopK(BaseModel):
    class_id: int
    class_name: str
    probability: float


class Prediction(BaseModel):
    class_id: int
    class_name: str
    confidence: float = Field(description="probability of the predicted class, 0..1")
    probabilities: list[float] = Field(description="softmax over all classes, class order")
    top_k: list[TopK] = Field(description="the k most probable classes, best first")


class PredictResponse(Prediction):
    e2e_time_ms: float = Field(description="server time for the request: decode, "
                               "preprocess, queue, model and softmax")
    backend: str = Field(description="pytorch | onnx | tensorrt")


class FilePrediction(Prediction):
    filename: str


class BatchPredictResponse(BaseModel):
    predictions: list[FilePrediction]
    count: int
    e2e_time_ms: float
    backend: str


class Health(BaseModel):
    status: Literal["healthy", "unhealthy"]
    model_loaded: bool
    backend: str


class ModelInfo(BaseModel):
    model_name: str
    model_file: str
    num_classes: int
    class_names: list[str]
    device: str
    backend: str
    input_size: list[int]
    preprocess: dict[str, object]
    pipeline: str
    runner: dict[str, str]
    max_batch: int
    max_wait_ms: float
    queue: int


class Version(BaseModel):
    pochitrain_version: str
    api_version: str
    backend_versions: dict[str, str]


class ErrorBody(BaseModel):
    detail: str = Field(description="Japanese line, then English line")
    error: str = Field(description="machine-readable code, e.g. bad_base64, queue_full")


class UnprocessableBody(BaseModel):
    """422: FastAPI's (and the original's) body, with our bilingual message added."""

    detail: list[dict[str, object]] = Field(description="errors: type, loc, msg, input")
    message: str = Field(description="Japanese line, then English line")
    error: str = Field(description="machine-readable code, e.g. invalid_request, bad_shape")


MULTIPART_SCHEMA = {
    "type": "object",
    "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "one or more JPEG / PNG / WebP files"},
        "top_k": {"type": "integer", "minimum": 1, "description": "k best classes to return "
                  "(default 1)"},
    },
    "required": ["files"],
}


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}
h2{{border-top:1px solid #ccc;padding-top:.6em;font-family:monospace}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .5em;
text-align:left;vertical-align:top}}code{{background:#f4f4f4}}</style></head><body>
<h1>{title} <small>{version}</small></h1><p>{description}</p>
<p>The machine-readable schema: <a href="/openapi.json">/openapi.json</a>.</p>
{operations}</body></html>"""


def docs_page(spec: dict[str, Any]) -> str:
    """A self-contained HTML page (no scripts, no external assets, so it works offline)
    listing each operation of an OpenAPI ``spec``: its parameters, bodies and responses."""
    info = spec.get("info", {})
    operations = [_operation(method, path, op) for path, item in spec.get("paths", {}).items()
                  for method, op in item.items()]
    return _PAGE.format(title=escape(info.get("title", "")),
                        version=escape(info.get("version", "")),
                        description=escape(info.get("description", "")),
                        operations="\n".join(operations))


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    html = [f"<h2>{escape(method.upper())} {escape(path)}</h2>",
            f"<p>{escape(op.get('summary', ''))}</p>"]
    params = op.get("parameters", [])
    if params:
        html += _table(["parameter", "in", "type", "required", "description"],
                       [[f"<code>{escape(p['name'])}</code>", escape(p.get("in", "")),
                         escape(_type_of(p.get("schema", {}))),
                         "yes" if p.get("required") else "no",
                         escape(p.get("description", ""))] for p in params])
    for kind, body in op.get("requestBody", {}).get("content", {}).items():
        html.append(f"<p>Request body <code>{escape(kind)}</code></p>")
        fields = body.get("schema", {}).get("properties", {})
        if fields:
            html += _table(["field", "type", "description"],
                           [[f"<code>{escape(name)}</code>", escape(_type_of(f)),
                             escape(f.get("description", ""))] for name, f in fields.items()])
    html += _table(["status", "description"],
                   [[escape(code), escape(r.get("description", ""))]
                    for code, r in sorted(op.get("responses", {}).items())])
    return "\n".join(html)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    """An HTML table's lines: the header row, then one line per row of cells (HTML)."""
    return (["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
            + ["<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows]
            + ["</table>"])


def _type_of(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " | ".join(_type_of(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    if schema.get("type") == "array":
        return f"array of {_type_of(schema.get('items', {}))}"
    return str(schema.get("type", "object"))
