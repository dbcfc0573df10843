"""The served model: opened once through the model facade (``pochitrain.model``), as
``pochi infer`` opens it; ``prepare`` runs in the decode thread pool, ``run_batch`` on the
batcher's single worker thread. ``--pipeline`` means what it means for ``pochi infer``: on a
CUDA device the GPU input pipeline (nvJPEG decode, resize on the GPU) feeds every runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pochitrain.errors import BackendMissingError
from pochitrain.predictor import Upload
from pochitrain.serve.decode import BadInput, Payload, decode_image

if TYPE_CHECKING:
    from pochitrain.inference.torch_runner import TorchOptions


class ForGpu(NamedTuple):
    """One image prepared for the GPU input pipeline: ``kind`` "jpeg" (``data``: the
    encoded bytes, left for nvJPEG) or "rgb" (``data``: (h, w, 3) uint8 decoded by PIL)."""

    kind: str
    data: Any
    name: str


def engine_cannot_run(exc: BackendMissingError, path: Path) -> BackendMissingError:
    """No GPU or no TensorRT for an engine: what serves here instead (infer's remedy names
    infer-onnx, which is no server)."""
    import torch

    first = f"{exc.remedy}\n" if exc.remedy and torch.cuda.is_available() else ""
    return BackendMissingError(
        exc.message,
        f"{first}A TensorRT engine runs only on an NVIDIA GPU with TensorRT: serve it on "
        "such a machine. To serve on this machine's CPU, serve the model the engine was "
        f"converted from: pochi serve {path.with_suffix('.onnx').name} (or its .pth).")


class ServeModel:
    """A ``pochitrain.model.Model`` with the serve-side steps around it."""

    def __init__(self, path: Path | str, *, config: Path | str | None = None,
                 device: str = "auto", providers: list[str] | None = None,
                 max_batch: int = 32, pipeline: str = "auto",
                 torch_options: TorchOptions | None = None) -> None:
        from pochitrain.model import open_model

        self.path = Path(path)
        try:
            self.model = open_model(self.path, config=config, device=device,
                                    providers=providers, batch_size=max_batch,
                                    torch_options=torch_options)
        except BackendMissingError as exc:
            if self.path.suffix.lower() != ".engine":
                raise
            raise engine_cannot_run(exc, self.path) from None
        self.preprocess = self.model.preprocess
        self.runtime, self.class_names = self.model.runtime, self.model.class_names
        try:
            self.chunk = self.model.fixed_batch or max_batch
            self.model.runner.check_batch_size(self.chunk)
            self.gpu = self.model.input_pipeline(pipeline, workers=1).batches
        except BaseException:
            self.model.close()
            raise

    def info(self) -> dict[str, Any]:
        described = self.model.runner.describe()
        return {
            "model_name": self.model.meta.model_name or self.path.stem,
            "model_file": self.path.name,
            "num_classes": len(self.class_names),
            "class_names": self.class_names,
            "device": described.get("device") or described.get("providers", "cpu"),
            "backend": self.runtime,
            "input_size": list(self.preprocess.input_size),
            "preprocess": self.preprocess.to_dict(),
            "pipeline": self.gpu.describe() if self.gpu is not None else "cpu (PIL, threads)",
            "runner": described,
        }

    def backend_versions(self) -> dict[str, str]:
        """The original's keys whatever runs the model (pytorch: installed with the package,
        read without importing it; python), then the runner's own versions."""
        import importlib.metadata

        try:
            versions = {"pytorch": importlib.metadata.version("torch")}
        except importlib.metadata.PackageNotFoundError:
            versions = {"pytorch": "not installed"}
        versions["python"] = sys.version.split()[0]
        described = self.model.runner.describe()
        for key in ("torch", "onnxruntime", "tensorrt"):
            if key in described:
                versions["pytorch" if key == "torch" else key] = described[key]
        return versions

    def prepare(self, payload: Payload) -> np.ndarray | ForGpu:
        """One image for ``run_batch``; BadInput when it is not an image. CPU pipeline:
        decoded and preprocessed, float32 (3, H, W). GPU pipeline: complete JPEGs that nvJPEG
        reads like PIL stay encoded, the rest are decoded to (h, w, 3) uint8."""
        if self.gpu is None:
            return self.preprocess(decode_image(payload))
        return (self.still_encoded(payload)  # a ForGpu, a tuple of three: never false
                or ForGpu("rgb", np.array(decode_image(payload)), payload.name))

    def still_encoded(self, payload: Payload) -> ForGpu | None:
        """``prepare``'s answer where the GPU pipeline takes the image still encoded (nothing
        to decode here), else None."""
        from pochitrain.gpu_input import for_nvjpeg

        if self.gpu is not None and payload.data is not None and for_nvjpeg(payload.data):
            return ForGpu("jpeg", payload.data, payload.name)
        return None

    # ---- model worker thread --------------------------------------------------------------
    def run_batch(self, items: list[Any]) -> list[Any]:
        """One result per item: a float64 probability row, or a BadInput (GPU decode)."""
        if self.gpu is None:
            return self.rows_by_size(items)
        from pochitrain.gpu_input import Entry

        batch, failed = self.gpu.assemble(
            [Entry(Upload(item.data, item.name) if item.kind == "jpeg" else None, 0,
                   item.kind, item.data) for item in items])
        results: list[Any] = [BadInput(400, "undecodable_image",
                                       f"画像をデコードできません: {item.name}",
                                       f"{item.name} is not a readable image.")
                              for item in items]
        if batch is not None:
            good = [i for i in range(len(items)) if i not in failed]
            for i, row in zip(good, self.model.probabilities(batch, self.chunk)):
                results[i] = row
        return results

    def rows_by_size(self, items: list[np.ndarray]) -> list[Any]:
        """Rows in order; one model call per image size (a ``Resize(n)`` with no crop keeps
        each image's aspect ratio, and requests of any aspect are answered)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.shape, []).append(i)
        rows: list[Any] = [None] * len(items)
        for indices in groups.values():
            batch = np.stack([items[i] for i in indices])
            for i, row in zip(indices, self.model.probabilities(batch, self.chunk)):
                rows[i] = row
        return rows

    def warmup(self, batch_sizes: tuple[int, ...]) -> None:
        """Run the model once per batch size so the first requests do not pay for it."""
        h, w = self.preprocess.input_size
        for n in batch_sizes:
            self.model.probabilities(np.zeros((min(n, self.chunk), 3, h, w), np.float32),
                                     self.chunk)

    def close(self) -> None:
        self.model.close()
