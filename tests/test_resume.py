"""pochi train --resume: a run stopped by a real Ctrl+C (SIGINT) during its second epoch goes
on in its own folder and ends with the same weights, metrics and best checkpoint as a run that
was never interrupted (seeded, random augmentation, num_workers = 0)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tiny import tiny_config

from pochitrain.cli.main import run

# SIGINT from inside the training's own transform, once (a marker file), in epoch 2:
# tiny_data has 18 training images.
INTERRUPT = """
import os, signal
from pathlib import Path
_MARK = Path({mark!r})
class _CtrlCOnce:
    calls = 0
    def __call__(self, image):
        _CtrlCOnce.calls += 1
        if _CtrlCOnce.calls == 18 + 10 and not _MARK.exists():
            _MARK.touch()
            os.kill(os.getpid(), signal.SIGINT)
        return image
seed = 3
num_workers = 0
scheduler = "StepLR"
scheduler_params = {{"step_size": 1, "gamma": 0.5}}
early_stopping = {{"patience": 5, "monitor": "val_loss"}}
train_transform = transforms.Compose([_CtrlCOnce(), transforms.Resize((32, 32)),
                                      transforms.RandomHorizontalFlip(),
                                      transforms.ColorJitter(0.3, 0.3), transforms.ToTensor(),
                                      _norm])
"""


def _rows(run_dir: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((run_dir / "training_metrics.csv").open(encoding="utf-8")))
    return [{k: v for k, v in r.items() if k not in ("images_per_second", "seconds")}
            for r in rows]


def test_interrupted_run_resumes_to_the_same_weights(tiny_data: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.checkpoint import load_model
    from pochitrain.training.distributed import state_hash

    mark = tmp_path / "interrupted.mark"
    config = tiny_config(tmp_path / "cfg", tiny_data, epochs=3,
                         extra=INTERRUPT.format(mark=str(mark)))
    assert run(["train", "-c", str(config), "--work-dir", str(tmp_path / "a"), "--quiet"]) == 130
    (stopped,) = (tmp_path / "a").iterdir()
    info = json.loads((stopped / "run.json").read_text())
    assert info["status"] == "interrupted" and info["epochs_run"] == 1
    assert [r["epoch"] for r in _rows(stopped)] == ["1"]

    # the uninterrupted reference: the same config (the marker now exists)
    assert run(["train", "-c", str(config), "--work-dir", str(tmp_path / "b"), "--quiet"]) == 0
    (reference,) = (tmp_path / "b").iterdir()
    other = tiny_config(tmp_path / "other", tiny_data, epochs=3)
    assert run(["train", "-c", str(other), "--resume", str(stopped)]) == 2
    assert "is not the config this run was started with" in capsys.readouterr().err

    assert run(["train", "--resume", str(stopped), "--quiet"]) == 0
    assert f"resuming {stopped} after epoch 1 of 3" in capsys.readouterr().out
    assert list((tmp_path / "a").iterdir()) == [stopped]  # no new run folder
    info = json.loads((stopped / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_run"] == 3
    assert info["resumed_after_epochs"] == [1]
    assert _rows(stopped) == _rows(reference)
    resumed_model, _ = load_model(stopped / "models" / "last_model.pth")
    reference_model, _ = load_model(reference / "models" / "last_model.pth")
    assert state_hash(resumed_model) == state_hash(reference_model)
    assert sorted(p.name for p in (stopped / "models").iterdir()) == \
        sorted(p.name for p in (reference / "models").iterdir())
    assert (stopped / "loss.png").is_file()

    # a finished run is not resumed (given by its checkpoint here); nor a missing one
    assert run(["train", "--resume", str(reference / "models" / "last_model.pth")]) == 2
    assert "the run finished (completed, 3 epoch(s))" in capsys.readouterr().err
    missing = tmp_path / "a" / "20990101_001"
    assert run(["train", "--resume", str(missing)]) == 2
    assert f"no run to resume there ({missing} does not exist)" in capsys.readouterr().err
    (reference / "run.json").write_text("{not json", encoding="utf-8")  # a damaged record
    assert run(["train", "--resume", str(reference)]) == 2
    assert "run.json is missing or unreadable" in capsys.readouterr().err


def test_a_run_stopped_in_its_first_epoch_has_nothing_to_resume(
        tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    early = INTERRUPT.format(mark=str(tmp_path / "early.mark")).replace("18 + 10", "5")
    config = tiny_config(tmp_path / "cfg", tiny_data, epochs=2, extra=early)
    assert run(["train", "-c", str(config), "--work-dir", str(tmp_path / "a"), "--quiet"]) == 130
    (first_epoch,) = (tmp_path / "a").iterdir()
    assert (first_epoch / "models" / "last_model.pth").is_file()  # the weights at Ctrl+C
    assert run(["train", "--resume", str(first_epoch)]) == 2
    assert "stopped during its first epoch" in capsys.readouterr().err
