"""The served model: opened once (``inference.open.open_model``, as ``pochi infer`` does),
used by two kinds of threads.

- ``prepare(payload)`` runs in the decode thread pool: decode (``data.open_rgb``) and
  preprocess (the model's ``Preprocess``) -> float32 (3, H, W). With the GPU input pipeline
  it only sorts the bytes: complete JPEGs nvJPEG reads like PIL stay encoded, the rest are
  decoded by PIL to (h, w, 3) uint8.
- ``run_batch(items)`` runs on the batcher's single worker thread: stack -> runner ->
  softmax, one (num_classes,) float64 row per item. GPU pipeline: nvJPEG decode +
  resize/crop/normalize on the GPU (``pochitrain.gpu_input``) before the model call.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from pochitrain.serve.decode import BadInput, Payload, _Upload, decode_image


def prepare(payload: Payload, preprocess: Any, gpu: bool) -> Any:
    """One image for ``run_batch`` (decode thread pool); BadInput when it is not an image.
    CPU pipeline: decoded and preprocessed, float32 (3, H, W). GPU pipeline: complete JPEGs
    that nvJPEG reads like PIL stay encoded, the rest are decoded to (h, w, 3) uint8."""
    if not gpu:
        return preprocess(decode_image(payload))
    from pochitrain.gpu_input import for_nvjpeg

    data = payload.data
    if data is not None and for_nvjpeg(data):
        return ("jpeg", data, payload.name)
    return ("rgb", np.array(decode_image(payload)), payload.name)


class ServeModel:
    remote = False  # runs its batches here (``serve.shared.RemoteModel`` sends them away)

    def __init__(self, path: Path | str, *, config: Path | str | None = None,
                 device: str = "auto", providers: list[str] | None = None,
                 max_batch: int = 32, pipeline: str = "auto", torch_options: Any = None) -> None:
        from pochitrain.inference.open import open_model

        self.path = Path(path)
        self.model = open_model(self.path, config=config, device=device, providers=providers,
                                batch_size=max_batch, torch_options=torch_options)
        self.preprocess = self.model.meta.preprocess
        try:
            self.chunk = self.model.fixed_batch or max_batch
            self.model.runner.check_batch_size(self.chunk)
            self.gpu = self._gpu_input(pipeline)
        except BaseException:
            self.model.close()
            raise

    def _gpu_input(self, pipeline: str) -> Any:
        if self.model.runtime != "pytorch":
            if pipeline == "gpu":
                from pochitrain.errors import UsageError

                raise UsageError("--pipeline gpu is for .pth models (the PyTorch runner); "
                                 f"{self.path.name} runs on {self.model.runtime}.",
                                 "Drop --pipeline gpu.")
            return None
        from pochitrain.gpu_input import GpuBatches, resolve_pipeline

        choice, _ = resolve_pipeline(pipeline, self.model.runner.device, self.preprocess)
        return GpuBatches(self.preprocess, self.model.runner.device, workers=1) \
            if choice == "gpu" else None

    # ---- facts for /model-info and /version ---------------------------------------------
    @property
    def runtime(self) -> str:
        return self.model.runtime

    @property
    def class_names(self) -> list[str]:
        return list(self.model.meta.class_names)

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
        versions = {"python": sys.version.split()[0]}
        described = self.model.runner.describe()
        for key in ("torch", "onnxruntime", "tensorrt"):
            if key in described:
                versions["pytorch" if key == "torch" else key] = described[key]
        return versions

    # ---- decode pool ----------------------------------------------------------------------
    def prepare(self, payload: Payload) -> Any:
        return prepare(payload, self.preprocess, gpu=self.gpu is not None)

    # ---- model worker thread --------------------------------------------------------------
    def run_batch(self, items: list[Any]) -> list[Any]:
        """One result per item: a float64 probability row, or a BadInput (GPU decode)."""
        if self.gpu is not None:
            return self._run_gpu(items)
        return list(self.probabilities(np.stack(items)))

    def probabilities(self, batch: Any) -> np.ndarray:
        """(N, 3, H, W) -> (N, classes) softmax, ``chunk`` images per model call (a
        fixed-batch model gets padded chunks), as ``Predictor.probabilities``."""
        from pochitrain.inference.loop import softmax
        from pochitrain.onnx.session import pad_to

        fixed = self.model.fixed_batch
        out = []
        for start in range(0, len(batch), self.chunk):
            part = batch[start:start + self.chunk]
            n = len(part)
            if isinstance(part, np.ndarray):
                part = np.ascontiguousarray(part, np.float32)
                if fixed:
                    part = pad_to(part, fixed)
            logits, _ = self.model.runner.run(part)
            out.append(softmax(np.asarray(logits)[:n]))
        return np.concatenate(out)

    def _run_gpu(self, items: list[Any]) -> list[Any]:
        from pochitrain.gpu_input import Entry

        batch, failed = self.gpu.assemble(
            [Entry(_Upload(payload, name) if kind == "jpeg" else None, 0, kind, payload)
             for kind, payload, name in items])
        results: list[Any] = [None] * len(items)
        for i in failed:
            results[i] = BadInput(400, "undecodable_image",
                                  f"画像をデコードできません: {items[i][2]}",
                                  f"{items[i][2]} is not a readable image.")
        bad = set(failed)
        good = [i for i in range(len(items)) if i not in bad]
        if batch is not None:
            for i, row in zip(good, self.probabilities(batch)):
                results[i] = row
        return results

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run the model once per batch size so the first requests do not pay for it."""
        h, w = self.preprocess.input_size
        for n in batch_sizes:
            self.probabilities(np.zeros((min(n, self.chunk), 3, h, w), np.float32))

    def close(self) -> None:
        self.model.close()
