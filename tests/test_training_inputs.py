"""Training inputs refused before anything runs (a batch of one image for BatchNorm, --gpus
with a CPU config), a config transform that raises on an image, and the temp folders of
killed DDP ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_config

from pochitrain.cli.main import run

RAISING_TRANSFORM = '''
def _boom(image):
    if image.size[0] < 100:  # the config check's test image is larger: real images fail
        raise ValueError("boom: this image is too small\\nsecond line")
    return val_transform(image)
train_transform = _boom
num_workers = {workers}
'''


def test_batch_of_one_and_gpus_with_a_cpu_config_are_refused(
        tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = tiny_config(tmp_path / "one", tiny_data, extra="batch_size = 1\n")
    assert run(["train", "-c", str(one), "--work-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "batch_size = 1" in err and "BatchNorm" in err and "batch_size = 2" in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()
    two = tiny_config(tmp_path / "two", tiny_data, extra="batch_size = 2\n")
    assert run(["train", "-c", str(two), "--gpus", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "over 2 processes" in err and "batch_size = 4" in err and "BatchNorm" in err
    cpu = tiny_config(tmp_path / "cpu", tiny_data)  # device = "cpu" in the config
    assert run(["train", "-c", str(cpu), "--gpus", "2"]) == 2
    err = capsys.readouterr().err
    assert "CUDA" in err and "device = 'cpu'" in err and "--device cpu" in err
    assert "0 GPU" not in err


@pytest.mark.parametrize("workers", [0, 2])
def test_a_raising_train_transform_names_itself_and_the_image(
        workers: int, tiny_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path / "cfg", tiny_data,
                         extra=RAISING_TRANSFORM.format(workers=workers))
    assert run(["train", "-c", str(config), "--work-dir", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert "train_transform failed on the image" in err and str(tiny_data / "train") in err
    assert "ValueError: boom: this image is too small" in err and "second line" not in err
    assert "Traceback" not in err and "DataLoader worker" not in err


def test_original_api_loader_transform_error_from_a_worker(tiny_data: Path) -> None:
    """The worker's error, clearly; and once the script has handled it, the worker process
    is gone (not kept until a garbage collection, whose shutdown of it waits 5 s)."""
    import multiprocessing

    from pochitrain import PochiError, create_data_loaders

    def boom(image: object) -> object:
        raise KeyError("no such channel")

    before = set(multiprocessing.active_children())
    loader, _, _ = create_data_loaders(str(tiny_data / "train"), str(tiny_data / "val"),
                                       batch_size=4, num_workers=1, train_transform=boom)
    with pytest.raises(PochiError) as caught:
        next(iter(loader))
    text = str(caught.value)
    assert text.startswith("train_transform が") and "KeyError: 'no such channel'" in text
    assert "Traceback" not in text and str(tiny_data / "train") in text
    del caught
    assert set(multiprocessing.active_children()) <= before


def test_scratch_folders_of_killed_ranks_are_removed(tmp_path: Path) -> None:
    from pochitrain.training.distributed import SCRATCH_PREFIX, remove_stale_scratch

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f"{SCRATCH_PREFIX}1_{gone.stdout.strip()}_abc"
    live = tmp_path / f"{SCRATCH_PREFIX}1_{os.getpid()}_def"
    unrelated = tmp_path / f"{SCRATCH_PREFIX}1_old"  # no process id in the name: kept
    for folder in (dead, live, unrelated):
        (folder / "models").mkdir(parents=True)
    assert remove_stale_scratch(tmp_path) == [dead]
    assert not dead.exists() and live.is_dir() and unrelated.is_dir()
