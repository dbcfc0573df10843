"""pochi bench: a suite over the digits with PyTorch, ONNX Runtime and TensorRT, aggregated."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from background import Job

from pochitrain.bench.suite import SuiteError, load_suite
from pochitrain.cli.main import run


def test_bench_suite_three_runtimes(bench_ci: Job) -> None:
    """``pochi bench --suite ci`` (conftest ``bench_suites``), started with the session."""
    done = bench_ci.result()
    assert done.returncode == 1, done.stderr[-3000:]  # the broken case failed; the others ran
    (bench_dir,) = (bench_ci.cwd / "runs").iterdir()
    assert bench_dir.name.startswith("ci_") and len(bench_dir.name) == len("ci_20260101_120000")
    summary = json.loads((bench_dir / "summary" / "benchmark_summary.json").read_text())
    rows = {g["case_name"]: g for g in summary["groups"]}
    assert set(rows) == {"torch", "ort"} and summary["total_benchmark_files"] == 3
    torch_row, ort_row = rows["torch"], rows["ort"]
    assert (torch_row["runtime"], torch_row["runs"], torch_row["batch_size"]) == ("pytorch", 1, 10)
    assert (ort_row["runtime"], ort_row["runs"], ort_row["batch_size"]) == ("onnx", 2, 5)
    for row in (torch_row, ort_row):
        assert row["precision"] == "fp32" and row["env_name"] == "ci" and row["device"] == "cpu"
        assert 0 < row["latency_p50_ms"] <= row["latency_p90_ms"] <= row["latency_p99_ms"]
        assert row["images_per_s_e2e"] > 0 and row["accuracy_percent_mean"] is not None
        assert row["peak_gpu_memory_mb"] is None  # CPU runs
    assert ort_row["avg_inference_ms_stdev"] >= 0
    # both ONNX runs are in the raw tree with the suite and repeat filled in
    for r in (1, 2):
        res = json.loads((bench_dir / "raw" / "case_002_ort" / f"run_{r:03d}" /
                          "benchmark_result.json").read_text())
        assert (res["suite_name"], res["repeat_index"]) == ("ci", r)
    # TensorRT without a GPU: skipped, listed; the broken model: failed, its log kept
    import torch

    trt_runs = [("trt", 1), ("trt", 2)]
    skipped, failed_runs = summary["skipped_runs"], summary["failed_runs"]
    if torch.cuda.is_available():  # a GPU machine tries the placeholder engine: it fails
        assert [(r["case"], r["repeat"]) for r in failed_runs[:2]] == trt_runs
        failed_runs = failed_runs[2:]
    else:
        assert [(r["case"], r["repeat"]) for r in skipped] == trt_runs
        assert all("no CUDA GPU" in r["reason"] and r["log"] is None for r in skipped)
    (failed,) = failed_runs
    assert failed["case"] == "bad" and "exit code 1" in failed["reason"]
    log = Path(failed["log"]).read_text()
    assert "broken.onnx" in log and "Error" in log
    # CSV (original columns first), Markdown, chart
    with open(bench_dir / "summary" / "benchmark_summary.csv") as f:
        header = next(csv.reader(f))
    assert header[:3] == ["case_name", "env_name", "runtime"] and "latency_p99_ms" in header
    md = (bench_dir / "summary" / "benchmark_summary.md").read_text()
    assert "| ort | onnx |" in md and "## Failed runs" in md
    assert (bench_dir / "summary" / "benchmark_chart.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["generated_at"][-6] in "+-"  # local time with its offset

    # --aggregate-only re-aggregates the same folder (failed runs come from runs.json)
    shutil.rmtree(bench_dir / "summary")
    assert run(["bench", "--aggregate-only", str(bench_dir)]) == 0
    again = json.loads((bench_dir / "summary" / "benchmark_summary.json").read_text())
    assert {g["case_name"] for g in again["groups"]} == {"torch", "ort"}
    assert again["failed_runs"] == summary["failed_runs"]


def test_fail_fast_stops_at_first_failure(bench_failfirst: Job) -> None:
    """``pochi bench --suite failfirst --fail-fast``, started with the session."""
    done = bench_failfirst.result()
    assert done.returncode == 1, done.stderr[-3000:]
    (bench_dir,) = (bench_failfirst.cwd / "runs").iterdir()
    runs = json.loads((bench_dir / "runs.json").read_text())
    assert [(r["case"], r["status"]) for r in runs] == [("bad", "failed")]
    assert Path(runs[0]["log"]).is_file()


def test_axes_expand_and_commands(bench_models: dict[str, Path], tmp_path: Path) -> None:
    from pochitrain.bench.runner import command

    m = bench_models
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(f"""\
        suites:
          axes:
            defaults: {{pipeline: [current, gpu], batch_sizes: [1, 8], data: {m['val']}}}
            cases:
              - {{name: t, runtime: pytorch, model_path: {m['pth']}, precisions: [fp32, fp16]}}
              - {{runtime: onnx, model_path: {m['onnx']}}}
        """))
    suite = load_suite(path, "axes")
    names = [c.name for c in suite.cases]
    assert names[:3] == ["t_cpu_bs1_fp32", "t_cpu_bs8_fp32", "t_gpu_bs1_fp32"]
    assert len(names) == 8 + 4  # onnx: 2 pipelines x 2 batch sizes
    assert names[8:10] == ["onnx_01_cpu_bs1", "onnx_01_cpu_bs8"]
    cmd = command(suite.cases[3], Path("OUT"))
    assert cmd[3:5] == ["infer", str(m["pth"])]
    assert cmd[cmd.index("--pipeline") + 1] == "gpu" and cmd[cmd.index("--precision") + 1] \
        == "fp32" and cmd[cmd.index("--batch-size") + 1] == "8"


def test_unknown_runtime_names_case_and_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("suites:\n  s:\n    cases:\n      - name: ok\n        runtime: onnx\n"
                    "        model_path: m.onnx\n      - name: fast_one\n"
                    "        runtime: openvino\n")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(SuiteError) as err:
        load_suite(path, "s")
    assert "line 8" in err.value.message and "fast_one" in err.value.message
    assert "openvino" in err.value.message and "pytorch, onnx or trt" in (err.value.remedy or "")
    path.write_text("suites:\n  s:\n    cases:\n      - {runtime: trt, model_path: m.onnx}\n")
    with pytest.raises(SuiteError, match="line 4.*m.onnx is not a tensorrt model file"):
        load_suite(path, "s")


def test_missing_model_path_names_case_and_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("suites:\n  s:\n    cases:\n      - {name: a, runtime: pytorch}\n"
                    "      - {name: b, runtime: onnx, model_path: nowhere.onnx}\n")
    with pytest.raises(SuiteError) as err:
        load_suite(path, "s")
    assert "line 4" in err.value.message and "'a'" in err.value.message
    assert "model_paths" in (err.value.remedy or "")
    path.write_text("suites:\n  s:\n    cases:\n"
                    "      - {name: b, runtime: onnx, model_path: nowhere.onnx}\n")
    with pytest.raises(SuiteError) as err:
        load_suite(path, "s")
    assert "line 4" in err.value.message and "nowhere.onnx" in err.value.message
    # through the CLI: exit code 2 (usage), no bench folder made
    assert run(["bench", "--suite", "s", "--suites-file", str(path), "-o",
                str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()


def test_aggregate_only_original_files(tmp_path: Path) -> None:
    """Files as the original writes them (no details beside them) aggregate too; population
    stdev as the original; percentiles fall back to the runs' means; broken files listed."""
    base = {"schema_version": "1.0.0", "timestamp_jst": "2026-01-01 09:00:00",
            "env_name": "RTX4070Ti", "suite_name": "s", "repeat_index": None,
            "runtime": "tensorrt", "precision": "int8", "model_name": "resnet18",
            "pipeline": "gpu", "device": "cuda",
            "options": {"gpu_non_blocking": True, "pin_memory": True, "batch_size": 1,
                        "image_size": [512, 512]},
            "samples": {"num_samples": 100, "measured_samples": 99, "warmup_samples": 1}}
    for i, (ms, e2e) in enumerate(((0.2, 1.0), (0.4, 2.0), (0.3, 1.5)), start=1):
        run_dir = tmp_path / "raw" / "case_001_trt_int8" / f"run_{i:03d}"
        run_dir.mkdir(parents=True)
        metrics = {"avg_inference_ms": ms, "avg_e2e_ms": e2e,
                   "throughput_inference_ips": 1000 / ms, "throughput_e2e_ips": 1000 / e2e,
                   "accuracy_percent": 100.0}
        (run_dir / "benchmark_result.json").write_text(json.dumps({**base, "metrics": metrics}))
    bad = tmp_path / "raw" / "case_002_x" / "run_001"
    bad.mkdir(parents=True)
    (bad / "benchmark_result.json").write_text('{"schema_version": "1.0.0"}')
    assert run(["bench", "--aggregate-only", "--input-dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary" / "benchmark_summary.json").read_text())
    (g,) = summary["groups"]
    assert (g["case_name"], g["runs"], g["precision"], g["batch_size"]) == ("trt_int8", 3,
                                                                           "int8", 1)
    assert g["avg_inference_ms_mean"] == pytest.approx(0.3)
    assert g["avg_inference_ms_stdev"] == pytest.approx(0.0816, abs=1e-4)  # population
    assert (g["latency_p50_ms"], g["latency_p99_ms"]) == (0.3, pytest.approx(0.398))
    assert g["peak_gpu_memory_mb"] is None
    (invalid,) = summary["invalid_files"]
    assert "case_002_x" in invalid["file"] and "missing" in invalid["reason"]


