"""The GPU input pipeline's logic, run on CPU tensors: same images, skips and order as the
CPU (PIL) path, resize within a grey level, and --pipeline resolution with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pochitrain.data import scan_image_folder
from pochitrain.errors import UsageError
from pochitrain.gpu_input import GpuBatches, is_complete_jpeg, resize_crop, resolve_pipeline
from pochitrain.inference.loop import iter_batches, run_inference
from pochitrain.inference.torch_runner import TorchRunner
from pochitrain.preprocess import Preprocess

PP = Preprocess(input_size=[48, 48], resize=[56], center_crop=[48, 48])


def _photo(seed: int, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)  # smooth, photo-like


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    """JPEGs of varied sizes, a PNG, a grayscale JPEG, a truncated JPEG and junk with markers."""
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
    for i in range(14):
        _photo(i, 40 + 9 * i, 90 - 3 * i).save(tmp_path / "ab"[i % 2] / f"{i:02d}.jpg", quality=90)
    _photo(20, 70, 50).save(tmp_path / "a" / "20.png")
    _photo(21, 64, 64).convert("L").save(tmp_path / "b" / "21_gray.jpg")
    good = (tmp_path / "a" / "00.jpg").read_bytes()
    (tmp_path / "a" / "30_truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "b" / "31_junk.jpg").write_bytes(b"\xff\xd8\xff" + b"junk" * 50 + b"\xff\xd9")
    return tmp_path


def test_complete_jpeg_check() -> None:
    assert is_complete_jpeg(b"\xff\xd8\xff\xe0 data \xff\xd9\x00\x00")
    assert not is_complete_jpeg(b"\xff\xd8\xff\xe0 cut off")
    assert not is_complete_jpeg(b"\x89PNG\r\n\x1a\n ... \xff\xd9")


@pytest.mark.parametrize("pp", [
    PP,
    Preprocess(input_size=[32, 40], resize=[32, 40]),                       # exact size
    Preprocess(input_size=[80, 80], resize=[60], center_crop=[80, 80]),     # crop pads
    Preprocess(input_size=[24, 24], resize=[30], center_crop=[24, 24], interpolation="nearest"),
    Preprocess(input_size=[24, 24], resize=[30], center_crop=[24, 24], interpolation="bicubic"),
])
def test_resize_crop_matches_pil_within_a_few_levels(pp: Preprocess) -> None:
    image = _photo(3, 97, 61)
    want = pp(image)
    u8 = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)
    got = resize_crop(u8, pp).numpy()
    mean, std = np.asarray(pp.mean)[:, None, None], np.asarray(pp.std)[:, None, None]
    levels = np.abs((got / 255.0 - mean) / std - want) * std * 255.0
    assert got.shape == want.shape
    assert levels.max() <= 2.01 and levels.mean() < 0.5


def test_gpu_batches_on_cpu_match_the_cpu_path(mixed_folder: Path) -> None:
    folder = scan_image_folder(mixed_folder)
    got = list(GpuBatches(PP, "cpu", workers=3)(folder.samples, 4))
    want = list(iter_batches(folder.samples, PP, 4))
    full = [len(b[1]) for b in want if b[1]]  # the CPU path may end on a batch of skips only
    assert [len(b[1]) for b in got] == full == [4, 4, 4, 4]
    assert [x for b in got for x in b[1]] == [x for b in want for x in b[1]]
    assert [x for b in got for x in b[2]] == [x for b in want for x in b[2]]
    skipped = sorted(p.name for b in got for p in b[3])
    assert skipped == sorted(p.name for b in want for p in b[3]) == ["30_truncated.jpg",
                                                                     "31_junk.jpg"]
    x = np.concatenate([b[0].numpy() for b in got])
    y = np.concatenate([b[0] for b in want if b[0] is not None])
    assert np.abs(x - y).max() < 2.01 / (255 * 0.224)


def test_inference_through_gpu_batches_agrees(mixed_folder: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 2))
    folder = scan_image_folder(mixed_folder)
    a = run_inference(TorchRunner(model), folder, PP, 5, folder.classes, progress=False)
    b = run_inference(TorchRunner(model), folder, PP, 5, folder.classes, progress=False,
                      batches=GpuBatches(PP, "cpu"))
    assert a.paths == b.paths and len(a.skipped) == len(b.skipped) == 2
    assert a.preds == b.preds


def test_pipeline_resolution() -> None:
    assert resolve_pipeline("auto", "cpu", PP)[0] == "cpu"
    assert resolve_pipeline("auto", "cuda", PP)[0] == "gpu"
    lanczos = Preprocess(input_size=[8, 8], resize=[8, 8], interpolation="lanczos")
    choice, why = resolve_pipeline("auto", "cuda", lanczos)
    assert choice == "cpu" and "lanczos" in why
    # the original's fallback: gpu without a CUDA device runs the CPU pipeline
    choice, why = resolve_pipeline("gpu", "cpu", PP)
    assert choice == "cpu" and "no CUDA GPU" in why
    with pytest.raises(UsageError, match="cannot reproduce"):
        resolve_pipeline("gpu", "cuda", lanczos)
    with pytest.raises(UsageError, match="Unknown --pipeline"):
        resolve_pipeline("fast", "cuda", PP)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_batched_resize_reproduces_pil_across_groups(interpolation: str) -> None:
    """Images of different sizes, split into several padded groups (small budget), come out
    in input order and equal PIL's resize + crop to within one grey level on rare pixels."""
    from pochitrain.gpu_input.resample import groups, resize_batch

    pp = Preprocess(input_size=[40, 40], resize=[48], center_crop=[40, 40],
                    interpolation=interpolation)
    images = [_photo(i, 97 + 37 * i, 61 + 29 * i) for i in range(6)] + [_photo(9, 30, 20)]
    sizes = [(im.height, im.width) for im in images]
    budget = 3 * 300 * 300 * 2
    assert len(groups(sizes, budget)) > 1
    mean, std = np.asarray(pp.mean)[:, None, None], np.asarray(pp.std)[:, None, None]
    want = np.stack([np.round((pp(im) * std + mean) * 255.0) for im in images])
    tensors = [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]
    out = torch.empty((len(images), 3, 40, 40))
    got = resize_batch(tensors, pp, out, budget=budget).numpy()
    diff = np.abs(got - want)
    assert diff.max() <= 1.0 and (diff > 0).mean() < 0.01


