"""vis-grad / pochi vis-grad: the gradient-trace PNGs, and bad CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pochitrain.cli.main import run

KINDS = ("timeline_all", "timeline_early", "timeline_late", "heatmap",
         "statistics_initial_vs_final", "statistics_stability", "statistics_max",
         "statistics_min", "snapshots", "snapshots_linear")


def _trace(path: Path, layers: int = 5, epochs: int = 8) -> Path:
    from pochitrain.training.gradients import GradientTracker  # same writer as training

    header = ["epoch"] + [f"layer{i}" for i in range(1, layers + 1)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for e in range(1, epochs + 1):
            w.writerow([e] + [f"{(0.5 ** i) / e:.6g}" for i in range(layers)])
    assert GradientTracker  # the format of training/gradients.py
    return path


def test_few_layers_have_no_early_late_split(tmp_path: Path) -> None:
    from pochitrain.gradient_plots import plot_trace

    files = plot_trace(_trace(tmp_path / "g.csv", layers=2, epochs=1))
    assert len(files) == 8 and not (tmp_path / "g_timeline_early.png").exists()


def test_worker_processes_draw_the_same_files(tmp_path: Path) -> None:
    """The plots drawn by worker processes are the bytes the command draws itself."""
    from pochitrain.gradient_plots import draw_figure, plot_trace, read_trace

    csv_path = _trace(tmp_path / "g.csv", layers=4, epochs=3)
    spread = plot_trace(csv_path, tmp_path / "spread", workers=2)
    assert [p.name for p in spread] == [f"g_{kind}.png" for kind in KINDS]
    for kind in ("timeline_all", "heatmap"):
        here = draw_figure(read_trace(csv_path), "", kind, tmp_path / f"{kind}.png")
        assert here.read_bytes() == (tmp_path / "spread" / f"g_{kind}.png").read_bytes()


def test_workers_that_die_leave_their_figures_to_the_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawned workers that exit as they start (a sitecustomize on their PYTHONPATH ends
    every multiprocessing child): the pool breaks, and the command draws every figure itself,
    the bytes it draws without workers."""
    import os

    from pochitrain.gradient_plots import draw_figure, plot_trace, read_trace

    site = tmp_path / "site"
    site.mkdir()
    died = tmp_path / "died"
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif '--multiprocessing-fork' in sys.argv:\n"
        f"    open({str(died)!r}, 'a').write('x')\n    os._exit(3)\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    csv_path = _trace(tmp_path / "g.csv", epochs=2)
    broken = plot_trace(csv_path, tmp_path / "broken", workers=2)
    assert [p.name for p in broken] == [f"g_{kind}.png" for kind in KINDS]
    assert died.read_text() in ("x", "xx")  # the workers did start, and died
    for kind in ("timeline_all", "heatmap"):
        here = draw_figure(read_trace(csv_path), "", kind, tmp_path / f"{kind}.png")
        assert here.read_bytes() == (tmp_path / "broken" / f"g_{kind}.png").read_bytes()


