"""Inputs a hostile user tries on the command-line verbs: each is a message and the right
exit code, never a traceback, and leaves nothing behind under a final name."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from background import Job

from pochitrain.config import load_config
from pochitrain.errors import ConfigError

# no bytecode written by the children (see test_exclusive_outputs.py)
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
             "POCHI_BYTECODE_CACHE": "0"}
NOT_UTF8 = os.fsdecode(b"bad\xffname.png")  # a file name as Linux allows it

VAL_TF = """
from torchvision import transforms
val_transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.5] * 3)])
"""


def _pochi(*argv: str) -> list[str]:
    return [sys.executable, "-m", "pochitrain.cli.main", *argv]


@pytest.mark.parametrize("body, words", [
    ("learning_rate = float('nan')", "'learning_rate' must be a finite number > 0.0"),
    ("weight_decay = float('inf')", "'weight_decay' must be a finite number >= 0.0"),
    ("early_stopping = {'patience': 2, 'min_delta': float('nan')}", "min_delta"),
    ("seed = 2**40", "'seed' must be a whole number from 0 to 4294967295"),
    ("batch_size = 10**30", "'batch_size' must be a whole number from 1 to 2147483647"),
    ("scheduler = 'StepLR'\nscheduler_params = {'step_size': 1, 'gamma': float('nan')}",
     "not a finite number"),
])
def test_numbers_torch_or_numpy_cannot_take_are_refused(tmp_path: Path, body: str,
                                                        words: str) -> None:
    (tmp_path / "train").mkdir()
    path = tmp_path / "config.py"
    path.write_text(f"{VAL_TF}\ntrain_data_root = 'train'\n{body}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert words in err.value.message


def test_file_names_that_are_not_utf8(untrained_checkpoint: Path, tiny_data: Path,
                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Linux allows any bytes in a file name: the run's fingerprint and the results CSV
    still work, the CSV stays UTF-8 with the name escaped."""
    from pochitrain.cli.main import run
    from pochitrain.data import scan_image_folder

    data = tmp_path / "val"
    shutil.copytree(tiny_data / "val", data)
    first = min((data / "0").iterdir())
    shutil.copy(first, data / "0" / NOT_UTF8)
    assert len(scan_image_folder(data).fingerprint()) == 64
    out = tmp_path / "out"
    code = run(["infer", str(untrained_checkpoint), "--data", str(data), "-o", str(out),
                "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    csv = (out / "pytorch_inference_results.csv").read_bytes().decode("utf-8")
    assert "bad\\udcffname.png" in csv


def test_sigterm_cleans_up_like_ctrl_c(gated_export: Job) -> None:
    """``kill`` (SIGTERM) while export-onnx is about to publish its file: the temp file is
    removed, nothing is left under the final name, exit code 143. The command started with
    the session (conftest ``gated_export``) and waits at the gate with its temp file written."""
    assert gated_export.proc is not None, gated_export.problem
    deadline = time.monotonic() + 600  # a hang guard, not a timing
    while not list((gated_export.cwd / "gate").glob("arrived-*")) \
            and gated_export.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    gated_export.proc.send_signal(signal.SIGTERM)
    done = gated_export.result()
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-1500:]
    assert "Interrupted" in done.stderr and "Traceback" not in done.stderr
    assert list((gated_export.cwd / "out").iterdir()) == []


def test_odd_sizes_and_files_for_export_and_convert(untrained_checkpoint: Path,
                                                    onnx_export: Callable[..., Path],
                                                    tiny_data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.cli.main import run
    from pochitrain.onnx.calibration import list_sha256

    # an input size whose tensors cannot be allocated: a message, not a traceback
    out = tmp_path / "big.onnx"
    code = run(["export-onnx", str(untrained_checkpoint), "--input-size", "100000", "100000",
                "-o", str(out), "--skip-verify"])
    err = capsys.readouterr().err
    assert code == 1 and "ran out of memory" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
    # a pickle that is not a checkpoint: the error alone, no warning of torch's unpickler
    pickled = tmp_path / "dict.pth"
    pickled.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert run(["export-onnx", str(pickled), "--skip-verify"]) == 1
    err = capsys.readouterr().err
    assert "not a readable PyTorch checkpoint" in err and "Warning" not in err, err
    # a workspace size TensorRT cannot take is a usage error
    onnx_path = onnx_export(untrained_checkpoint, 1)
    with pytest.raises(SystemExit) as exit_:
        run(["convert", str(onnx_path), "--workspace-size", "99999999999999999999999"])
    assert exit_.value.code == 2 and "--workspace-size" in capsys.readouterr().err
    # -c without val_transform on a model that has its own preprocessing: say what -c does
    config = tmp_path / "config.py"
    config.write_text("epochs = 1\n", encoding="utf-8")
    code = run(["infer", str(onnx_path), "--data", str(tiny_data / "val"), "-c", str(config),
                "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "carries no pochitrain metadata" not in err, err
    assert "Drop -c/--config-path to use the model's own preprocessing" in err
    # which calibration images were used, when a name is not UTF-8
    assert len(list_sha256([(tmp_path / NOT_UTF8, 0)], tmp_path)) == 64


def test_infer_options_of_another_runtime_are_refused(untrained_checkpoint: Path,
                                                      onnx_export: Callable[..., Path],
                                                      tiny_data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--device on an ONNX model and --providers on a checkpoint would be ignored (the run
    not on what was asked); a warm-up count past any use would only hang."""
    from pochitrain.bench.suite import SuiteError, load_suite
    from pochitrain.cli.main import run

    onnx_path = onnx_export(untrained_checkpoint, 1)
    data = str(tiny_data / "val")
    assert run(["infer", str(onnx_path), "--data", data, "--device", "cuda"]) == 2
    assert "--device cuda is a PyTorch (.pth) option" in capsys.readouterr().err
    assert run(["infer", str(untrained_checkpoint), "--data", data, "--providers", "cpu"]) == 2
    assert "--providers is an ONNX Runtime option" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        run(["infer", str(onnx_path), "--data", data, "--warmup", "1001"])
    assert exit_.value.code == 2 and "at most 1000" in capsys.readouterr().err
    suite = tmp_path / "s.yaml"
    suite.write_text("suites:\n  s:\n    defaults: {warmup: 99999999}\n    cases:\n"
                     f"      - {{name: a, runtime: onnx, model_path: {onnx_path}, data: {data}}}\n",
                     encoding="utf-8")
    with pytest.raises(SuiteError, match="warmup must be at most 1000"):
        load_suite(suite, "s")
    assert list(tmp_path.iterdir()) == [suite]


def test_explain_and_vis_grad_take_odd_files(untrained_checkpoint: Path, tiny_data: Path,
                                             tmp_path: Path,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    """An image whose name is not UTF-8 is drawn with its name escaped; a gradient CSV saved
    with a byte-order mark (Excel) is read; a crowded plot draws without a warning (from
    the worker processes that draw so many layers too: their stderr is the command's)."""
    from pochitrain.cli.main import run

    image = tmp_path / NOT_UTF8
    shutil.copy(min((tiny_data / "val" / "0").iterdir()), image)
    out = tmp_path / "x"
    assert run(["explain", str(untrained_checkpoint), str(image), "-o", str(out),
                "--quiet"]) == 0, capfd.readouterr().err
    assert (out / os.fsdecode(b"bad\xffname_gradcam.png")).is_file()
    trace = tmp_path / "g.csv"
    layers = [f"layer{i}" for i in range(120)]
    rows = [",".join(["epoch", *layers])] + [
        ",".join([str(e), *(str(1.0 + e + i) for i in range(120))]) for e in (1, 2)]
    trace.write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")
    assert run(["vis-grad", str(trace), "--output-dir", str(tmp_path / "plots")]) == 0
    assert len(list((tmp_path / "plots").glob("g_*.png"))) == 10
    err = capfd.readouterr().err
    assert "Warning" not in err and "Error" not in err, err


def test_quickstart_never_takes_a_users_project_for_its_sample(tmp_path: Path) -> None:
    """``pochi quickstart DIR`` reuses DIR/data only when it is the sample it wrote: a
    project of the user's there (config.py and train/) is refused, not trained."""
    from pochitrain.errors import OutputExistsError
    from pochitrain.pipeline.quickstart import sample_data_config
    from pochitrain.sample_data import DIGITS_CONFIG

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "config.py").write_text("epochs = 100\n", encoding="utf-8")
    with pytest.raises(OutputExistsError, match="not empty"):
        sample_data_config(data)
    (data / "config.py").write_text(DIGITS_CONFIG, encoding="utf-8")
    assert sample_data_config(data) == data / "config.py"


def test_resume_says_when_the_training_images_changed(
        capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.training.resume import warn_if_data_changed

    payload = {"meta": {"source": {"train_data_fingerprint": "a" * 64}}}
    warn_if_data_changed(payload, "a" * 64)
    assert "changed" not in capsys.readouterr().out
    warn_if_data_changed(payload, "b" * 64)
    assert "The training images changed" in capsys.readouterr().out
