"""Model metadata that travels with every artefact (checkpoint, ONNX, engine)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pochitrain.errors import ModelFileError
from pochitrain.preprocess import Preprocess

# Key used in ONNX metadata_props and engine sidecars.
META_KEY = "pochitrain"
FORMAT_VERSION = 1


@dataclass
class ModelMeta:
    class_names: list[str]
    preprocess: Preprocess
    model_name: str = "unknown"
    # Provenance, e.g. {"checkpoint_sha256": ..., "onnx_sha256": ...}
    source: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> list[int]:
        return list(self.preprocess.input_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "preprocess": self.preprocess.to_dict(),
            "model_name": self.model_name,
            "source": dict(self.source),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model") -> ModelMeta:
        try:
            return cls(
                class_names=[str(c) for c in data["class_names"]],
                preprocess=Preprocess.from_dict(data["preprocess"]),
                model_name=str(data.get("model_name", "unknown")),
                source={str(k): str(v) for k, v in dict(data.get("source", {})).items()},
            )
        except (KeyError, TypeError) as exc:
            raise ModelFileError(
                "pochitrain のメタデータが不完全です\n"
                f"The pochitrain metadata in {where} is incomplete (missing {exc}).",
                "Re-create the file with this version of pochitrain, or pass -c CONFIG.",
            ) from exc


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
