"""Run a suite: one subprocess per case and repeat, each writing benchmark_result.json into
``<root>/<suite>_<YYYYMMDD_HHMMSS>/raw/case_NNN_<name>/run_RRR/`` with its ``run.log`` (the
layout: docs/readme_bench.md).

Every run is a fresh ``python -m pochitrain.cli.main infer ...`` process, so one run's caches,
allocator state or crash cannot touch the next.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pochitrain.bench.result_json import RESULT_FILE
from pochitrain.bench.suite import Case, Suite
from pochitrain.errors import PochiError
from pochitrain.model import backend_for
from pochitrain.workspace import atomic_write_text, local_now

# A failed run's result file is kept under this name: the aggregate never counts it.
SET_ASIDE_FILE = "benchmark_result.failed.json"
INTERRUPTED = "interrupted (Ctrl+C)"


@dataclass
class RunRecord:
    case: str
    repeat: int
    status: str  # ok | failed | skipped
    reason: str
    log: str | None
    seconds: float


def new_bench_dir(root: Path, suite: str) -> Path:
    """``root/<suite>_<YYYYMMDD_HHMMSS>`` in local time (a suffix when that name is taken)."""
    stamp = local_now().strftime("%Y%m%d_%H%M%S")
    path = root
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1000):
            path = root / (f"{suite}_{stamp}" + (f"_{n}" if n else ""))
            with contextlib.suppress(FileExistsError):
                path.mkdir()  # exclusive: two benches started together get distinct folders
                return path
        raise FileExistsError(errno.EEXIST, "every name is taken", str(path))
    except OSError as exc:
        raise PochiError("ベンチマークの出力フォルダを作成できません\n"
                         f"Cannot create the bench output folder {path}: {exc.strerror}.",
                         "Choose a writable folder with -o/--output-root.") from exc


def command(case: Case, out_dir: Path) -> list[str]:
    """The infer command line of one run."""
    # ``pochi infer`` takes every model type and has --pipeline for all of them
    cmd = [sys.executable, "-m", "pochitrain.cli.main", "infer",
           str(case.model_path), "--output", str(out_dir), "--benchmark-json", "--quiet"]
    if case.env_name:
        cmd += ["--benchmark-env-name", str(case.env_name)]
    if case.data is not None:
        cmd += ["--data", str(case.data)]
    if case.batch_size is not None:
        cmd += ["--batch-size", str(case.batch_size)]
    if case.warmup is not None:
        cmd += ["--warmup", str(case.warmup)]
    cmd += ["--pipeline", case.pipeline]
    backend = backend_for(case.model_path)
    if backend.torch_options:
        cmd += ["--device", case.device or "auto"]
        if case.precision is not None:
            cmd += ["--precision", case.precision]
    if backend.takes_providers and case.providers:
        cmd += ["--providers", *case.providers]
    return cmd + list(case.extra_args)


def run_suite(suite: Suite, bench_dir: Path, fail_fast: bool = False,
              timeout: float | None = None,
              say: Callable[[str], None] = print) -> list[RunRecord]:
    """Run every case ``repeats`` times; return one record per run (failed ones included).

    Ctrl+C ends the suite: the run it cut (its log exists) is failed "interrupted (Ctrl+C)",
    every run after it is skipped with that reason, and the records are returned."""
    has_gpu = _cuda_available()
    shutil.copy2(suite.file, bench_dir / "suite.yaml")
    atomic_write_text(bench_dir / "plan.json", json.dumps(
        {"suite": suite.name, "description": suite.description, "suites_file": str(suite.file),
         "started_at": local_now().isoformat(timespec="seconds"),
         "cases": [c.to_dict() for c in suite.cases]}, indent=2) + "\n")
    plan = [(bench_dir / "raw" / f"case_{ci:03d}_{case.name}" / f"run_{r:03d}", case, r)
            for ci, case in enumerate(suite.cases, start=1) for r in range(1, case.repeats + 1)]
    records: list[RunRecord] = []
    try:
        for run_dir, case, r in plan:
            say(f"[{len(records) + 1}/{len(plan)}] {case.name} run {r}/{case.repeats}")
            if backend_for(case.model_path).gpu_only and not has_gpu:
                records.append(RunRecord(case.name, r, "skipped", "no CUDA GPU on this machine "
                                         "(TensorRT engines need one)", None, 0.0))
                continue
            records.append(_run_one(suite.name, case, run_dir, r, timeout))
            if records[-1].status == "failed":
                say(f"  failed: {records[-1].reason} (log: {records[-1].log})")
                if fail_fast:
                    break
    except KeyboardInterrupt:  # the child got the Ctrl+C too: keep what ran
        for run_dir, case, r in plan[len(records):]:
            log = run_dir / "run.log"
            if log.is_file():
                _set_aside(run_dir)
                records.append(RunRecord(case.name, r, "failed", INTERRUPTED, str(log), 0.0))
            else:
                records.append(RunRecord(case.name, r, "skipped", f"not run: {INTERRUPTED}",
                                         None, 0.0))
    return records


def _run_one(suite: str, case: Case, run_dir: Path, repeat: int,
             timeout: float | None) -> RunRecord:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "run.log"
    cmd = command(case, run_dir)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n\n")
        f.flush()
        try:
            env = {"COLUMNS": "120", **os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                  check=False, env=env)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
        seconds = time.perf_counter() - start
        f.write(f"\n[pochi bench] exit code {rc}, {seconds:.1f} s\n")
    result = run_dir / RESULT_FILE
    why: str | None
    if rc is None:
        why = f"timed out after {timeout:g} s"
    elif rc != 0 or not result.is_file():
        why = f"exit code {rc}" if rc != 0 else f"no {RESULT_FILE} written"
        last = _last_line(log)
        why = f"{why}: {last}" if last else why
    else:
        why = _record_result(result, suite, case, repeat, log)
    if why is not None:
        _set_aside(run_dir)
        return RunRecord(case.name, repeat, "failed", why, str(log), seconds)
    return RunRecord(case.name, repeat, "ok", "", str(log), seconds)


def _record_result(result: Path, suite: str, case: Case, repeat: int, log: Path) -> str | None:
    """Fill the suite and repeat into a run's result file; why the run failed, if it did."""
    data = json.loads(result.read_text(encoding="utf-8"))
    data["suite_name"], data["repeat_index"] = suite, repeat
    if data.get("precision") is None and case.precision:  # an engine without metadata
        data["precision"] = case.precision
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"[pochi bench] the model records no precision: {case.precision} from the "
                    "suite\n")
    atomic_write_text(result, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    # a runtime without --precision computes in the model file's own precision
    if (case.precision and not backend_for(case.model_path).torch_options
            and data.get("precision") != case.precision):
        return (f"the model computes in {data.get('precision')}, the case asks for "
                f"{case.precision}")
    return None


def _set_aside(run_dir: Path) -> None:
    """A failed run's result file, if it wrote one, under SET_ASIDE_FILE: kept to read, never
    aggregated."""
    result = run_dir / RESULT_FILE
    if result.is_file():
        result.replace(run_dir / SET_ASIDE_FILE)


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()
             if ln.strip() and not ln.startswith("[pochi bench]")]
    errors = [ln for ln in lines[1:] if "Error" in ln]
    return (errors[0] if errors else " / ".join(lines[1:][-2:]))[:300]


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False
