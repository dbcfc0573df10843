"""Which TensorRT is installed: full TensorRT (``tensorrt``) or TensorRT-RTX (the same API;
the differences that matter here are attributes of ``Backend``)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from pochitrain.errors import BackendMissingError, UsageError

BACKEND_CHOICES = ("auto", "tensorrt", "tensorrt-rtx")

# backend name (as written to engine metadata) -> import names, tried in order; "auto" tries
# the backends in this order too
_IMPORTS: dict[str, tuple[str, ...]] = {
    "tensorrt": ("tensorrt",),
    # the PyPI wheel is tensorrt_rtx_bindings; NVIDIA's own packages may provide tensorrt_rtx
    "tensorrt_rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings"),
}
_EXTRAS = {"tensorrt": "pochitrain[tensorrt]", "tensorrt_rtx": "pochitrain[tensorrt-rtx]"}


@dataclass
class Backend:
    name: str  # "tensorrt" | "tensorrt_rtx"
    version: str
    module: ModuleType

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0

    def network_flags(self) -> int:
        """Flags for a strongly typed network: TensorRT 10.x needs STRONGLY_TYPED; TensorRT-RTX
        and TensorRT 11 (strongly typed only) take 0 or may drop the flag."""
        if self.is_rtx:
            return 0
        flag = getattr(self.module.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return 0 if flag is None else 1 << int(flag)

    @property
    def has_timing_cache(self) -> bool:
        # TensorRT-RTX keeps the API but its timing-cache calls are documented no-ops.
        return not self.is_rtx

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def _try_import(names: tuple[str, ...]) -> ModuleType | None:
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - a broken install (bad .so) counts as absent
            continue
        # tensorrt-stubs installs a bare 'tensorrt' folder of .pyi files: that imports as an
        # empty namespace package, which is not a TensorRT.
        if hasattr(module, "Builder") and hasattr(module, "OnnxParser"):
            return module
    return None


def load_backend(choice: str = "auto") -> Backend:
    """Import the asked backend ("auto": TensorRT first, then TensorRT-RTX)."""
    choice = choice.replace("-", "_")
    if choice not in ("auto", *_IMPORTS):
        raise UsageError("不明なバックエンドが指定されています\n"
                         f"Unknown backend {choice!r}.",
                         f"Choose one of: {', '.join(BACKEND_CHOICES)}")
    names = list(_IMPORTS) if choice == "auto" else [choice]
    for name in names:
        module = _try_import(_IMPORTS[name])
        if module is not None:
            return Backend(name, str(getattr(module, "__version__", "unknown")), module)
    if choice == "auto":
        raise BackendMissingError(
            "TensorRT が見つかりません\n"
            "No TensorRT backend is installed "
            "(neither tensorrt nor tensorrt_rtx / tensorrt_rtx_bindings imports).",
            f'Install one: pip install "{_EXTRAS["tensorrt"]}" (NVIDIA TensorRT 10+, needs '
            f'NVIDIA\'s package index) or pip install "{_EXTRAS["tensorrt_rtx"]}" '
            "(TensorRT-RTX from PyPI).",
        )
    tried = " / ".join(_IMPORTS[choice])
    raise BackendMissingError(
        "TensorRT のバックエンドがインストールされていません\n"
        f"TensorRT backend {choice!r} is not installed (could not import {tried}).",
        f'pip install "{_EXTRAS[choice]}", or use --backend auto to take whichever is installed.',
    )
