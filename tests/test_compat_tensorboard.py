"""enable_tensorboard: the original's tags under the run folder; a clear error without it."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
from tiny import original_config

from pochitrain.errors import BackendMissingError


def test_tensorboard_events_with_the_original_tags(compat_data: Path,
                                                   tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pochitrain.training.run import run_training as train

    config = original_config(tmp_path, compat_data, epochs=2, tensorboard=True, **{
        "enable_gradient_tracking = True": "enable_gradient_tracking = False"})
    run_dir = train(config, progress=False).run_dir
    log_dir = run_dir / "tensorboard" / run_dir.name
    assert list(log_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(log_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"Loss/train", "Accuracy/train", "LearningRate/base", "Loss/val", "Accuracy/val",
            "LearningRate/lr_fc", "LearningRate/lr_layer4"} <= tags
    assert [e.step for e in events.Scalars("Loss/val")] == [1, 2]
    fc = [e.value for e in events.Scalars("LearningRate/lr_fc")]
    assert fc == pytest.approx([0.01, 0.0095])
    assert all(0 <= e.value <= 100 for e in events.Scalars("Accuracy/val"))  # percent


def test_missing_tensorboard_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    from pochitrain.training.tensorboard import TensorBoardLog

    real_import = builtins.__import__

    def no_tensorboard(name: str, *args: object, **kwargs: object) -> object:
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ModuleNotFoundError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(BackendMissingError) as err:
        TensorBoardLog(tmp_path / "tb")
    assert "enable_tensorboard" in err.value.message
    assert 'pip install "pochitrain[tensorboard]"' in err.value.remedy