ORT_RUN_1 = b"[2/4] ort run 1/3\n"


@contextlib.contextmanager
def _ctrl_c_as_in_a_terminal() -> Iterator[None]:
    """Children started inside get SIGINT at its default, as a terminal's command does: a
    suite started in the background of a shell (``pytest &``) has SIGINT ignored, children
    inherit that, and Python then keeps it ignored, so the Ctrl+C under test would never
    arrive. (A handler, unlike "ignored", is reset to the default across exec.)"""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _bench_cut_in_run_1(bench_suites: Path, out: Path) -> tuple[int, str] | None:
    """``pochi bench --suite interrupted`` with a real Ctrl+C (SIGINT to the process group, as
    a terminal sends it) as soon as the second run is announced: (exit code, output). None
    when the announcement reached this process only after later output (this process was
    kept waiting past the run it had to cut), and the signal was therefore not sent."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    with _ctrl_c_as_in_a_terminal():
        proc = subprocess.Popen([sys.executable, "-m", "pochitrain.cli.main", "bench", "--suite",
                                 "interrupted", "--suites-file", str(bench_suites), "-o",
                                 str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "COLUMNS": "200"})
    guard = threading.Timer(240, proc.kill)  # a hang guard, not a synchronisation
    guard.start()
    assert proc.stdout is not None
    seen = b""
    while ORT_RUN_1 not in seen:  # raw reads: what the bench had written when it was read
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        seen += chunk
    in_time = seen.endswith(ORT_RUN_1)
    if in_time:
        os.killpg(proc.pid, signal.SIGINT)
    log = (seen + proc.communicate()[0]).decode("utf-8", errors="replace")
    guard.cancel()
    return (proc.returncode, log) if in_time else None


def test_ctrl_c_lists_runs_not_run_and_failed_runs_stay_out(bench_suites: Path,
                                                           tmp_path: Path) -> None:
    """Ctrl+C once the second run is announced: exit 130, the runs not run listed; the first
    run, failed for its precision although it wrote a result, is kept aside and is no row of
    the summary. (On a loaded machine this process may read the announcement too late to cut
    that run: then the bench runs again, at most three times in all.)"""
    for attempt in range(3):
        got = _bench_cut_in_run_1(bench_suites, tmp_path / f"attempt{attempt}" / "runs")
        if got is not None:
            break
    assert got is not None, "the second run's announcement never came in time"
    code, log = got
    runs_root = tmp_path / f"attempt{attempt}" / "runs"
    assert code == 130, log
    assert "Traceback" not in log and "Interrupted" in log
    for r in (2, 3):
        assert f"skipped: ort run {r}: not run: interrupted (Ctrl+C)" in log
    (bench_dir,) = runs_root.iterdir()
    runs = json.loads((bench_dir / "runs.json").read_text())
    assert [(r["case"], r["repeat"]) for r in runs] == [("fp16", 1)] + [("ort", r)
                                                                         for r in (1, 2, 3)]
    assert runs[0]["status"] == "failed" and "computes in fp32" in runs[0]["reason"]
    assert all(r["reason"].endswith("interrupted (Ctrl+C)") for r in runs[1:])
    assert [r["status"] for r in runs[2:]] == ["skipped", "skipped"]
    run_dir = bench_dir / "raw" / "case_001_fp16" / "run_001"
    assert (run_dir / "benchmark_result.failed.json").is_file()
    assert not (run_dir / "benchmark_result.json").exists()
    summary = json.loads((bench_dir / "summary" / "benchmark_summary.json").read_text())
    assert summary["groups"] == [] and summary["total_benchmark_files"] == 0
    with open(bench_dir / "summary" / "benchmark_summary.csv") as f:
        assert len(list(csv.reader(f))) == 1  # the header only


def test_suite_and_option_refusals(bench_models: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before anything runs, with a message: a suite file that is not UTF-8, a
    negative warmup, no data: for a model without a run; --timeout 0 / -1, infer --warmup -5;
    --aggregate-only on a file or a folder without results; an output folder that cannot be
    made; a summary that cannot be written."""
    path = tmp_path / "s.yaml"
    path.write_bytes("suites:\n  s:\n    description: café\n".encode("latin-1"))
    with pytest.raises(SuiteError, match="is not UTF-8 text .*line 3"):
        load_suite(path, "s")
    case = f"{{name: a, runtime: onnx, model_path: {bench_models['onnx']}}}"
    path.write_text(f"suites:\n  s:\n    defaults: {{warmup: -5}}\n    cases:\n"
                    f"      - {case}\n")
    with pytest.raises(SuiteError, match="warmup must be a whole number >= 0, got -5"):
        load_suite(path, "s")
    path.write_text(f"suites:\n  s:\n    cases:\n      - {case}\n")
    assert run(["bench", "--suite", "s", "--suites-file", str(path), "-o",
                str(tmp_path / "runs")]) == 2
    assert "no 'data:' key" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # the pre-check, before any run
    for argv in (["bench", "--suite", "s", "--timeout", "0"],
                 ["bench", "--suite", "s", "--timeout", "-1"],
                 ["infer", str(bench_models["onnx"]), "--warmup", "-5"]):
        with pytest.raises(SystemExit) as exit_:
            run(argv)
        assert exit_.value.code == 2
    assert "must be 0 or more, got -5" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["bench", "--aggregate-only", str(empty)]) == 1
    assert "No benchmark results found" in capsys.readouterr().err
    assert not (empty / "summary").exists()
    assert run(["bench", "--aggregate-only", str(path)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err

    # a folder that cannot be made (a file in the way: read-only for root too)
    path.write_text(f"suites:\n  s:\n    defaults: {{data: {bench_models['val']}}}\n"
                    f"    cases:\n      - {case}\n")
    assert run(["bench", "--suite", "s", "--suites-file", str(path), "-o", str(path)]) == 1
    assert "Cannot create the bench output folder" in capsys.readouterr().err
    run_dir = empty / "raw" / "case_001_a" / "run_001"
    run_dir.mkdir(parents=True)
    (run_dir / "benchmark_result.json").write_text("{}")
    (empty / "summary").write_text("in the way")
    assert run(["bench", "--aggregate-only", str(empty)]) == 1
    assert "Cannot write the summary into" in capsys.readouterr().err
