"""pochi train: real training runs (the shared trained_run, plus tiny ones on a few images)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from tiny import tiny_config

from pochitrain.cli.main import run
from pochitrain.errors import ConfigError, DataError, PochiError
from pochitrain.training.run import run_training as train

# ---- the shared trained run ----------------------------------------------------------------

def test_trained_run_layout_and_accuracy(trained_run: Path, trained_checkpoint: Path) -> None:
    from pochitrain.checkpoint import load_model, read_checkpoint

    assert trained_run.parent.name == "work_dirs" and trained_run.name[8] == "_"
    models = sorted(p.name for p in (trained_run / "models").iterdir())
    assert len([m for m in models if m.startswith("best_epoch")]) == 1  # only the current best
    assert "last_model.pth" in models and trained_checkpoint.name in models
    assert (trained_run / "config.py").read_text().startswith('"""pochitrain config')
    for png in ("loss.png", "accuracy.png"):
        assert (trained_run / png).read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((trained_run / "training_metrics.csv").open()))
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_accuracy", "val_loss",
                             "val_accuracy", "images_per_second", "seconds"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    best = max(float(r["val_accuracy"]) for r in rows)
    assert best >= 0.85

    info = json.loads((trained_run / "run.json").read_text())
    assert info["status"] == "completed" and info["class_names"] == [str(d) for d in range(10)]
    assert info["num_classes"] == 10 and info["input_size"] == [32, 32]
    assert info["mean"] == [0.5] * 3 and info["preprocess"]["resize"] == [32, 32]
    assert set(info["versions"]) >= {"python", "torch", "torchvision", "pochitrain"}
    assert info["settings"]["model_name"] == "resnet18" and info["skipped_files"] == []
    assert info["best_val_accuracy"] == pytest.approx(best, abs=1e-5)

    payload, meta = read_checkpoint(trained_checkpoint)  # weights_only=True inside
    assert meta.class_names == info["class_names"] and meta.model_name == "resnet18"
    assert meta.preprocess.to_dict() == info["preprocess"]
    assert payload["val_accuracy"] == pytest.approx(best, abs=1e-5)
    assert trained_checkpoint.name == f"best_epoch{payload['epoch']}.pth"
    model, _ = load_model(trained_run / "models" / "last_model.pth")
    assert not model.training


# ---- tiny runs -----------------------------------------------------------------------------