def test_vis_grad_on_a_training_runs_csv(tmp_path: Path) -> None:
    """The CSV the tracker writes during training (real gradients of a tiny model), drawn
    as the ten plots."""
    import torch
    from PIL import Image

    from pochitrain.gradient_plots import read_trace
    from pochitrain.models import build_model
    from pochitrain.training.gradients import GradientTracker

    model = build_model("resnet18", 3)
    tracker = GradientTracker(model, tmp_path / "gradient_trace.csv",
                              exclude_patterns=["fc\\.", "\\.bias"], aggregation_method="rms")
    for epoch in (1, 2):
        loss = model(torch.randn(2, 3, 32, 32)).sum()
        model.zero_grad()
        loss.backward()
        tracker.after_backward()
        tracker.epoch_end(epoch)
    trace = read_trace(tmp_path / "gradient_trace.csv")
    assert list(trace.epochs) == [1.0, 2.0] and "layer3" in trace.layers
    assert (trace.values > 0).all()
    out = tmp_path / "plots"  # --output-dir: the PNGs go there, none beside the CSV
    assert run(["vis-grad", str(tmp_path / "gradient_trace.csv"), "--output-dir", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == 10 and not list(tmp_path.glob("*.png"))
    for kind in KINDS:  # the ten plots, at 150 dpi
        with Image.open(out / f"gradient_trace_{kind}.png") as image:
            assert image.format == "PNG" and image.size[0] >= 1000


@pytest.mark.parametrize("content, words", [
    (None, ["not found"]),
    ("", ["first line must be"]),
    ("loss,acc\n1,2\n", ["first line must be"]),
    ("epoch,layer1\n", ["no epochs"]),
    ("epoch,layer1\n1,abc\n", ["line 2", "not a number"]),
    ("epoch,layer1,layer2\n1,0.1\n", ["line 2", "header has 3"]),
    (b"\xff\xfe\x00garbage", ["Cannot read"]),
    ("epoch,learning_rate,train_loss,train_accuracy\n1,0.1,2.3,10\n",
     ["not a gradient trace CSV", "expected columns", "train_loss"]),
    ("epoch,layer1\n1,-0.5\n", ["line 2", "never negative"]),
    ("epoch,layer1,layer2\n1,nan,inf\n", ["no finite gradient norm"]),
])
def test_bad_gradient_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          content: str | bytes | None, words: list[str]) -> None:
    path = tmp_path / "gradient_trace.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    assert run(["vis-grad", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err
    assert not list(tmp_path.glob("*.png"))


def test_nan_values_are_left_out_without_warnings(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    path = tmp_path / "g.csv"
    path.write_text("epoch,layer1,layer2,layer3,layer4\n1,nan,0.1,0.2,0.3\n"
                    "2,nan,0.2,nan,inf\n3,nan,0.3,0.1,0.2\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert run(["vis-grad", str(path)]) == 0
    said = capsys.readouterr()
    assert "NaN/inf" in said.out + said.err and "layer1" in said.out + said.err
    assert len(list(tmp_path.glob("*.png"))) == 8  # layer1 has no value: 3 layers drawn


def test_unusable_csv_path_and_output_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import errno
    import tempfile

    csv_path = _trace(tmp_path / "gradient_trace.csv")
    assert run(["vis-grad", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is a folder" in err and str(csv_path) in err  # and names the CSV inside
    assert run(["vis-grad", str(csv_path), "--output-dir", str(csv_path)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err

    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # the CSV's folder takes no file
    assert run(["vis-grad", str(csv_path)]) == 1
    err = capsys.readouterr().err
    assert "Cannot write to the output folder" in err and "--output-dir" in err
    assert "Traceback" not in err and not list(tmp_path.glob("*.png"))


def test_the_titles_method_comes_from_run_json_without_running_the_config(
        tmp_path: Path, tiny_data: Path) -> None:
    """Our run folder: run.json says the method, and the config (which would stop the
    command if executed) is left alone; a folder of the original's: its config.py."""
    import json

    from tiny import tiny_config

    from pochitrain.cli.vis_grad import run_aggregation

    ours = tmp_path / "20260101_001"
    ours.mkdir()
    (ours / "config.py").write_text("raise SystemExit('executed')\n", encoding="utf-8")
    (ours / "run.json").write_text(json.dumps({"settings": {"gradient_tracking_config": {
        "aggregation_method": "max"}}}), encoding="utf-8")
    assert run_aggregation(_trace(ours / "gradient_trace.csv")) == "max"
    original = tmp_path / "20260101_002"
    tiny_config(original, tiny_data,
                extra="gradient_tracking_config = {'aggregation_method': 'rms'}\n")
    assert run_aggregation(_trace(original / "gradient_trace.csv")) == "rms"
    (original / "run.json").write_text('{"settings": "edited by hand"}', encoding="utf-8")
    assert run_aggregation(original / "gradient_trace.csv") == "rms"
