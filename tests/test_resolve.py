"""The metadata resolver reads a run's record (run.json) instead of executing its config when
the config copy has not been edited since: infer-onnx then never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pochitrain.resolve import RunConfig, find_val_data


def _run(tmp_path: Path, config_text: str) -> Path:
    run_dir = tmp_path / "20261128_001"
    (run_dir / "models").mkdir(parents=True)
    (run_dir / "config.py").write_text(config_text, encoding="utf-8")
    settings = {"val_data_root": str(tmp_path / "recorded_val"),
                "confusion_matrix_config": {"cmap": "Greens"}}
    (run_dir / "run.json").write_text(json.dumps({"settings": settings}), encoding="utf-8")
    config_time = (run_dir / "run.json").stat().st_mtime_ns - 10**9
    os.utime(run_dir / "config.py", ns=(config_time, config_time))  # written before run.json
    return run_dir / "models" / "best.onnx"


def test_recorded_settings_are_read_without_running_the_config(tmp_path: Path) -> None:
    model = _run(tmp_path, "raise SystemExit('the config must not be executed')\n")
    assert find_val_data(model) == tmp_path / "recorded_val"
    assert RunConfig.for_model(model).setting("confusion_matrix_config") == {"cmap": "Greens"}
    code = (f"import sys; from pochitrain.resolve import find_val_data; "
            f"find_val_data({str(model)!r}); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_config_edited_after_the_run_is_read(tmp_path: Path) -> None:
    model = _run(tmp_path, "val_data_root = 'edited_val'\n")
    later = (model.parents[1] / "run.json").stat().st_mtime_ns + 10**9
    os.utime(model.parents[1] / "config.py", ns=(later, later))  # edited after run.json
    assert find_val_data(model) == (model.parents[1] / "edited_val").resolve()


def test_the_config_is_executed_at_most_once(tmp_path: Path) -> None:
    """Every setting a model's context asks for comes from one execution of its config."""
    counter = tmp_path / "executions.txt"
    config = tmp_path / "config.py"
    config.write_text(f"open({str(counter)!r}, 'a').write('x')\n"
                      "val_data_root = 'val'\nconfusion_matrix_config = {'cmap': 'Reds'}\n",
                      encoding="utf-8")
    run_config = RunConfig.for_model(tmp_path / "model.onnx", config)
    assert run_config.setting("val_data_root") == str((tmp_path / "val").resolve())
    assert run_config.setting("confusion_matrix_config")["cmap"] == "Reds"
    assert run_config.setting("benchmark_env_name") is None
    assert counter.read_text() == "x"
