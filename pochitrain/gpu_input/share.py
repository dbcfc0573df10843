"""The model's share of the GPU while the input pipeline decodes beside it.

nvJPEG's and the resize's small steps wait for free SMs behind a model's large kernels: beside
resnet18 at batch 256 the decoder kept about three quarters of its own rate, and about all of
it when the model's stream belonged to a green context of all SMs but a few
(docs/benchmarks.md, "The decoder's work queues"). ``model_stream`` makes such a stream when
``POCHI_MODEL_SMS`` asks for one; whole commands have not been timed with it yet, so it is off
unless asked for.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from pochitrain.gpu_input.options import Options

if TYPE_CHECKING:
    import torch

INPUT_SMS = 8  # SMs left to the input pipeline beside the model (docs/benchmarks.md)


def model_stream(device: str | torch.device) -> tuple[torch.cuda.Stream, str] | None:
    """With ``POCHI_MODEL_SMS=auto`` (or N), a stream of a green context holding all SMs of
    the CUDA ``device`` but ``INPUT_SMS`` (or N of them), and "<its SMs> of <all>"; None when
    the switch is off, or where the driver (12.8+ needed) or the GPU cannot make one."""
    wanted = Options.from_env().model_sms
    if wanted == "off":
        return None
    import torch

    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _green_stream(index, wanted)


@functools.cache  # one per device and setting: a green context lives as long as the process
def _green_stream(index: int, wanted: str) -> tuple[torch.cuda.Stream, str] | None:
    """The stream of ``model_stream``, made through CUDA's driver API (cuda-python, installed
    with PyTorch's CUDA builds)."""
    import torch

    total = torch.cuda.get_device_properties(index).multi_processor_count
    sms = total - INPUT_SMS if wanted == "auto" else int(wanted)
    if not 0 < sms < total:
        return None
    try:
        from cuda.bindings import driver as cu

        def value(answer: Any) -> Any:
            """cuda-python's (CUresult, value...) -> the value(s); RuntimeError on an error."""
            error, *values = answer
            if error != cu.CUresult.CUDA_SUCCESS:
                raise RuntimeError(str(error))
            return values[0] if len(values) == 1 else values

        if value(cu.cuDriverGetVersion()) < 12080:  # streams of green contexts from 12.8 on
            return None
        torch.cuda.synchronize(index)  # the device's primary context exists
        device = value(cu.cuDeviceGet(index))
        all_sms = value(cu.cuDeviceGetDevResource(device,
                                                  cu.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM))
        groups, count, _rest = value(cu.cuDevSmResourceSplitByCount(1, all_sms, 0, sms))
        if count != 1:
            return None
        desc = value(cu.cuDevResourceGenerateDesc([groups[0]], 1))
        green = value(cu.cuGreenCtxCreate(desc, device,
                                          cu.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM))
        handle = value(cu.cuGreenCtxStreamCreate(green, cu.CUstream_flags.CU_STREAM_NON_BLOCKING,
                                                 0))
    except Exception:  # noqa: BLE001 - only a speed-up: no cuda-python, an older driver, ...
        return None
    stream = torch.cuda.ExternalStream(int(handle), device=torch.device("cuda", index))
    return stream, f"{groups[0].sm.smCount} of {total}"
