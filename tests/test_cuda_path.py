"""The shared CUDA path: clear errors without CUDA here; on a GPU machine, real runs.

The GPU tests (skipped without CUDA) check the pipe against plain PyTorch and drive the real
TensorRT runner through the real pipe, with the API double standing in for the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pochitrain.errors import BackendMissingError
from pochitrain.inference.cuda_path import CudaBatchPipe, require_cuda, torch_call

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 10)).eval()


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


@pytest.mark.skipif(CUDA, reason="checks the CPU-only path")
def test_without_cuda_the_error_is_clear() -> None:
    with pytest.raises(BackendMissingError, match="No CUDA device") as err:
        require_cuda()
    assert err.value.exit_code == 1 and "NVIDIA GPU" in (err.value.remedy or "")
    with pytest.raises(BackendMissingError, match="CUDA デバイスがありません"):
        CudaBatchPipe()


def test_torch_call_returns_or_fills_the_output() -> None:
    model = _model()
    x = torch.from_numpy(_images(3))
    want = model(x).detach()
    call = torch_call(model)
    got = call(x, None, None)
    torch.testing.assert_close(got, want)
    out = torch.full((3, 10), float("nan"))
    assert call(x, out, None) is None
    torch.testing.assert_close(out, want)


@needs_cuda
def test_pipe_matches_pytorch_for_every_batch_size() -> None:
    model = _model()
    images = _images(11)
    want = model(torch.from_numpy(images)).detach().numpy()
    gpu_model = _model().cuda()
    pipe = CudaBatchPipe()
    assert pipe.stream.cuda_stream != torch.cuda.default_stream().cuda_stream
    outs, pures = [], []
    for start in range(0, 11, 4):  # 4, 4 and a last batch of 3
        logits, pure = pipe.run(images[start:start + 4], torch_call(gpu_model))
        assert logits.dtype == np.float32 and logits.shape == (min(4, 11 - start), 10)
        outs.append(logits)
        pures.append(pure)
    np.testing.assert_allclose(np.concatenate(outs), want, rtol=1e-3, atol=1e-4)
    assert all(p > 0 for p in pures)
    ptr = pipe._bufs["h_in"].data_ptr()
    pipe.run(images[:2], torch_call(gpu_model))  # smaller batch reuses the pinned buffer
    assert pipe._bufs["h_in"].data_ptr() == ptr and pipe._bufs["h_in"].is_pinned()
    pipe.close()


@needs_cuda
def test_pipe_with_a_preallocated_output_like_tensorrt() -> None:
    model = _model().cuda().half()  # fp16 I/O end to end
    images = _images(5)
    pipe = CudaBatchPipe()
    seen: dict[str, Any] = {}

    def call(d_in: torch.Tensor, d_out: torch.Tensor, stream: Any) -> None:
        seen["stream"] = stream.cuda_stream
        seen["current"] = torch.cuda.current_stream().cuda_stream
        with torch.inference_mode():
            d_out.copy_(model(d_in))

    logits, _ = pipe.run(images.astype(np.float16), call, out_shape=(5, 10),
                         out_dtype=np.float16)
    assert seen["stream"] == seen["current"] == pipe.stream.cuda_stream != 0
    want = _model()(torch.from_numpy(images)).detach().numpy()
    np.testing.assert_allclose(logits, want, rtol=2e-2, atol=2e-2)


@needs_cuda
def test_tensorrt_runner_through_the_real_cuda_path(tmp_path: Path) -> None:
    import trt_double
    from trt_double import EngineSpec, double_engine

    from pochitrain.inference.trt_runner import open_trt_runner

    class RegisteringPipe(CudaBatchPipe):
        """The real pipe; its device buffers are registered so the double can use them."""

        def run(self, batch: np.ndarray, call: Any, out_shape: Any = None,
                out_dtype: Any = np.float32) -> tuple[np.ndarray, float]:
            def wrapped(d_in: torch.Tensor, d_out: torch.Tensor, stream: Any) -> Any:
                bufs = [(t.data_ptr(), t.numel() * t.element_size(), t) for t in (d_in, d_out)]
                for buf in bufs:
                    trt_double.register(*buf)
                try:
                    return call(d_in, d_out, stream)
                finally:
                    for buf in bufs:
                        trt_double.unregister(*buf)

            return super().run(batch, wrapped, out_shape, out_dtype)

    spec = EngineSpec(chw=(3, 16, 16), profile=(1, 4, 8))
    runner, _ = open_trt_runner(double_engine(tmp_path, spec), trt=trt_double,
                                pipe=RegisteringPipe())
    images = _images(10)
    logits = np.concatenate([runner.run(images[i:i + 4])[0] for i in range(0, 10, 4)])
    np.testing.assert_allclose(logits, spec.reference(images), rtol=1e-4, atol=1e-4)
    streams = {s for _, s in runner.context.executions}
    assert streams == {runner.pipe.stream.cuda_stream}
    runner.close()
