"""CheckpointKeeper: files written in its own thread from snapshots taken when asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pochitrain.checkpoint import checkpoint_payload, read_checkpoint, write_checkpoint
from pochitrain.errors import PochiError
from pochitrain.meta import ModelMeta
from pochitrain.preprocess import Preprocess
from pochitrain.training import CheckpointKeeper


def _keeper(folder: Path, model: torch.nn.Module) -> CheckpointKeeper:
    meta = ModelMeta(["a", "b"], Preprocess.simple(8, 8), model_name="resnet18")
    return CheckpointKeeper(folder, lambda extra: checkpoint_payload(model, meta, extra),
                            write_checkpoint)


def test_files_hold_the_state_of_when_they_were_asked_for(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    weight = model.weight.detach().clone()
    momentum = optimizer.state[model.weight]["momentum_buffer"].clone()
    rows = [{"epoch": 1}]
    with _keeper(tmp_path, model) as keeper:
        assert keeper.offer(1, 0.5, {"optimizer": optimizer.state_dict(), "rows": rows})
        keeper.save_last({"optimizer": optimizer.state_dict(), "rows": rows})
        for _ in range(3):  # the training goes on while the files are written
            optimizer.step()
        rows.append({"epoch": 2})
    assert not torch.equal(model.weight.detach(), weight)
    for name in ("best_epoch1.pth", "last_model.pth"):
        payload, meta = read_checkpoint(tmp_path / name)
        assert torch.equal(payload["model_state_dict"]["weight"], weight)
        saved = payload["optimizer"]["state"][0]["momentum_buffer"]
        assert torch.equal(saved, momentum) and payload["rows"] == [{"epoch": 1}]
        assert meta.class_names == ["a", "b"]


def test_a_new_best_replaces_the_old_file_once_written(tmp_path: Path) -> None:
    with _keeper(tmp_path, torch.nn.Linear(4, 2)) as keeper:
        keeper.offer(1, 0.5, {})
        assert not keeper.offer(2, 0.5, {})  # not better
        keeper.offer(3, 0.7, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_epoch3.pth"]
    assert (keeper.best_epoch, keeper.best_accuracy) == (3, 0.7)


def test_a_failed_write_is_raised_in_the_training_thread(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    blocked = tmp_path / "models"
    blocked.write_text("a file where the folder should be", encoding="utf-8")
    keeper = _keeper(blocked, torch.nn.Linear(4, 2))
    keeper.save_last({})
    with pytest.raises(PochiError, match="Cannot write .*last_model.pth"):
        keeper.close()

    keeper = _keeper(blocked, torch.nn.Linear(4, 2))
    with pytest.raises(RuntimeError, match="the run's own"), keeper:
        keeper.save_last({})
        raise RuntimeError("the run's own error")  # goes on; the write's is only warned
    assert "checkpoint not written" in capsys.readouterr().out


def test_a_rank_that_writes_nothing(tmp_path: Path) -> None:
    with CheckpointKeeper(tmp_path, None, write_checkpoint) as keeper:
        keeper.offer(1, 0.5, {})
        keeper.save_last({})
    assert list(tmp_path.iterdir()) == [] and keeper.best_epoch == 1
