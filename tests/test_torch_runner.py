"""PyTorch runner: option validation, the out-of-memory message with the largest batch that
fits (driven by a model that raises CUDA's OOM error on the CPU), and infer() wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pochitrain.config import resolve_device
from pochitrain.errors import BackendMissingError, GpuMemoryError, UsageError
from pochitrain.inference.torch_runner import (
    TorchOptions,
    TorchRunner,
    largest_fitting_batch,
)

CUDA = torch.cuda.is_available()


class LimitedMemory(torch.nn.Module):
    """A real classifier that 'runs out of GPU memory' above ``limit`` images."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB")
        return self.net(x)


class CpuPipe:
    """Stands in for CudaBatchPipe: same call signature, CPU tensors."""

    def run(self, batch, call, out_shape=None, out_dtype=np.float32):
        return call(torch.from_numpy(batch), None, None).numpy(), 0.0

    def close(self) -> None:
        pass


def test_largest_fitting_batch() -> None:
    assert largest_fitting_batch(lambda n: n <= 37, 256) == 37
    assert largest_fitting_batch(lambda n: n <= 255, 256) == 255
    assert largest_fitting_batch(lambda n: False, 256) == 0


@pytest.mark.parametrize("pipe", [None, CpuPipe()])
def test_out_of_memory_names_the_largest_batch(pipe) -> None:
    runner = TorchRunner(LimitedMemory(limit=5), "cpu", pipe=pipe)
    images = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    assert runner.run(images[:5])[0].shape == (5, 4)
    with pytest.raises(GpuMemoryError, match="largest batch that fits now is 5") as err:
        runner.run(images)
    assert err.value.remedy == "Use --batch-size 5 or smaller." and err.value.exit_code == 2
    assert err.value.__cause__ is None  # no OOM traceback chained for the user


def test_out_of_memory_even_at_batch_one() -> None:
    runner = TorchRunner(LimitedMemory(limit=0), "cpu")
    with pytest.raises(GpuMemoryError, match="Not even one 3x8x8 image fits"):
        runner.run(np.zeros((2, 3, 8, 8), dtype=np.float32))


@pytest.mark.parametrize("options, message", [
    (TorchOptions("fp16"), "--precision fp16 needs a CUDA GPU"),
    (TorchOptions("bf16"), "--precision bf16 needs a CUDA GPU"),
    (TorchOptions(cuda_graph=True), "--cuda-graph needs a CUDA GPU"),
    (TorchOptions("fp8"), "Unknown precision"),
])
def test_gpu_only_options_are_refused_on_the_cpu(options: TorchOptions, message: str) -> None:
    with pytest.raises(UsageError, match=message) as err:
        TorchRunner(LimitedMemory(4), "cpu", options)
    assert err.value.remedy


def test_channels_last_on_the_cpu_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    plain = TorchRunner(conv, "cpu").run(x)[0]
    nhwc = TorchRunner(conv, "cpu", TorchOptions(channels_last=True)).run(x)[0]
    np.testing.assert_allclose(nhwc, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(CUDA, reason="checks the CPU-only path")
def test_cuda_without_a_gpu() -> None:
    assert resolve_device("auto", flag="--device") == "cpu"
    with pytest.raises(BackendMissingError, match="no CUDA GPU is available"):
        resolve_device("cuda", flag="--device")


@pytest.mark.skipif(CUDA, reason="checks the CPU-only path")
def test_infer_gpu_pipeline_on_cpu_falls_back_and_says_auto_fell_back(
        untrained_checkpoint: Path, tiny_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.pipeline.infer import infer

    fell_back = infer(untrained_checkpoint, data=tiny_data / "val", output=tmp_path / "a",
                      pipeline="gpu", progress=False)
    summary = next(p for p in fell_back.files if p.name.endswith("summary.txt")).read_text()
    assert "cpu (PIL" in summary and "no CUDA GPU for --pipeline gpu" in summary
    said = capsys.readouterr().out
    assert "CPU パイプラインで実行します" in said and "the CPU pipeline (PIL) runs instead" in said
    out = infer(untrained_checkpoint, data=tiny_data / "val", output=tmp_path / "b",
                batch_size=4, progress=False)
    summary = next(p for p in out.files if p.name.endswith("summary.txt")).read_text()
    assert "cpu (PIL" in summary
    assert "No CUDA GPU here: running PyTorch on the" in capsys.readouterr().out


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_graph_replay_matches_eager() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 4))
    x = np.random.default_rng(0).standard_normal((11, 3, 16, 16)).astype(np.float32)
    want = model(torch.from_numpy(x)).detach().numpy()
    runner = TorchRunner(model, "cuda", TorchOptions("bf16", True, True))
    got = np.concatenate([runner.run(x[i:i + 4])[0] for i in range(0, 11, 4)])
    np.testing.assert_allclose(got, want, rtol=5e-2, atol=5e-2)
