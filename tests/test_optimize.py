"""pochi optimize: real Optuna studies over real (tiny) training runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from background import Job
from tiny import optuna_config

from pochitrain.cli.main import run
from pochitrain.errors import BackendMissingError, ConfigError


def _has_layer_wise_lr() -> bool:
    from pochitrain.config import KEYS

    return "layer_wise_lr_config" in KEYS


def test_four_trials_pruned_and_loadable_config(opt_data: Path, tmp_path: Path) -> None:
    space = {
        # 0.01 blows the BatchNorm statistics up (val loss in the hundreds): pruned at epoch 1
        "learning_rate": {"type": "categorical", "choices": [0.001, 0.01]},
        "optimizer": {"type": "categorical", "choices": ["Adam", "AdamW"]},
        "batch_size": {"type": "int", "low": 6, "high": 6},
        "weight_decay": {"type": "categorical", "choices": [0.0001]},
        "scheduler": {"type": "categorical", "choices": ["StepLR"]},
        "scheduler_step_size": {"type": "int", "low": 1, "high": 1},
        "scheduler_params.gamma": {"type": "float", "low": 0.5, "high": 0.5, "step": 0.1},
    }
    if _has_layer_wise_lr():
        space["layer_rates.fc"] = {"type": "categorical", "choices": [0.002]}
    config = optuna_config(tmp_path, opt_data, {
        "study_name": "tiny", "n_trials": 4, "optuna_epochs": 1, "direction": "minimize",
        "sampler": "GridSampler(seed=0)", "pruner": "ThresholdPruner(upper=10.0)",
        "search_space": space})
    out = tmp_path / "study"
    assert run(["optimize", "-c", str(config), "-o", str(out)]) == 0

    history = json.loads((out / "trials_history.json").read_text())
    assert len(history) == 4
    states = {(t["params"]["learning_rate"], t["params"]["optimizer"]): t["state"]
              for t in history}
    assert states == {(0.001, "Adam"): "COMPLETE", (0.001, "AdamW"): "COMPLETE",
                      (0.01, "Adam"): "PRUNED", (0.01, "AdamW"): "PRUNED"}
    assert all(t["pruned_at_epoch"] == 1 for t in history if t["state"] == "PRUNED")
    stats = json.loads((out / "study_statistics.json").read_text())
    assert (stats["n_completed"], stats["n_pruned"], stats["n_failed"]) == (2, 2, 0)
    assert (stats["metric"], stats["direction"]) == ("val_loss", "MINIMIZE")  # as Optuna names it
    assert stats["statistics"]["n_completed"] == 2 and stats["value_unit"] == "loss"
    assert "param_importances" in stats
    best = json.loads((out / "best_params.json").read_text())
    assert best["study_name"] == "tiny" and best["n_trials"] == 4
    assert best["best_params"]["learning_rate"] == 0.001
    assert best["best_value"] == min(t["value"] for t in history if t["state"] == "COMPLETE")
    assert stats["statistics"]["best"] == best["best_value"]  # a loss: no unit to change

    # every searched key reached the trial's training (its run.json records the settings)
    for t in (t for t in history if t["state"] == "COMPLETE"):
        settings = json.loads((Path(t["run_dir"]) / "run.json").read_text())["settings"]
        assert settings["learning_rate"] == 0.001 and settings["epochs"] == 1
        assert settings["optimizer"] == t["params"]["optimizer"]
        assert settings["batch_size"] == 6 and settings["weight_decay"] == 0.0001
        assert settings["scheduler"] == "StepLR"
        assert settings["scheduler_params"] == {"step_size": 1, "gamma": 0.5}
        if _has_layer_wise_lr():
            assert settings["enable_layer_wise_lr"] is True
            assert settings["layer_wise_lr_config"]["layer_rates"]["fc"] == 0.002

    # charts: HTML (Plotly) and PNG (matplotlib)
    assert (out / "optimization_history.html").stat().st_size > 1000
    assert (out / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"

    # optimized_config.py loads and trains as is (the config's epochs, the best values)
    from pochitrain.config import load_config
    from pochitrain.training.run import run_training as train

    optimized = out / "optimized_config.py"
    moved = tmp_path / "elsewhere" / "optimized_config.py"  # absolute paths: works anywhere
    moved.parent.mkdir()
    shutil.copy(optimized, moved)
    s = load_config(moved)
    assert (s.learning_rate, s.batch_size, s.scheduler, s.epochs) == (0.001, 6, "StepLR", 3)
    assert s.scheduler_params == {"step_size": 1, "gamma": 0.5}
    result = train(moved, overrides={"epochs": 1}, work_dir=tmp_path / "wd", progress=False)
    assert result.epochs_run == 1 and result.best_checkpoint is not None


def test_two_processes_share_one_sqlite_study(study_worker_a: Job, study_worker_b: Job) -> None:
    """Two ``pochi optimize`` processes on one config and one -o folder (conftest
    ``shared_study_config``), started with the session: one sqlite study."""
    done = [job.result() for job in (study_worker_a, study_worker_b)]
    assert [d.returncode for d in done] == [0, 0], [d.stdout + d.stderr for d in done]
    out = study_worker_a.cwd / "shared"
    import optuna

    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 2  # 1 + 1
    # one seed, two workers: each trial draws its own value (the seed moves with the trial)
    assert study.trials[0].params != study.trials[1].params
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # val_accuracy by default
    assert len(list((out / "trials").iterdir())) == 2
    assert json.loads((out / "best_params.json").read_text())["n_trials"] >= 1
    # the original's unit: its objective returned the accuracy in percent
    import math

    history = json.loads((out / "trials_history.json").read_text())
    stored = {t.number: t.value for t in study.trials}
    for t in (t for t in history if t["state"] == "COMPLETE"):
        assert math.isclose(t["value"], 100 * stored[t["number"]], abs_tol=1e-8)
        assert t["value_fraction"] == stored[t["number"]]
    best = json.loads((out / "best_params.json").read_text())
    assert math.isclose(best["best_value"], 100 * best["best_value_fraction"], abs_tol=1e-8)
    assert best["value_unit"] == "percent"
    stats = json.loads((out / "study_statistics.json").read_text())
    assert stats["direction"] == "MAXIMIZE" and stats["statistics"]["best"] == best["best_value"]
    assert set(stats["statistics"]) == {"best", "worst", "mean", "std", "n_completed",
                                        "n_pruned", "n_failed"}


# ---- bad input: caught before the first trial ---------------------------------------------

def _optimize(tmp_path: Path, data: Path, optuna: dict, **kw):
    from pochitrain.optimize.run import optimize

    config = optuna_config(tmp_path, data, {"n_trials": 1, "optuna_epochs": 1, **optuna})
    return optimize(config, output=tmp_path / "out", **kw)


def test_empty_search_space(opt_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="search_space'\\] is empty"):
        _optimize(tmp_path, opt_data, {"search_space": {}})
    assert not (tmp_path / "out").exists()


def test_invalid_categorical_choice_before_first_trial(opt_data: Path, tmp_path: Path) -> None:
    space = {"optimizer": {"type": "categorical", "choices": ["Adam", "Adagrad"]}}
    with pytest.raises(ConfigError) as err:
        _optimize(tmp_path, opt_data, {"search_space": space})
    assert "['optimizer']" in err.value.message and "'Adagrad'" in err.value.message
    assert "SGD, Adam, AdamW" in (err.value.remedy or "")
    assert not (tmp_path / "out").exists()  # no study, no trial
    space = {"learning_rat": {"type": "float", "low": 1e-4, "high": 1e-2}}
    with pytest.raises(ConfigError, match="Did you mean 'learning_rate'"):
        _optimize(tmp_path, opt_data, {"search_space": space})


def test_storage_driver_missing(opt_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}
    with pytest.raises(BackendMissingError) as err:
        _optimize(tmp_path, opt_data, {"search_space": space},
                  storage="postgresql+psycopg2://me:secret@db.example/optuna")
    assert "psycopg2" in err.value.message and "secret" not in err.value.message
    assert "pip install psycopg2-binary" in (err.value.remedy or "")


def test_sampler_and_pruner_arguments() -> None:
    from pochitrain.optimize.space import parse_space
    from pochitrain.optimize.study import (
        build_pruner,
        build_sampler,
        grid_of,
        metric_and_direction,
    )

    assert build_pruner({"pruner": "PercentilePruner(25.0, n_startup_trials=2)"})._percentile \
        == 25.0
    with pytest.raises(ConfigError, match="PercentilePruner cannot be built"):
        build_pruner({"pruner": "PercentilePruner"})  # the original's bug: needs arguments
    with pytest.raises(ConfigError, match="Did you mean 'MedianPruner'"):
        build_pruner({"pruner": "MedianPrunner"})
    params = parse_space({"optimizer": {"type": "categorical", "choices": ["SGD", "Adam"]},
                          "batch_size": {"type": "int", "low": 8, "high": 32, "step": 8}})
    assert grid_of(params) == {"optimizer": ["SGD", "Adam"], "batch_size": [8, 16, 24, 32]}
    assert type(build_sampler({"sampler": "GridSampler"}, grid_of(params))).__name__ \
        == "GridSampler"
    float_space = parse_space({"learning_rate": {"type": "float", "low": 0.1, "high": 1.0}})
    with pytest.raises(ConfigError, match="GridSampler needs a grid"):
        build_sampler({"sampler": "GridSampler"}, grid_of(float_space))
    assert metric_and_direction({"direction": "maximize"}, None) == ("val_accuracy", "maximize")
    assert metric_and_direction({"direction": "minimize"}, None) == ("val_loss", "minimize")
    assert metric_and_direction({"direction": "maximize"}, "val_loss") == ("val_loss",
                                                                           "minimize")


def test_search_space_refused_before_any_trial(opt_data: Path, tmp_path: Path) -> None:
    """step with log, a bound given as a string: a ConfigError saying so, and no study."""
    for spec, said in (
            ({"type": "float", "low": 1e-4, "high": 1e-2, "step": 1e-4, "log": True},
             "'step' and 'log': True cannot be used together"),
            ({"type": "float", "low": "0.1", "high": 1.0}, "must be a number; got '0.1' (str)"),
            ({"type": "int", "low": 8, "high": "64"}, "must be a whole number; got '64' (str)"),
            ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "needs low > 0")):
        with pytest.raises(ConfigError) as err:
            _optimize(tmp_path, opt_data, {"search_space": {"weight_decay": spec}})
        assert said in err.value.message
        assert not (tmp_path / "out").exists()  # no study.db, no trial


def test_storage_password_masked_without_user_name(opt_data: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.optimize.study import masked

    assert masked("postgresql://:S3cretPw@db:5432/optuna") == "postgresql://:***@db:5432/optuna"
    assert masked("mysql+pymysql://u:p@ss@h/db?x=a@b") == "mysql+pymysql://u:***@h/db?x=a@b"
    assert masked("sqlite:////tmp/a@b.db") == "sqlite:////tmp/a@b.db"
    config = optuna_config(tmp_path, opt_data, {"n_trials": 1, "optuna_epochs": 1, "search_space": {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}})
    rc = run(["optimize", "-c", str(config), "-o", str(tmp_path / "out"),
              "--storage", "postgresql://:S3cretPw@127.0.0.1:9/optuna"])
    out = capsys.readouterr()
    assert rc != 0 and "postgresql://:***@127.0.0.1:9/optuna" in out.err
    assert "S3cretPw" not in out.out + out.err


# A training transform that presses Ctrl+C (a real SIGINT to this process) PRESSES times on
# the first image of the trial that finds more than AFTER run folders, once (a marker file):
# the presses land in that trial's training, each handled before the next is sent
# (signal.raise_signal runs the handler before it returns).
GATE = """
class _CtrlC:
    def __call__(self, image):
        import os, signal
        from pathlib import Path
        folder = Path({folder!r})
        trials = folder / "out" / "trials"
        after = int(os.environ["CTRL_C_AFTER"])
        done = folder / f"pressed{{after}}"
        n = len(list(trials.iterdir())) if trials.is_dir() else 0
        if n > after and not done.exists():
            done.touch()
            for _ in range(int(os.environ["CTRL_C_PRESSES"])):
                signal.raise_signal(signal.SIGINT)
        return image