def test_quick_gil_handoff_is_scoped_and_nests() -> None:
    import sys

    from pochitrain.gpu_input import SWITCH_INTERVAL, quick_gil_handoff

    before = sys.getswitchinterval()
    with quick_gil_handoff():
        assert abs(sys.getswitchinterval() - min(before, SWITCH_INTERVAL)) < 1e-9
        with quick_gil_handoff():  # a second pipeline in the same process (serve)
            pass
        assert abs(sys.getswitchinterval() - min(before, SWITCH_INTERVAL)) < 1e-9
    assert sys.getswitchinterval() == before


def test_read_file_gives_the_bytes_whatever_reads_them(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's C++ reader and Python's reads give the same tensor; Python takes over
    for empty files and names C++ cannot take, and a missing file is an OSError."""
    from pochitrain.gpu_input import read_file, read_file_python

    _photo(3, 50, 40).save(tmp_path / "x.jpg")
    odd = Path(os.fsdecode(b"\xff\xfe.jpg"))  # not UTF-8: std::string cannot take it
    (tmp_path / odd).write_bytes((tmp_path / "x.jpg").read_bytes())
    (tmp_path / "empty.jpg").write_bytes(b"")
    want = bytes(read_file_python(tmp_path / "x.jpg"))
    for reader in ("native", "python"):
        monkeypatch.setenv("POCHI_READER", reader)
        for name in ("x.jpg", odd):
            got = read_file(tmp_path / name)
            assert got.dtype == torch.uint8 and bytes(got.numpy()) == want
        assert read_file(tmp_path / "empty.jpg").numel() == 0
        with pytest.raises(OSError):
            read_file(tmp_path / "missing.jpg")


def test_read_threads_setting(monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.gpu_input import READ_THREADS, read_threads

    monkeypatch.setenv("POCHI_READ_THREADS", "3")
    assert read_threads("training") == 3
    monkeypatch.setenv("POCHI_READ_THREADS", "many")
    assert read_threads("inference") == min(READ_THREADS["inference"], os.cpu_count() or 1)
    assert "POCHI_READ_THREADS='many'" in capsys.readouterr().out
