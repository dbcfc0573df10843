"""What ``mixed_precision`` / ``channels_last`` mean on a device (autocast dtype, GradScaler)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pochitrain.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    """What ``mixed_precision`` / ``channels_last`` resolved to on a device."""

    name: str  # "bf16" | "fp16" | "off"
    channels_last: bool

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def grad_scaler(self, device: str) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling (small gradients underflow); bf16 and fp32 do not."""
        if self.name != "fp16":
            return None
        return torch.amp.GradScaler(device.split(":")[0])


def _bf16_ok(device: str) -> bool:
    # capability, not torch.cuda.is_bf16_supported(): that also says yes for slow emulation
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(mixed_precision: str, channels_last: bool | str, device: str) -> Precision:
    """``auto`` -> bf16 on CUDA GPUs with bfloat16 support (compute capability >= 8.0), fp16 on
    older GPUs, off on the CPU; ``channels_last="auto"`` -> True on CUDA. Asking for bf16/fp16
    on the CPU, or bf16 on a GPU without it, is a ConfigError (exit 2) naming the fix."""
    on_gpu = device.startswith("cuda")
    name = mixed_precision
    if name == "auto":
        name = ("bf16" if _bf16_ok(device) else "fp16") if on_gpu else "off"
    elif name in ("bf16", "fp16") and not on_gpu:
        raise ConfigError(
            "mixed_precision には CUDA GPU が必要です\n"
            f"mixed_precision = {name!r} needs a CUDA GPU, but this run uses the CPU "
            f"(device = {device!r}).",
            "Set mixed_precision = 'auto' (bf16 on a GPU, off on the CPU) or 'off'.")
    elif name == "bf16" and not _bf16_ok(device):
        raise ConfigError("この GPU は bfloat16 に対応していません\n"
                          "mixed_precision = 'bf16' but this GPU has no bfloat16 support "
                          "(needs compute capability 8.0 or newer).",
                          "Set mixed_precision = 'fp16' (or 'auto', which picks it here).")
    cl = on_gpu if channels_last == "auto" else bool(channels_last)
    return Precision(name, cl)