train_transform = transforms.Compose([transforms.Resize((16, 16)), _CtrlC(),
                                      transforms.ToTensor(), _norm])
"""


def _interrupted_run(config: Path, out: Path, after: int, presses: int,
                     monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``pochi optimize`` with Ctrl+C pressed ``presses`` times in the first trial that finds
    more than ``after`` trial folders; its exit code and what it printed."""
    monkeypatch.setenv("CTRL_C_AFTER", str(after))
    monkeypatch.setenv("CTRL_C_PRESSES", str(presses))
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    rc = run(["optimize", "-c", str(config), "-o", str(out)])
    printed = capsys.readouterr()
    return rc, printed.out + printed.err


def test_ctrl_c_stops_after_the_running_trial(opt_data: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import signal

    config = optuna_config(tmp_path, opt_data, {
        "study_name": "stop", "n_trials": 20, "optuna_epochs": 1, "pruner": None,
        "search_space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}}})
    config.write_text(config.read_text() + GATE.format(folder=str(tmp_path)))
    out = tmp_path / "out"
    import optuna

    sigint = signal.getsignal(signal.SIGINT)
    # first Ctrl+C in trial 1's training: trial 0 stays, trial 1 is FAIL "interrupted",
    # no trial 2, the study's files from the finished trials, exit 130
    rc, log = _interrupted_run(config, out, 1, 1, monkeypatch, capsys)
    assert rc == 130, log
    assert "Traceback" not in log and "validated no epoch" not in log
    assert "Ctrl+C: stopping after this batch" in log  # the press reached the training
    trials = optuna.load_study(study_name="stop", storage=f"sqlite:///{out / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"], log
    assert trials[1].user_attrs["error"] == "interrupted (Ctrl+C) after 0 of 1 epoch(s)"
    best = json.loads((out / "best_params.json").read_text())
    assert (best["best_trial"], best["n_trials"]) == (0, 2)
    history = json.loads((out / "trials_history.json").read_text())
    assert history[1]["error"].startswith("interrupted (Ctrl+C)")
    assert (out / "optimization_history.png").is_file()

    # a second Ctrl+C stops at once: the trial is FAIL "interrupted", no file rewritten
    written = (out / "best_params.json").read_bytes()
    rc, log = _interrupted_run(config, out, 2, 2, monkeypatch, capsys)
    assert rc == 130, log
    assert "Traceback" not in log and "stopped at once" in log
    assert log.count("Ctrl+C: ") >= 2  # each press was seen
    trials = optuna.load_study(study_name="stop", storage=f"sqlite:///{out / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL"]
    assert trials[2].user_attrs["error"] == "interrupted (Ctrl+C)"
    assert (out / "best_params.json").read_bytes() == written
    assert signal.getsignal(signal.SIGINT) is sigint  # the command put its handler back
