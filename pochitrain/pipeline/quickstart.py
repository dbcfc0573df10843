"""`pochi quickstart`: every verb on the built-in digits, ending with one table (and the
digits folders of `pochi sample-data`).

sample data -> train -> infer (PyTorch) -> export-onnx -> infer-onnx -> convert FP32 / FP16 /
INT8 -> infer-trt. A step that cannot run here (no TensorRT backend, no GPU) is reported with
the reason instead of failing the whole run; a step that fails for real makes the exit code 1.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pochitrain.console import console, info
from pochitrain.errors import BackendMissingError, EngineLoadError, OutputExistsError, PochiError
from pochitrain.workspace import make_folder

COLOURS = {"ok": "green", "skipped": "yellow", "failed": "red"}  # of a step's status


@dataclass
class Step:
    name: str
    status: str  # "ok" | "skipped" | "failed"
    detail: str = ""
    path: Path | None = None
    seconds: float = 0.0


@dataclass
class QuickstartReport:
    root: Path
    steps: list[Step] = field(default_factory=list)
    runtimes: list[tuple[str, Any]] = field(default_factory=list)  # (label, InferenceResult)
    missing_runtimes: list[tuple[str, str]] = field(default_factory=list)  # (label, why)

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.steps)


def _run_step(report: QuickstartReport, name: str, fn: Callable[[], Any],
              describe: Callable[[Any], tuple[str, Path | None]]) -> Any:
    """Run one step and record it; an error saying it cannot run here makes it a skip."""
    info(f"\n[bold cyan]== {name} ==[/bold cyan]")
    start = time.perf_counter()
    try:
        value = fn()
    except PochiError as exc:
        status = "skipped" if isinstance(exc, (BackendMissingError, EngineLoadError)) else "failed"
        report.steps.append(Step(name, status, exc.message, seconds=time.perf_counter() - start))
        info(f"[{COLOURS[status]}]{status}:[/{COLOURS[status]}] {exc.message}")
        return None
    detail, path = describe(value)
    report.steps.append(Step(name, "ok", detail, path, time.perf_counter() - start))
    return value


def quickstart(root: Path | str = "pochi_quickstart", epochs: int | None = None,
               progress: bool = True) -> QuickstartReport:
    from pochitrain.pipeline.infer import infer
    from pochitrain.training.run import run_training as train

    root = Path(root).resolve()
    report = QuickstartReport(root)
    step = functools.partial(_run_step, report)

    data_dir = root / "data"
    config = step("sample data", lambda: sample_data_config(data_dir),
                  lambda cfg: ("digits 0-9, 32x32 RGB PNG", data_dir))
    if config is None:
        return report
    trained = step("train", lambda: train(config, overrides={"epochs": epochs} if epochs else None,
                                          work_dir=root / "work_dirs", progress=progress),
                   _describe_training)
    if trained is None or trained.best_checkpoint is None:
        return report
    best = trained.best_checkpoint
    val = data_dir / "val"

    def infer_step(label: str, model: Path | None) -> None:
        if model is None:
            return
        outcome = step(f"infer ({label})",
                       lambda: infer(model, data=val, batch_size=32 if label != "tensorrt" else None,
                                     progress=progress),
                       lambda o: (f"accuracy {100 * (o.result.accuracy or 0):.2f}%", o.out_dir))
        if outcome is not None:
            report.runtimes.append((label, outcome.result))
        elif report.steps[-1].status == "skipped":
            report.missing_runtimes.append((label, report.steps[-1].detail))

    infer_step("pytorch", best)

    from pochitrain.pipeline.export_onnx import export_onnx

    exported = step("export-onnx", lambda: export_onnx(best, data=val, progress=progress),
                    lambda e: (f"input shape {e.input_shape}", e.path))
    onnx_path = exported.path if exported is not None else None
    infer_step("onnx", onnx_path)
    if onnx_path is None:
        return report

    engines: dict[str, Path] = {}
    for precision in ("fp32", "fp16", "int8"):
        result = step(f"convert {precision}",
                      lambda p=precision: _convert(onnx_path, p, val),  # type: ignore[misc]
                      lambda r: (f"{r.engine_size / 1e6:.1f} MB, built in {r.build_seconds:.1f} s",
                                 r.engine_path))
        if result is not None:
            engines[precision] = result.engine_path
        if report.steps[-1].status == "skipped":
            break  # no backend: the other precisions would say the same
    for precision, engine in engines.items():
        infer_step("tensorrt" if precision == "fp32" else f"tensorrt {precision}", engine)
    if not engines:
        report.missing_runtimes.append(("tensorrt", "no engine was built (see convert)"))
    return report


def write_sample_data(out_dir: Path | str) -> Path:
    """Write DIR/train, DIR/val and DIR/config.py; return the config's path.

    DIR must not exist or be empty: nothing is ever overwritten.
    """
    from pochitrain.sample_data import write_digits, write_digits_config

    out_dir = Path(out_dir).expanduser()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OutputExistsError("指定したパスはフォルダではありません\n"
                                    f"{out_dir} exists and is not a folder.",
                                    "Choose a new folder name for the sample data.")
        if any(out_dir.iterdir()):
            raise OutputExistsError("指定したフォルダは空ではありません\n"
                                    f"{out_dir} already exists and is not empty.",
                                    "Choose a new (or empty) folder: existing files are never "
                                    "overwritten.")
    make_folder(out_dir, "Choose a writable location.")
    write_digits(out_dir)
    return write_digits_config(out_dir / "config.py")


def sample_data_config(data_dir: Path) -> Path:
    """Write the digits once; a second quickstart in the same folder reuses them."""
    from pochitrain.sample_data import DIGITS_CONFIG

    config = data_dir / "config.py"
    if config.is_file() and (data_dir / "train").is_dir() and _first_line(config) == \
            DIGITS_CONFIG.partition("\n")[0]:  # not a project of the user's that is there
        info(f"reusing the sample data in {data_dir}")
        return config
    return write_sample_data(data_dir)


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n")
    except OSError:
        return ""


def _describe_training(result: Any) -> tuple[str, Path]:
    acc = result.best_val_accuracy
    acc_text = f"{100 * acc:.2f}%" if acc is not None else "n/a"
    detail = (f"best val accuracy {acc_text} (epoch {result.best_epoch}), "
              f"{result.epochs_run} epochs in {result.seconds:.0f} s")
    return detail, result.run_dir


def _convert(onnx_path: Path, precision: str, val: Path) -> Any:
    from pochitrain.pipeline.convert import ConvertOptions, convert

    opts = ConvertOptions(onnx_path=onnx_path, precision=precision, overwrite=True,
                          verify_data=val)
    if precision == "int8":
        from pochitrain.onnx.int8 import Int8Options

        opts.int8 = Int8Options(calib_data=val)
    return convert(opts)


def _short(message: str, limit: int = 90) -> str:
    """The English (last) line of a bilingual message, cut to fit a table cell."""
    line = next((ln for ln in reversed(message.splitlines()) if ln.strip()), message)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def print_report(report: QuickstartReport) -> None:
    from rich.table import Table

    steps = Table(title="pochi quickstart: what was produced and where")
    for col in ("step", "status", "result", "where"):
        # a user copies paths from here: fold long ones, never cut them with "…"
        steps.add_column(col, overflow="fold", no_wrap=col in ("step", "status"))
    for s in report.steps:
        detail = s.detail if s.status == "ok" else _short(s.detail)
        steps.add_row(s.name, f"[{COLOURS[s.status]}]{s.status}[/]", detail,
                      str(s.path) if s.path else "")
    runtimes = Table(title="runtimes on the digits val set")
    for col in ("runtime", "accuracy", "pure images/s", "end-to-end images/s"):
        runtimes.add_column(col, justify="right" if col != "runtime" else "left")
    for label, r in report.runtimes:
        acc = f"{100 * r.accuracy:.2f}%" if r.accuracy is not None else "n/a"
        runtimes.add_row(label, acc, f"{r.images_per_second(r.pure_seconds):.1f}",
                         f"{r.images_per_second(r.e2e_seconds):.1f}")
    missing: dict[str, list[str]] = {}
    for label, why in report.missing_runtimes:
        missing.setdefault(_short(why), []).append(label)
    for why, labels in missing.items():
        runtimes.add_row(", ".join(labels), "-", "-", f"[yellow]not run: {why}[/]")
    console().print(steps)
    console().print(runtimes)
