"""Request / response models of API v1 (the original's fields, plus ``top_k``).

Python 3.10: no ``typing.Self`` (the original's import of it broke its whole CLI there).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

API_VERSION = "1.0.0"


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
        "top_k": {"type": "integer", "minimum": 1},
    },
    "required": ["files"],
}
