"""Relative paths as the original pochitrain meant them (from the working directory) beside
ours (from the config's folder): an original project folder trains from its root, and a run
folder as the original leaves it works with every command run from there."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import original_config, tiny_config

from pochitrain.bench.suite import SuiteError, load_suite
from pochitrain.cli.main import run
from pochitrain.config import load_config, preprocess_from_settings
from pochitrain.config_paths import AmbiguousPathError, MissingPathError
from pochitrain.errors import is_bilingual

RUN = "20250101_001"
CHECKPOINT = f"work_dirs/{RUN}/models/best_epoch3.pth"


def _original_project(root: Path, data: Path) -> Path:
    """root/configs/pochi_train_config.py (data/train, data/val, work_dirs, all relative),
    root/data/{train,val}: the layout of the original's sample project."""
    shutil.copytree(data / "train", root / "data" / "train")
    shutil.copytree(data / "val", root / "data" / "val")
    written = original_config(root / "configs", Path("data"))
    text = written.read_text(encoding="utf-8").replace(repr(str(root / "configs" / "work_dirs")),
                                                       "'work_dirs'")
    written.unlink()
    config = root / "configs" / "pochi_train_config.py"
    config.write_text(text, encoding="utf-8")
    return config


@pytest.fixture(scope="module")
def project(compat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An original project with a run folder as the original leaves it: the config copied
    verbatim, the checkpoint in the original's format (``model.``-prefixed state dict), no
    run.json."""
    root = tmp_path_factory.mktemp("original_project")
    config = _original_project(root, compat_data)
    run_dir = root / "work_dirs" / RUN
    (run_dir / "models").mkdir(parents=True)
    shutil.copy(config, run_dir / "config.py")
    from pochitrain.models import build_model

    torch.manual_seed(1)
    model = build_model("resnet18", 3).eval()
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {},
                "best_accuracy": 66.67}, root / CHECKPOINT)
    return root


def test_original_project_trains_from_its_root(tiny_data: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = _original_project(tmp_path, tiny_data)
    monkeypatch.chdir(tmp_path)
    assert run(["train", "--quiet"]) == 0  # default: configs/pochi_train_config.py
    out = capsys.readouterr().out
    # one notice per path, though the command reads the config more than once
    assert out.count(f"working directory: {tmp_path / 'data' / 'train'}\n") == 1
    assert "作業ディレクトリから解決しました" in out
    assert not (tmp_path / "configs" / "work_dirs").exists()
    run_dir = next((tmp_path / "work_dirs").iterdir())  # where the original put it
    assert (run_dir / "config.py").read_bytes() == config.read_bytes()  # verbatim copy
    settings = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["settings"]
    assert settings["train_data_root"] == str(tmp_path / "data" / "train")
    assert settings["val_data_root"] == str(tmp_path / "data" / "val")
    assert settings["work_dir"] == str(tmp_path / "work_dirs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the run's record keeps its copy usable from anywhere
    copy = load_config(run_dir / "config.py")
    assert copy.train_data_root == str(tmp_path / "data" / "train")
    assert copy.val_data_root == str(tmp_path / "data" / "val")


@pytest.mark.parametrize("data", [[], ["-d", "data/val"]])
def test_original_run_folder_infers_from_the_project_root(
        project: Path, data: list[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    assert run(["infer", CHECKPOINT, *data, "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert next((tmp_path / "out").glob("*_inference_results.csv")).stat().st_size > 0


def test_infer_executes_the_runs_config_once(project: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The original's checkpoint takes class names and preprocessing from the run's config,
    and the data folder comes from the same config: one execution serves both."""
    import pochitrain.config

    executed: list[Path] = []
    real = pochitrain.config.load_config

    def counting(path: Path | str, *args: object, **kwargs: object) -> object:
        executed.append(Path(path))
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pochitrain.config, "load_config", counting)
    monkeypatch.chdir(project)
    assert run(["infer", CHECKPOINT, "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert executed == [project / "work_dirs" / RUN / "config.py"]


def test_original_run_folder_exports_and_infers_onnx(project: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    onnx_path = tmp_path / "best_epoch3.onnx"
    shutil.copytree(project / "work_dirs" / RUN, tmp_path / RUN)  # a folder of this test's own
    model = tmp_path / RUN / "models" / "best_epoch3.pth"
    assert run(["export-onnx", str(model), "--input-size", "32", "32", "-o",
                str(onnx_path)]) == 0
    assert run(["infer-onnx", str(onnx_path), "-d", "data/val", "-o", str(tmp_path / "out"),
                "--quiet"]) == 0
    # convert --int8 calibrates on the config's val_data_root, relative to the project root
    local = tmp_path / RUN / "models" / "best_epoch3.onnx"
    shutil.copy(onnx_path, local)
    assert run(["convert", "--no-progress", str(local), "--int8", "--calib-samples", "6",
                "--max-accuracy-drop", "100"]) == 0
    assert (local.parent / "best_epoch3_int8.engine").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_original_run_folder_serves_from_the_project_root(project: Path, tmp_path: Path) -> None:
    import httpx
    from serving import http_get

    port = _free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "pochitrain.cli.main", "serve", CHECKPOINT,
                             "--port", str(port), "--decode-workers", "1"], cwd=project,
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        end = time.monotonic() + 90
        while time.monotonic() < end and proc.poll() is None:
            try:
                health = http_get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1)
                if health.status_code == 200:
                    assert health.json()["model_loaded"] is True
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail(f"server not ready:\n{log.read_text()}")
    finally:
        proc.terminate()
        proc.wait(30)


def test_run_folder_from_elsewhere_names_the_missing_path(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The original's run folder from another directory: the unresolved data folder is the
    error (not the val_transform size it hid), with both places tried."""
    monkeypatch.chdir(tmp_path)
    code = run(["infer", str(project / CHECKPOINT), "-d", str(project / "data" / "val"),
                "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    assert "val_transform does not fix" not in err
    assert "train_data_root = 'data/train'" in err
    assert str(tmp_path / "data" / "train") in err
    assert str(project / "work_dirs" / RUN / "data" / "train") in err


def test_missing_val_data_root_names_both_candidates(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``pochi infer`` without --data reads val_data_root: unresolved, it is the error."""
    run_dir = tmp_path / RUN
    shutil.copytree(project / "work_dirs" / RUN, run_dir)
    config = run_dir / "config.py"
    config.write_text(config.read_text(encoding="utf-8").replace(
        "train_data_root = 'data/train'", f"train_data_root = {str(project / 'data/train')!r}"),
        encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code = run(["infer", str(run_dir / "models" / "best_epoch3.pth"), "-o",
                str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    assert "val_data_root = 'data/val'" in err
    assert str(tmp_path / "data" / "val") in err and str(run_dir / "data" / "val") in err


def test_missing_path_error_names_both_candidates(project: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_config(project / "work_dirs" / RUN / "config.py")
    with pytest.raises(MissingPathError) as caught:
        preprocess_from_settings(settings)
    assert is_bilingual(caught.value.message)
    assert str(tmp_path / "data" / "train") in caught.value.message


def test_config_folder_paths_work_from_anywhere(tiny_data: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "project"
    shutil.copytree(tiny_data, folder / "data")
    config = tiny_config(folder, Path("data"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_config(config)
    assert settings.train_data_root == str(folder / "data" / "train")
    assert settings.work_dir == str(folder / "work_dirs")  # beside the config, as before
    assert "working directory" not in capsys.readouterr().out


def test_a_path_in_both_places_is_refused(tiny_data: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "project"
    shutil.copytree(tiny_data, folder / "data")
    shutil.copytree(tiny_data, tmp_path / "data")
    config = tiny_config(folder, Path("data"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AmbiguousPathError) as caught:
        load_config(config)
    message = caught.value.message
    assert is_bilingual(message)
    assert str(tmp_path / "data" / "train") in message
    assert str(folder / "data" / "train") in message


def test_work_dir_follows_the_data_folders(tiny_data: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """work_dirs in both places is no error: the output goes beside the data that was found;
    with absolute data paths, to the working directory only when just it has work_dirs."""
    folder = tmp_path / "project"
    shutil.copytree(tiny_data, folder / "data")
    (folder / "work_dirs").mkdir()
    (tmp_path / "work_dirs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_config(tiny_config(folder, Path("data"))).work_dir == str(folder / "work_dirs")
    absolute = tiny_config(tmp_path / "absolute", folder / "data")
    assert load_config(absolute).work_dir == str(tmp_path / "work_dirs")
    (tmp_path / "absolute" / "work_dirs").mkdir()
    assert load_config(absolute).work_dir == str(tmp_path / "absolute" / "work_dirs")


SUITE = """
suites:
  s:
    cases:
      - {{runtime: pytorch, model_path: {model}}}
"""


def test_suite_model_path_from_the_working_directory(project: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "configs").mkdir()
    suite_file = tmp_path / "configs" / "bench_suites.yaml"
    suite_file.write_text(SUITE.format(model=CHECKPOINT), encoding="utf-8")
    monkeypatch.chdir(project)
    assert load_suite(suite_file, "s").cases[0].model_path == project / CHECKPOINT
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SuiteError) as caught:
        load_suite(suite_file, "s")
    assert is_bilingual(caught.value.message)
    assert str(tmp_path / CHECKPOINT) in caught.value.message
    assert str(tmp_path / "configs" / CHECKPOINT) in caught.value.message
