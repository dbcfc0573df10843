"""pochi train --gpus 2 --device cpu: two real DDP processes (gloo) through the real command."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import copy_tiny, tiny_config

from pochitrain.cli.main import run


@pytest.fixture(scope="module")
def tiny_data(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_tiny(digits_dir, tmp_path_factory.mktemp("tiny_ddp"))


def _tiny_config(folder: Path, data: Path, epochs: int = 1, extra: str = "") -> Path:
    return tiny_config(folder, data, epochs, extra)


ROOT = Path(__file__).resolve().parents[1]
AUGMENT = ("train_transform = transforms.Compose([transforms.Resize((32, 32)), "
           "transforms.RandomHorizontalFlip(), transforms.ToTensor(), _norm])\n")


def _pochi(args: list[str], env: dict[str, str], cwd: Path,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "POCHI_DDP_TIMEOUT": "60", **env}
    return subprocess.run([sys.executable, "-m", "pochitrain", "train", *args], check=False,
                          cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_write_one_run_with_equal_weights(tiny_data: Path,
                                                        tmp_path: Path) -> None:
    from pochitrain.checkpoint import load_model
    from pochitrain.training.distributed import state_hash

    config = _tiny_config(tmp_path / "cfg", tiny_data, epochs=2, extra=AUGMENT)
    debug = tmp_path / "hashes"
    started = time.perf_counter()
    proc = _pochi(["-c", str(config), "--gpus", "2", "--device", "cpu", "--work-dir",
                   str(tmp_path / "runs"), "--quiet"], {"POCHI_DDP_DEBUG_DIR": str(debug)},
                  tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.perf_counter() - started < 60
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1  # only rank 0 writes a run folder
    run_dir = runs[0]
    names = {p.name for p in run_dir.iterdir()}
    assert names >= {"config.py", "run.json", "models", "training_metrics.csv", "loss.png",
                     "accuracy.png"}
    models = sorted(p.name for p in (run_dir / "models").iterdir())
    assert "last_model.pth" in models and any(m.startswith("best_epoch") for m in models)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["settings"]["world_size"] == 2
    rows = list(csv.DictReader((run_dir / "training_metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:  # validation is split over ranks without padding and summed: 9 images
        assert round(float(r["val_accuracy"]) * 9, 4) == round(float(r["val_accuracy"]) * 9)
    # only rank 0 prints (one set of epoch lines)
    assert proc.stdout.count("epoch 1/2") == 1 and "starting 2 training processes" in proc.stdout
    hashes = {json.loads(p.read_text())["rank"]: json.loads(p.read_text())["state_sha256"]
              for p in debug.glob("rank*.json")}
    assert sorted(hashes) == [0, 1] and hashes[0] == hashes[1]  # same weights on every rank
    model, _ = load_model(run_dir / "models" / "last_model.pth")
    assert state_hash(model) == hashes[0]  # and the checkpoint holds them


def test_a_failing_rank_stops_the_others(tiny_data: Path, tmp_path: Path) -> None:
    config = _tiny_config(tmp_path / "cfg", tiny_data, epochs=2)
    started = time.perf_counter()
    proc = _pochi(["-c", str(config), "--gpus", "2", "--device", "cpu", "--work-dir",
                   str(tmp_path / "runs"), "--quiet"], {"POCHI_DDP_DEBUG_FAIL_RANK": "1"},
                  tmp_path, timeout=90)
    assert time.perf_counter() - started < 60  # no hang
    assert proc.returncode == 1
    assert "rank 1 failed on purpose" in proc.stderr
    assert "rank 1 of 2 failed" in proc.stderr and "Traceback" not in proc.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


def test_gpus_needs_gpus_or_device_cpu(tiny_data: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    config = _tiny_config(tmp_path / "cfg", tiny_data)
    too_many = torch.cuda.device_count() + 1
    assert run(["train", "-c", str(config), "--gpus", str(max(too_many, 2))]) == 2
    err = capsys.readouterr().err
    assert "--gpus" in err and "GPU(s) are visible" in err
    assert run(["train", "-c", str(config), "--gpus", "2", "--device", "cuda:1"]) == 2
    config3 = _tiny_config(tmp_path / "cfg3", tiny_data, extra="batch_size = 7\n")
    assert run(["train", "-c", str(config3), "--gpus", "2", "--device", "cpu"]) == 2
    assert "divisible by 2" in capsys.readouterr().err
