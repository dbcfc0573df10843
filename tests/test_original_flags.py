"""Flags, commands and a warning as the original pochitrain's scripts use them: --debug,
--pipeline current|fast (and gpu without a GPU), serve --backend, the bench console script,
and pochi optimize's warning about a searched learning rate that cannot matter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_config

from pochitrain.cli.main import build_parser, run

CUDA = torch.cuda.is_available()
ALL_GROUPS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")


def test_debug_before_and_after_the_verb() -> None:
    parse = build_parser(verb="train").parse_args
    assert parse(["--debug", "train"]).debug is True  # the original's parser
    assert parse(["train", "--debug"]).debug is True  # the original's README
    assert parse(["train"]).debug is False
    for prog in ("infer-onnx", "infer-trt", "bench"):
        args = ["m.x", "--debug"] if prog != "bench" else ["--suite", "base", "--debug"]
        assert build_parser(prog, only=prog).parse_args(args).debug is True


def test_debug_prints_the_message_then_the_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    missing = str(tmp_path / "nowhere" / "config.py")
    assert run(["train", "--config", missing]) != 0
    plain = capsys.readouterr().err
    assert "Traceback" not in plain
    assert run(["--debug", "train", "--config", missing]) != 0
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.index("エラー / Error:") < err.index("Traceback")
    assert any("arguments: --debug train" in r.getMessage()  # the verbose log
               for r in caplog.records if r.name == "pochitrain" and r.levelname == "DEBUG")
    onnx = str(tmp_path / "missing.onnx")
    assert run([onnx, "--debug"], prog="infer-onnx", only="infer-onnx") != 0
    err = capsys.readouterr().err
    assert "missing.onnx" in err and "Traceback" in err
    suites = str(tmp_path / "none.yaml")
    assert run(["--suite", "base", "--suites-file", suites, "--debug"], prog="bench",
               only="bench") != 0
    assert "Traceback" in capsys.readouterr().err


def test_original_pipeline_names_run_the_cpu_pipeline(
        untrained_checkpoint: Path, tiny_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    for prog in ("infer-onnx", "infer-trt"):
        for name in ("current", "fast"):
            args = build_parser(prog, only=prog).parse_args(["m", "--pipeline", name])
            assert args.pipeline == name
    assert run(["infer", str(untrained_checkpoint), "--data", str(tiny_data / "val"),
                "--output", str(tmp_path / "current"), "--pipeline", "current",
                "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "--pipeline current は CPU パイプラインで実行します" in out
    assert "--pipeline current (the original's name) runs as --pipeline cpu" in out
    summary = next((tmp_path / "current").glob("*summary.txt")).read_text(encoding="utf-8")
    assert "cpu (PIL" in summary


@pytest.mark.skipif(CUDA, reason="checks the machine without a GPU")
def test_gpu_pipeline_without_a_gpu_falls_back(
        untrained_checkpoint: Path, tiny_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["infer", str(untrained_checkpoint), "--data", str(tiny_data / "val"),
                "--output", str(tmp_path / "gpu"), "--pipeline", "gpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "CPU パイプラインで実行します" in out and "CPU pipeline (PIL) runs instead" in out
    summary = next((tmp_path / "gpu").glob("*summary.txt")).read_text(encoding="utf-8")
    assert "no CUDA GPU for --pipeline gpu" in summary


def test_serve_backend_checked_against_the_model_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.cli.serve import check_backend

    for model, backend in (("m.pth", "pytorch"), ("m.onnx", "onnx"), ("m.engine", "trt"),
                           ("m.engine", "tensorrt"), ("m.onnx", None)):
        check_backend(model, backend)
    assert run(["serve", str(tmp_path / "m.onnx"), "--backend", "pytorch"]) == 2
    err = capsys.readouterr().err
    assert "--backend pytorch ですが" in err and "onnx 用のモデルです" in err
    assert "--backend pytorch was given, but" in err and "is for the onnx runtime" in err
    assert err.index("ですが") < err.index("was given")
    assert build_parser(verb="serve").parse_args(["serve", "m.pth",
                                                  "--backend", "pytorch"]).backend == "pytorch"


def test_bench_console_script() -> None:
    bench = Path(sys.executable).parent / "bench"
    if not bench.exists():
        pytest.skip("the package is not installed with its console scripts")
    done = subprocess.run([str(bench), "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    for option in ("--suite", "--suites-file", "--aggregate-only", "--input-dir",
                   "--fail-fast", "--debug"):
        assert option in done.stdout
    assert done.stdout.startswith("usage: bench")


def _optuna_config(folder: Path, data: Path, rates: dict[str, float], space: dict) -> Path:
    optuna = {"n_trials": 1, "optuna_epochs": 1, "search_space": space}
    extra = (f"enable_layer_wise_lr = True\nlayer_wise_lr_config = "
             f"{{'layer_rates': {rates!r}}}\noptuna = {optuna!r}\n")
    return tiny_config(folder, data, extra=extra, model="resnet18")  # resnet's layer groups


LR = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
WARNING = "The searched learning_rate cannot matter"


def test_optimize_warns_once_before_the_first_trial(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("optuna")
    from pochitrain.errors import TrainingError
    from pochitrain.optimize import run as optimize_run

    seen: list[str] = []

    def first_trial(self: object, trial: object) -> float:
        seen.append(capsys.readouterr().out)
        raise TrainingError("試行なし\nNo trial in this test.")

    monkeypatch.setattr(optimize_run.Objective, "__call__", first_trial)
    config = _optuna_config(tmp_path, tiny_data, dict.fromkeys(ALL_GROUPS, 1e-3), LR)
    with pytest.raises(TrainingError):
        optimize_run.optimize(config, output=tmp_path / "out")
    assert len(seen) == 1
    assert seen[0].count(WARNING) == 1 and "learning_rate は効きません" in seen[0]
    assert WARNING not in capsys.readouterr().out


def test_optimize_learning_rate_warning_only_when_it_cannot_matter(
        tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.config import load_config
    from pochitrain.optimize.space import parse_space, warn_unused_learning_rate

    def warned(rates: dict[str, float], space: dict, name: str) -> bool:
        config = _optuna_config(tmp_path / name, tiny_data, rates, space)
        warn_unused_learning_rate(parse_space(space), load_config(config))
        return WARNING in capsys.readouterr().out

    all_rates = dict.fromkeys(ALL_GROUPS, 1e-3)
    assert warned(all_rates, LR, "all")
    assert not warned({"fc": 1e-2}, LR, "fc_only")  # the other groups take learning_rate
    searched_fc = {**LR, "layer_rates.fc": {"type": "float", "low": 1e-3, "high": 1e-1}}
    assert warned({g: 1e-3 for g in ALL_GROUPS if g != "fc"}, searched_fc, "searched_fc")
    assert not warned(all_rates, {"weight_decay": {"type": "float", "low": 0, "high": 0.1}},
                      "no_lr")
    switch = {**LR, "enable_layer_wise_lr": {"type": "categorical", "choices": [True, False]}}
    assert not warned(all_rates, switch, "switch")  # trials without layer-wise rates
