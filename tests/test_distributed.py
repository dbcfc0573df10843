"""pochi train --gpus 2 --device cpu: two real DDP processes (gloo) through the real command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from background import Job
from tiny import tiny_config

from pochitrain.cli.main import run


def test_two_processes_write_one_run_with_equal_weights(ddp_run: Job) -> None:
    """Started with the session (conftest ``ddp_run``): 2 epochs with random flips."""
    from pochitrain.checkpoint import load_model
    from pochitrain.training.distributed import state_hash

    proc = ddp_run.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = ddp_run.cwd
    debug = folder / "hashes"
    runs = list((folder / "runs").iterdir())
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


def test_a_failing_rank_stops_the_others(ddp_failing_run: Job) -> None:
    """Started with the session (conftest ``ddp_failing_run``): rank 1 fails on purpose; the
    launcher stops the other rank: it does not wait out the process-group timeout."""
    proc = ddp_failing_run.result()
    folder = ddp_failing_run.cwd
    assert proc.returncode == 1
    assert "rank 1 failed on purpose" in proc.stderr
    assert "rank 1 of 2 failed" in proc.stderr and "Traceback" not in proc.stderr
    run_dir = next((folder / "runs").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


def test_gpus_needs_gpus_or_device_cpu(tiny_data: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    config = tiny_config(tmp_path / "cfg", tiny_data, extra='device = "auto"\n')
    too_many = torch.cuda.device_count() + 1
    assert run(["train", "-c", str(config), "--gpus", str(max(too_many, 2))]) == 2
    err = capsys.readouterr().err
    assert "--gpus" in err and "GPU(s) are visible" in err
    assert run(["train", "-c", str(config), "--gpus", "2", "--device", "cuda:1"]) == 2
    config3 = tiny_config(tmp_path / "cfg3", tiny_data, extra="batch_size = 7\n")
    assert run(["train", "-c", str(config3), "--gpus", "2", "--device", "cpu"]) == 2
    assert "divisible by 2" in capsys.readouterr().err
