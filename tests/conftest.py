"""Session fixtures: real image folders and real (tiny) models, built once per test session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from background import Job, Script, lowest_priority, start
from interpreted import start_matmul_check, start_pil_check
from serving import Server
from tiny import AUGMENT_FLIP, copy_tiny, optuna_config, tiny_config
from typecheck import TypeCheck


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread in this process and in child processes (OMP_NUM_THREADS=1), for
    the whole session, whatever OMP_NUM_THREADS the suite was started with: the session's
    background processes (tests/background.py) hold the other cores, oversubscribed OpenMP
    threads spin instead of working, and the tiny models here gain nothing from a second one."""
    import torch

    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def bilingual_errors() -> Iterator[None]:
    """Every error a command prints during the suite is a Japanese line then an English line:
    a test whose command fails with another kind of message fails there."""
    from pochitrain import console
    from pochitrain.errors import PochiError, is_bilingual

    printed = console.print_error

    def checked(exc: PochiError) -> None:
        assert is_bilingual(exc.message), (
            f"{type(exc).__name__} is not a Japanese line then an English line: {exc.message!r}")
        printed(exc)

    console.print_error = checked  # type: ignore[assignment]
    yield
    console.print_error = printed  # type: ignore[assignment]


@pytest.fixture(scope="session", autouse=True)
def type_check(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[TypeCheck | None]:
    """The mypy run of test_types.py, started as the session begins when that module is
    selected: it reads the whole package and the libraries it calls, a long job for one core,
    so it runs beside the other tests instead of after them."""
    if not any(item.path.name == "test_types.py" for item in request.session.items):
        yield None
        return
    check = TypeCheck(tmp_path_factory.mktemp("mypy"))
    yield check
    check.stop()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in digits sample: <dir>/train/<0..9>/*.png and <dir>/val/<0..9>/*.png."""
    from pochitrain.sample_data import write_digits

    root = tmp_path_factory.mktemp("digits")
    write_digits(root)
    return root


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 checkpoint for the digits classes with random (seeded) weights."""
    import torch

    from pochitrain.checkpoint import save_checkpoint
    from pochitrain.meta import ModelMeta
    from pochitrain.models import build_model
    from pochitrain.preprocess import Preprocess
    from pochitrain.sample_data import CLASS_NAMES

    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASS_NAMES)).eval()
    meta = ModelMeta(CLASS_NAMES, Preprocess.simple(32, 32), model_name="resnet18")
    path = tmp_path_factory.mktemp("untrained") / "models" / "untrained.pth"
    path.parent.mkdir()
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``onnx_export(checkpoint, pattern=1)``: ``<folder>/p<pattern>.onnx``, the checkpoint
    exported by export-onnx at 32x32 without verification, in export pattern 1 (batch dynamic),
    2 (height and width dynamic too) or 3 (every dimension fixed, batch 2).

    Each (checkpoint, pattern) is exported once per session and shared by every module, so the
    file is read-only: tests that write beside a model copy it into their own folder first.
    """
    from pochitrain.onnx.export import ExportShape
    from pochitrain.pipeline.export_onnx import export_onnx

    shapes = {1: ExportShape(), 2: ExportShape(dynamic_spatial=True),
              3: ExportShape(static_batch=2)}
    made: dict[tuple[Path, int], Path] = {}

    def export(checkpoint: Path, pattern: int = 1) -> Path:
        key = (checkpoint, pattern)
        if key not in made:
            folder = tmp_path_factory.mktemp(f"{checkpoint.stem}_onnx")
            made[key] = export_onnx(checkpoint, (32, 32), output=folder / f"p{pattern}.onnx",
                                    shape=shapes[pattern], verify=False, progress=False).path
        return made[key]

    return export


@pytest.fixture(scope="session")
def tiny_data(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes, 6 train / 3 val digit images each (32x32): a training epoch in a moment.
    Read-only: tests that change files copy it first."""
    return copy_tiny(digits_dir, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def compat_data(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes, 4 train / 2 val digit images each: the data of the original's sample config
    in the compatibility tests (``tiny.original_config``)."""
    return copy_tiny(digits_dir, tmp_path_factory.mktemp("compat"), train=4, val=2)


# Training settings of the shared trained model: the shortest training whose best val
# accuracy stays well above the 85% the fixture asserts, so thread counts and seeds cannot
# flip it. Tests that need a good model compare runtimes with each other rather than with a
# fixed accuracy.
TRAINED_RUN_SETTINGS = {"epochs": 2, "batch_size": 32, "learning_rate": 0.001}
# Hang guard only: the training ends long before it.
TRAINING_HANG_GUARD_S = 1200


def _needs_trained_run(item: pytest.Item) -> bool:
    return "trained_run" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with tests that wait for a background process (the trained model, mypy,
    ``BACKGROUND_STARTS``, ``scripts``) run last (in their usual order), so those processes,
    started as the session begins, run beside the other modules instead of before the first
    test. Whole modules move, so module fixtures are built once."""
    late = {item.path for item in items
            if {"trained_run", "mypy_run", "scripts", *BACKGROUND_STARTS}
            & set(getattr(item, "fixturenames", ()))}
    items[:] = ([item for item in items if item.path not in late]
                + [item for item in items if item.path in late])


@dataclass
class TrainingJob:
    """``pochi train`` of the shared trained model, running in its own process."""

    proc: subprocess.Popen[bytes]
    work_dir: Path
    log: Path

    @classmethod
    def start(cls, digits_dir: Path, folder: Path) -> TrainingJob:
        from pochitrain.sample_data import write_digits_config

        config = write_digits_config(folder / "config.py", **TRAINED_RUN_SETTINGS)
        text = config.read_text(encoding="utf-8")
        text = text.replace('train_data_root = "train"',
                            f"train_data_root = {str(digits_dir / 'train')!r}")
        text = text.replace('val_data_root = "val"',
                            f"val_data_root = {str(digits_dir / 'val')!r}")
        config.write_text(text, encoding="utf-8")
        root = Path(__file__).resolve().parents[1]
        path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
        cmd = [sys.executable, "-m", "pochitrain", "train", "-c", str(config),
               "--work-dir", str(folder / "work_dirs"), "--quiet"]
        with open(folder / "train.log", "wb") as log:
            # above the other background jobs (nice 10, not 19): the first of the modules
            # run last waits for it
            proc = subprocess.Popen(lowest_priority(cmd, 10), cwd=folder, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
        return cls(proc, folder / "work_dirs", folder / "train.log")

    def run_dir(self) -> Path:
        """Waits for the training; its run folder, checked."""
        code = self.proc.wait(timeout=TRAINING_HANG_GUARD_S)
        assert code == 0, self.log.read_text(encoding="utf-8", errors="replace")[-3000:]
        (run_dir,) = self.work_dir.iterdir()
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        best = info["best_val_accuracy"]
        assert info["status"] == "completed" and best is not None and best >= 0.85, info
        return run_dir

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session", autouse=True)
def training_job(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainingJob | None]:
    """The shared training, started as the session begins when a selected test needs it:
    one thread in its own process, beside the tests that run first."""
    if not any(_needs_trained_run(item) for item in request.session.items):
        yield None
        return
    job = TrainingJob.start(request.getfixturevalue("digits_dir"),
                            tmp_path_factory.mktemp("trained"))
    yield job
    job.stop()


@pytest.fixture(scope="session")
def trained_run(training_job: TrainingJob | None, digits_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder (work_dirs/YYYYMMDD_NNN) of a short real training on the digits.

    resnet18, 32x32, the sample-data config with fewer epochs; its best model reaches >= 85%
    val accuracy (asserted here, so tests that rely on a good model fail loudly otherwise).
    """
    if training_job is not None:
        return training_job.run_dir()
    job = TrainingJob.start(digits_dir, tmp_path_factory.mktemp("trained"))  # asked for late
    try:
        return job.run_dir()
    finally:
        job.stop()


@pytest.fixture(scope="session")
def trained_checkpoint(trained_run: Path) -> Path:
    """The best checkpoint (models/best_epochN.pth) of ``trained_run``."""
    return next((trained_run / "models").glob("best_epoch*.pth"))


@pytest.fixture(scope="session")
def val_pairs(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first two val images of each digit, ``<dir>/<0..9>/*.png``: enough for a timing
    record, quick on a busy CPU. Read-only: tests that change files copy it first."""
    root = tmp_path_factory.mktemp("val_pairs")
    for cls in sorted(p.name for p in (digits_dir / "val").iterdir()):
        (root / cls).mkdir()
        for f in sorted((digits_dir / "val" / cls).glob("*.png"))[:2]:
            shutil.copy(f, root / cls / f.name)
    return root


@pytest.fixture(scope="session")
def bench_models(untrained_checkpoint: Path, onnx_export: Callable[..., Path], val_pairs: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The untrained checkpoint, its ONNX export, a placeholder engine, 2 images per digit."""
    folder = tmp_path_factory.mktemp("bench_models")
    onnx_path = onnx_export(untrained_checkpoint)
    engine = folder / "model_fp16.engine"
    engine.write_bytes(b"not an engine")  # never opened here: TensorRT cases need a GPU
    broken = folder / "broken.onnx"
    broken.write_bytes(b"\x00garbage")
    return {"pth": untrained_checkpoint, "onnx": onnx_path, "engine": engine,
            "broken": broken, "val": val_pairs}


@pytest.fixture(scope="session")
def bench_suites(bench_models: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suites file of test_bench (read-only: each bench writes under its own -o):
    ``ci`` (three runtimes and a broken model), ``failfirst``, ``interrupted``."""
    m = bench_models
    path = tmp_path_factory.mktemp("bench_suites") / "suites.yaml"
    path.write_text(textwrap.dedent(f"""\
        suites:
          ci:
            description: three runtimes on the digits
            repeats: 2
            defaults:
              data: {m['val']}
              benchmark_env_name: ci
              device: cpu
              model_paths:
                pytorch: {m['pth']}
                onnx: {m['onnx']}
                trt: {m['engine']}
            cases:
              - {{name: torch, runtime: pytorch, pipelines: current, repeats: 1,
                  batch_sizes: 10}}
              - {{name: ort, runtime: onnx, batch_size: 5}}
              - {{name: trt, runtime: trt, precisions: [fp16]}}
              - {{name: bad, runtime: onnx, model_path: {m['broken']}, repeats: 1}}
          failfirst:
            cases:
              - {{name: bad, runtime: onnx, model_path: {m['broken']}, data: {m['val']}}}
              - {{name: ort, runtime: onnx, model_path: {m['onnx']}, data: {m['val']}}}
          interrupted:
            defaults: {{data: {m['val']}, warmup: 0}}
            cases:
              - {{name: fp16, runtime: onnx, model_path: {m['onnx']}, precisions: fp16}}
              - {{name: ort, runtime: onnx, model_path: {m['onnx']}, repeats: 3}}
        """), encoding="utf-8")
    return path


def _ddp_train(request: pytest.FixtureRequest, folder: Path, extra: str,
               **env: str) -> Job:
    """``pochi train --gpus 2 --device cpu`` (two gloo ranks, one thread each) of a 2-epoch
    tiny config in ``folder``; the process-group timeout is longer than the hang guard, so a
    rank left waiting for a failed peer hits the guard instead of ending on its own."""
    config = tiny_config(folder / "cfg", request.getfixturevalue("tiny_data"), epochs=2,
                         extra=extra)
    return start(["-m", "pochitrain", "train", "-c", str(config), "--gpus", "2", "--device",
                  "cpu", "--work-dir", str(folder / "runs"), "--quiet"], cwd=folder,
                 POCHI_DDP_TIMEOUT="900", **env)


def _bench(request: pytest.FixtureRequest, folder: Path, suite: str, *args: str) -> Job:
    """``pochi bench --suite <suite>`` of ``bench_suites`` into ``<folder>/runs``."""
    suites = request.getfixturevalue("bench_suites")
    return start(["-m", "pochitrain.cli.main", "bench", "--suite", suite, "--suites-file",
                  str(suites), "-o", str(folder / "runs"), *args], cwd=folder)


@pytest.fixture(scope="session")
def opt_data(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes, 4 train / 3 val digit images each: the trials of test_optimize."""
    return copy_tiny(digits_dir, tmp_path_factory.mktemp("opt_tiny"), train=4, val=3)


@pytest.fixture(scope="session")
def shared_study_config(opt_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-trial study "shared" (random sampler, seed 0) whose -o is ``<its folder>/shared``:
    two processes run it at once (``study_worker_a`` / ``_b``)."""
    return optuna_config(tmp_path_factory.mktemp("shared_study"), opt_data, {
        "study_name": "shared", "n_trials": 1, "optuna_epochs": 1,
        "sampler": "RandomSampler(seed=0)", "pruner": None,
        "search_space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3,
                                           "log": True}}})


def _study_worker(request: pytest.FixtureRequest) -> Job:
    config = request.getfixturevalue("shared_study_config")
    return start(["-m", "pochitrain.cli.main", "optimize", "-c", str(config), "-o",
                  str(config.parent / "shared")], cwd=config.parent)


def _gated_export(request: pytest.FixtureRequest, folder: Path) -> Job:
    """``export-onnx`` of ``untrained_checkpoint`` into ``<folder>/out/x.onnx``, which waits at
    the test gate (``<folder>/gate``) with its temp file written, until it is signalled."""
    from pochitrain.workspace import TEST_GATE_ENV

    for name in ("gate", "out"):
        (folder / name).mkdir()
    checkpoint = request.getfixturevalue("untrained_checkpoint")
    return start(["-m", "pochitrain.cli.main", "export-onnx", str(checkpoint), "-o",
                  str(folder / "out" / "x.onnx"), "--skip-verify"], cwd=folder,
                 PYTHONDONTWRITEBYTECODE="1", POCHI_BYTECODE_CACHE="0",
                 **{TEST_GATE_ENV: str(folder / "gate")})


# name -> start(request, its own folder): the fixtures of the same names return the jobs
BACKGROUND_STARTS: dict[str, Callable[[pytest.FixtureRequest, Path], Job]] = {
    "pil_check": lambda request, folder: start_pil_check(
        folder, next((request.getfixturevalue("digits_dir") / "val" / "3").glob("*.png"))),
    "matmul_check": lambda request, folder: start_matmul_check(folder),
    "ddp_run": lambda request, folder: _ddp_train(
        request, folder, AUGMENT_FLIP, POCHI_DDP_DEBUG_DIR=str(folder / "hashes")),
    "ddp_failing_run": lambda request, folder: _ddp_train(
        request, folder, "", POCHI_DDP_DEBUG_FAIL_RANK="1"),
    "bench_ci": lambda request, folder: _bench(request, folder, "ci"),
    "study_worker_a": lambda request, folder: _study_worker(request),
    "study_worker_b": lambda request, folder: _study_worker(request),
    "bench_failfirst": lambda request, folder: _bench(request, folder, "failfirst",
                                                      "--fail-fast"),
    "gated_export": _gated_export,
}


def _selected_scripts(items: list[pytest.Item]) -> dict[str, Script]:
    """The ``SCRIPTS`` of the modules whose selected tests use ``scripts``."""
    found: dict[str, Script] = {}
    for item in items:
        if "scripts" in getattr(item, "fixturenames", ()):
            for name, script in getattr(getattr(item, "module", None), "SCRIPTS", {}).items():
                assert found.setdefault(name, script) is script, f"two scripts named {name!r}"
    return found


@pytest.fixture(scope="session", autouse=True)
def background_jobs(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Job]]:
    """The processes of ``BACKGROUND_STARTS`` that selected tests read, and the test modules'
    ``SCRIPTS`` (``background.Script``), each started in its own folder as the session begins
    (tests/background.py)."""
    wanted = {name for item in request.session.items
              for name in getattr(item, "fixturenames", ())}
    jobs = {name: begin(request, tmp_path_factory.mktemp(name))
            for name, begin in BACKGROUND_STARTS.items() if name in wanted}
    for name, script in _selected_scripts(request.session.items).items():
        assert name not in jobs, f"a script named like a background job: {name!r}"
        jobs[name] = script.start(tmp_path_factory.mktemp(name))
    yield jobs
    for job in jobs.values():
        job.stop()


@pytest.fixture
def scripts(background_jobs: dict[str, Job]) -> dict[str, Job]:
    """name -> the started job of that name (a ``Script``'s: ``Job.result()`` waits for it)."""
    return background_jobs


@pytest.fixture
def pil_check(background_jobs: dict[str, Job]) -> Job:
    """resize_normalize against PIL under Triton's interpreter (``interpreted.PIL_CHECK``)."""
    return background_jobs["pil_check"]


@pytest.fixture
def matmul_check(background_jobs: dict[str, Job]) -> Job:
    """The banded kernels against the matmul resample under Triton's interpreter
    (``interpreted.MATMUL_CHECK``)."""
    return background_jobs["matmul_check"]


@pytest.fixture
def ddp_run(background_jobs: dict[str, Job]) -> Job:
    """Two DDP ranks of a tiny training with random flips; each rank writes its weights' hash
    to ``<folder>/hashes`` (``POCHI_DDP_DEBUG_DIR``); the run folder is under ``<cwd>/runs``."""
    return background_jobs["ddp_run"]


@pytest.fixture
def ddp_failing_run(background_jobs: dict[str, Job]) -> Job:
    """Two DDP ranks of a tiny training where rank 1 fails on purpose
    (``POCHI_DDP_DEBUG_FAIL_RANK``); the run folder is under ``<cwd>/runs``."""
    return background_jobs["ddp_failing_run"]


@pytest.fixture
def bench_ci(background_jobs: dict[str, Job]) -> Job:
    """``pochi bench --suite ci`` (``bench_suites``), its output under ``<cwd>/runs``."""
    return background_jobs["bench_ci"]


@pytest.fixture
def gated_export(background_jobs: dict[str, Job]) -> Job:
    """``export-onnx`` waiting at the test gate just before it publishes (``_gated_export``)."""
    return background_jobs["gated_export"]


@pytest.fixture
def bench_failfirst(background_jobs: dict[str, Job]) -> Job:
    """``pochi bench --suite failfirst --fail-fast``, its output under ``<cwd>/runs``."""
    return background_jobs["bench_failfirst"]


def _wants(request: pytest.FixtureRequest, fixture: str) -> bool:
    return any(fixture in getattr(item, "fixturenames", ()) for item in request.session.items)


@pytest.fixture(scope="session", autouse=True)
def started_servers(one_thread: None, request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """test_serve's four servers (tests/serving.py), started as the session begins when a
    selected test uses ``servers``: their start-up runs beside the other tests. The .pth;
    the .onnx (batching window 20 ms); a "slow" .onnx (queue of 2 images, batches of 1,
    SIGTERM-ed last); a ``--workers 2`` .onnx. The .onnx ones take the batcher's gate file."""
    started: dict[str, Server] = {}
    if not _wants(request, "servers"):
        yield started
        return
    logs = tmp_path_factory.mktemp("serve_logs")
    checkpoint = request.getfixturevalue("untrained_checkpoint")
    # the .pth server (slowest to start: torch + torchvision) starts while the .onnx exports
    started["pth"] = Server(checkpoint, logs / "pth.log", "--device", "cpu",
                            "--max-body-mb", "1")
    try:
        onnx_model = request.getfixturevalue("onnx_export")(checkpoint)
        started["onnx"] = Server(onnx_model, logs / "onnx.log", "--max-wait-ms", "20",
                                 gated=True)
        started["slow"] = Server(onnx_model, logs / "slow.log", "--queue", "2",
                                 "--max-batch", "1", "--max-wait-ms", "0", gated=True)
        started["workers"] = Server(onnx_model, logs / "workers.log", "--workers", "2",
                                    "--decode-workers", "1", gated=True)
        yield started
    finally:
        for server in started.values():
            server.terminate()
        for server in started.values():
            server.stop()


@pytest.fixture(scope="session")
def servers(started_servers: dict[str, Server]) -> dict[str, Server]:
    """``started_servers``, each answering /api/v1/health."""
    for server in started_servers.values():
        server.wait_ready()
    return started_servers


@pytest.fixture
def study_worker_a(background_jobs: dict[str, Job]) -> Job:
    """``pochi optimize`` of ``shared_study_config`` (cwd: its folder), beside ``_b``."""
    return background_jobs["study_worker_a"]


@pytest.fixture
def study_worker_b(background_jobs: dict[str, Job]) -> Job:
    """``pochi optimize`` of ``shared_study_config`` (cwd: its folder), beside ``_a``."""
    return background_jobs["study_worker_b"]