def test_cli_train_writes_a_new_run_each_time(tiny_data: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs of one config: a new run folder each time. 18 images at batch 17: a last
    batch of one would stop BatchNorm ("Expected more than 1 value per channel when
    training"); the training loader drops it."""
    config = tiny_config(tmp_path / "cfg", tiny_data, epochs=2,
                          extra="scheduler = 'StepLR'\nscheduler_params = {'step_size': 1, "
                          "'gamma': 0.5}\nwork_dir = 'runs'\nclass_weights = [1.0, 2.0, 1.0]\n"
                          "batch_size = 17\n")
    assert run(["train", "-c", str(config), "--quiet"]) == 0
    assert run(["train", "-c", str(config), "--quiet", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    runs = sorted((tmp_path / "cfg" / "runs").iterdir())  # work_dir relative to the config
    assert [r.name[-3:] for r in runs] == ["001", "002"] and "best val accuracy" in out
    rows = list(csv.DictReader((runs[0] / "training_metrics.csv").open()))
    assert [float(r["lr"]) for r in rows] == [0.001, 0.0005]  # StepLR stepped per epoch
    assert len(list(csv.DictReader((runs[1] / "training_metrics.csv").open()))) == 1
    info = json.loads((runs[1] / "run.json").read_text())
    assert info["epochs_run"] == 1 and info["status"] == "completed"


def test_seeded_runs_are_reproducible_and_auto_precision_on_the_cpu_is_fp32(
        tiny_data: Path, tmp_path: Path) -> None:
    import torch

    config = tiny_config(tmp_path, tiny_data, epochs=1)
    losses = []
    for _ in range(2):
        result = train(config, progress=False)
        rows = list(csv.DictReader((result.run_dir / "training_metrics.csv").open()))
        losses.append(rows[0]["train_loss"])
    assert losses[0] == losses[1]
    if torch.cuda.is_available():
        return  # auto precision on a GPU is not fp32
    info = json.loads((result.run_dir / "run.json").read_text(encoding="utf-8"))
    assert info["settings"]["mixed_precision"] == "auto"
    assert info["settings"]["mixed_precision_resolved"] == "off"
    assert info["settings"]["channels_last_resolved"] is False


def test_skipped_files_early_stopping_and_fp32_are_recorded(tiny_data: Path,
                                                           tmp_path: Path) -> None:
    """One run: corrupt and non-image files are skipped and counted once over two epochs;
    early stopping ends it after epoch 2 of 6; mixed precision off trains in fp32 and is
    recorded."""
    import torch

    from pochitrain.checkpoint import read_checkpoint

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "train" / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (data / "val" / "2" / "notes.jpg").write_text("this is text, not a JPEG")
    config = tiny_config(tmp_path / "cfg", data, epochs=6, extra=(
        "early_stopping = {'patience': 1, 'min_delta': 10.0, 'monitor': 'val_loss'}\n"
        "mixed_precision = 'off'\nchannels_last = False\n"))
    result = train(config, work_dir=tmp_path / "w", progress=False)
    assert result.stopped_by == "early_stopping" and result.epochs_run == 2
    assert (result.run_dir / "models" / "last_model.pth").is_file()
    assert sorted(p.name for p in result.skipped_files) == ["broken.png", "notes.jpg"]
    info = json.loads((result.run_dir / "run.json").read_text(encoding="utf-8"))
    assert info["skipped_count"] == {"train": 1, "val": 1}
    assert any(p.endswith("broken.png") for p in info["skipped_files"])
    assert result.best_checkpoint is not None
    assert info["settings"]["mixed_precision"] == "off"
    assert info["settings"]["mixed_precision_resolved"] == "off"
    assert info["settings"]["channels_last_resolved"] is False
    ckpt, _ = read_checkpoint(result.best_checkpoint)
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model_state_dict"].values())
    with open(result.run_dir / "training_metrics.csv", encoding="utf-8") as f:
        row = next(csv.DictReader(f))
    assert float(row["images_per_second"]) > 0


def test_ctrl_c_saves_last_model_and_exits_130(tiny_data: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # A real SIGINT to the main process, sent from a DataLoader worker (which itself ignores
    # Ctrl+C, like all workers: a terminal sends it to the whole process group).
    extra = (
        "import multiprocessing, os, signal\n"
        "class _CtrlC:\n"
        "    calls = 0\n"
        "    def __call__(self, image):\n"
        "        _CtrlC.calls += 1\n"
        "        if _CtrlC.calls == 10:\n"
        "            os.kill(os.getppid() if multiprocessing.parent_process() else os.getpid(),\n"
        "                    signal.SIGINT)\n"
        "        return image\n"
        "train_transform = transforms.Compose([_CtrlC(), val_transform])\n"
    )
    config = tiny_config(tmp_path, tiny_data, epochs=5, extra=extra + "num_workers = 1\n")
    assert run(["train", "-c", str(config), "--quiet"]) == 130
    captured = capsys.readouterr()
    assert "Interrupted" in captured.out + captured.err
    (run_dir,) = (tmp_path / "work_dirs").iterdir()
    assert (run_dir / "models" / "last_model.pth").is_file()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["epochs_run"] == 0


def test_crash_keeps_the_metrics_written_so_far(tiny_data: Path, tmp_path: Path) -> None:
    extra = (
        "class _Crash:\n"
        "    calls = 0\n"
        "    def __call__(self, image):\n"
        "        _Crash.calls += 1\n"
        "        if _Crash.calls > 20:\n"  # 18 train images per epoch: crashes in epoch 2
        "            raise RuntimeError('disk on fire')\n"
        "        return image\n"
        "train_transform = transforms.Compose([_Crash(), val_transform])\n"
    )
    config = tiny_config(tmp_path, tiny_data, epochs=3, extra=extra)
    # an error inside a transform comes back as a DataError naming it, the image and the cause
    with pytest.raises(DataError, match="RuntimeError: disk on fire"):
        train(config, progress=False)
    (run_dir,) = (tmp_path / "work_dirs").iterdir()
    rows = list(csv.DictReader((run_dir / "training_metrics.csv").open()))
    assert len(rows) == 1 and (run_dir / "loss.png").is_file()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "disk on fire" in info["error"]


def test_a_checkpoint_that_cannot_be_written_fails_the_run(tiny_data: Path,
                                                           tmp_path: Path) -> None:
    """Files are written by a thread while training goes on: its error still ends the run,
    as the command's own error, with run.json saying so."""
    def break_models(epoch: int, metrics: dict[str, float]) -> None:
        (run_dir,) = (tmp_path / "work_dirs").iterdir()
        shutil.rmtree(run_dir / "models")  # the best file may be written yet, or not
        (run_dir / "models").write_text("a file where the folder was", encoding="utf-8")

    with pytest.raises(PochiError, match="Cannot write .*(best_epoch1|last_model)"):
        train(tiny_config(tmp_path, tiny_data, epochs=1), progress=False, on_epoch=break_models)
    (run_dir,) = (tmp_path / "work_dirs").iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "Cannot write" in info["error"]


# ---- bad input -------------------------------------------------------------------------------

def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = run(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_data_folder_problems(tiny_data: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    empty_class = tmp_path / "empty_class"
    shutil.copytree(tiny_data / "train", empty_class)
    (empty_class / "3").mkdir()
    cases = [
        (tmp_path / "missing", "does not exist"),
        (empty, "No images found"),
        (empty_class, "Class folder(s) with no images"),
    ]
    for i, (train_root, words) in enumerate(cases):
        config = tiny_config(tmp_path / f"c{i}", tiny_data, train=train_root)
        code, err = _cli_error(["train", "-c", str(config)], capsys)
        assert code == 1 and words in err, err
        assert not (tmp_path / f"c{i}" / "work_dirs").exists()  # nothing half-written


def test_val_classes_must_match_train(tiny_data: Path, tmp_path: Path) -> None:
    val = tmp_path / "val"
    shutil.copytree(tiny_data / "val", val)
    shutil.move(str(val / "2"), str(val / "7"))
    with pytest.raises(DataError, match=r"\(train_data_root\) does not have: 7"):
        train(tiny_config(tmp_path, tiny_data, val=val), progress=False)


@pytest.mark.parametrize(("extra", "words"), [
    ("num_classes = 5\n", "num_classes = 5 but"),
    ("class_weights = [1.0, 2.0]\n", "class_weights has 2 values"),
    ("input_size = [64, 64]\n", "val_transform produces [32, 32]"),
    ("val_transform = None\n", "configにval_transformが設定されていません"),
    ("val_data_root = None\n", "val_data_root is not set"),
    (("val_transform = transforms.Compose([transforms.RandomHorizontalFlip(), "
     "transforms.ToTensor()])\n"), "RandomHorizontalFlip"),
])
def test_config_does_not_fit_the_data(tiny_data: Path, tmp_path: Path, extra: str,
                                      words: str) -> None:
    with pytest.raises(ConfigError) as err:
        train(tiny_config(tmp_path, tiny_data, extra=extra), progress=False)
    assert words in str(err.value)


def test_cuda_without_gpu_is_a_clear_error(tiny_data: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = tiny_config(tmp_path, tiny_data, extra="device = 'cuda'\n")
    code, err = _cli_error(["train", "-c", str(config)], capsys)
    assert code == 2 and "no CUDA GPU" in err
    code, err = _cli_error(["train", "-c", str(tiny_config(tmp_path, tiny_data)),
                            "--device", "cuda:0"], capsys)
    assert code == 2 and "no CUDA GPU" in err


@pytest.mark.parametrize("asked", ["bf16", "fp16"])
def test_gpu_precision_on_the_cpu_is_a_clear_error(tiny_data: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   asked: str) -> None:
    """Decided: an explicit bf16/fp16 on the CPU stops before training (no silent fallback)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = tiny_config(tmp_path, tiny_data, extra=f"mixed_precision = {asked!r}\n")
    code, err = _cli_error(["train", "-c", str(config)], capsys)
    assert code == 2 and f"mixed_precision = '{asked}' needs a CUDA GPU" in err
    assert "'auto'" in err and "Traceback" not in err
    assert not (tmp_path / "work_dirs").exists() or not any((tmp_path / "work_dirs").iterdir())


def test_precision_resolution_on_the_cpu() -> None:
    from pochitrain.training import resolve_precision

    p = resolve_precision("auto", "auto", "cpu")
    assert (p.name, p.channels_last, p.amp_dtype, p.grad_scaler("cpu")) == ("off", False, None,
                                                                           None)
    assert resolve_precision("off", True, "cpu").channels_last is True


def test_train_cli_in_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "config.py"
    bad.write_text("epochs = 3\nbatch_size = 'big'\n")
    proc = subprocess.run([sys.executable, "-m", "pochitrain.cli.main", "train", "-c", str(bad)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "'batch_size'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_nan_loss_stops_with_a_clear_error_and_saves_no_best(tiny_data: Path,
                                                              tmp_path: Path) -> None:
    """class_weights all zero: CrossEntropyLoss is 0/0 = NaN on the first batch. Training
    stops there with a message naming the fix; no 'best' model of a diverged network."""
    from pochitrain.errors import TrainingError

    config = tiny_config(tmp_path, tiny_data, extra="class_weights = [0.0, 0.0, 0.0]\n")
    with pytest.raises(TrainingError) as err:
        train(config, work_dir=tmp_path / "runs", progress=False)
    assert "loss became nan" in err.value.message and "class_weights" in err.value.remedy
    run_dir = next((tmp_path / "runs").iterdir())
    assert list((run_dir / "models").iterdir()) == []
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


def test_val_without_a_readable_image_is_an_error(tiny_data: Path, tmp_path: Path) -> None:
    val = tmp_path / "val"
    for cls in ("0", "1"):
        (val / cls).mkdir(parents=True)
        (val / cls / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="None of the 2 validation images could be read"):
        train(tiny_config(tmp_path, tiny_data, val=val), work_dir=tmp_path / "runs",
              progress=False)
