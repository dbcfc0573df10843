"""Outputs are created exclusively, and a full disk is a message.

Two writers of one output, this process and a child process, are lined up on the exclusive
create by the workspace's test gate (``POCHI_TEST_GATE_DIR``): of the two, one wins and the
other is refused with the usual "already exists" message; nothing of the loser is left. A full disk (the file-size
limit, ``ulimit -f``) while writing an output names the file and leaves nothing under it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pochitrain.errors import DiskFullError, OutputExistsError
from pochitrain.workspace import (
    CLAIM_FILE,
    TEST_GATE_ENV,
    atomic_path,
    claim_dir,
    claimed_output_dir,
    disk_space_guard,
    publish,
)

# children: one thread, and no bytecode written beside the sources the tests run from
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
             "POCHI_BYTECODE_CACHE": "0"}


# The rival's loop: one JSON job per stdin line ({"gate", "argv", "result"}); each command
# runs with the job's gate and its exit code and stderr go to the job's result file.
RIVAL = """
import contextlib, io, json, os, sys
from pathlib import Path
from pochitrain.cli.main import run
from pochitrain.workspace import TEST_GATE_ENV
for line in sys.stdin:
    job = json.loads(line)
    os.environ[TEST_GATE_ENV] = job["gate"]
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = run(job["argv"])
        except SystemExit as exc:
            code = exc.code
    result = Path(job["result"])
    result.with_suffix(".tmp").write_text(json.dumps([code, err.getvalue()]))
    result.with_suffix(".tmp").rename(result)
"""


class Rival:
    """A child process that runs ``pochi`` commands one after another (in-process ``run``):
    the other writer of every race in this module, its interpreter started once."""

    def __init__(self, folder: Path) -> None:
        self.log = folder / "rival.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", RIVAL], env=CHILD_ENV,
                                         stdin=subprocess.PIPE, stdout=log,
                                         stderr=subprocess.STDOUT, text=True)

    def start(self, gate: Path, argv: list[str]) -> Path:
        """Start ``pochi argv`` behind ``gate``; the file its [exit code, stderr] will be in."""
        result = gate / "rival.json"
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"gate": str(gate), "argv": argv,
                                          "result": str(result)}) + "\n")
        self.proc.stdin.flush()
        return result

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def rival(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rival]:
    child = Rival(tmp_path_factory.mktemp("rival"))
    yield child
    child.stop()


class Race:
    """Two writers of one output: ``pochi`` in this process (a thread) and in the rival
    process. Each stops at its exclusive create until both are there; then both go at once."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str], rival: Rival) -> None:
        self.gate = tmp_path / "gate"
        self.gate.mkdir()
        monkeypatch.setenv(TEST_GATE_ENV, str(self.gate))
        self.capsys = capsys
        self.rival = rival

    def run(self, here: list[str], child: list[str]) -> list[tuple[int, str]]:
        """[(exit code, stderr)] of ``pochi here`` and of the rival's ``pochi child``."""
        from pochitrain.cli.main import run

        codes: list[int] = []
        thread = threading.Thread(target=lambda: codes.append(run(here)))
        result = self.rival.start(self.gate, child)
        thread.start()
        deadline = time.monotonic() + 180  # a hang guard, not a timing
        while len(list(self.gate.glob("arrived-*"))) < 2:
            if time.monotonic() > deadline or result.exists() or not self.rival.alive() \
                    or not thread.is_alive():
                break  # one failed before its create: the assertions show its output
            time.sleep(0.05)
        (self.gate / "open").touch()
        thread.join(timeout=180)
        while not result.exists() and self.rival.alive() and time.monotonic() < deadline + 180:
            time.sleep(0.05)  # the rival's command finishing; hang guard only
        assert result.exists(), self.rival.log.read_text(errors="replace")[-3000:]
        code, err = json.loads(result.read_text())
        return [(codes[0], self.capsys.readouterr().err), (code, err)]


def _one_winner(results: list[tuple[int, str]], *words: str) -> int:
    """The index of the winner: one exit 0, the other refused with one of ``words``."""
    assert sorted(code == 0 for code, _ in results) == [False, True], [
        (code, err[-800:]) for code, err in results]
    winner = [code for code, _ in results].index(0)
    err = results[1 - winner][1]
    assert any(w in err for w in words) and "Traceback" not in err, err[-800:]
    return winner


def test_publish_and_claims_never_replace(tmp_path: Path) -> None:
    final = tmp_path / "x.onnx"
    final.write_bytes(b"first")
    tmp = tmp_path / "x.tmp"
    tmp.write_bytes(b"second")
    with pytest.raises(OutputExistsError, match="already exists"):
        publish(tmp, final)
    assert final.read_bytes() == b"first" and not tmp.exists()
    with pytest.raises(OutputExistsError), atomic_path(final, replace=False) as tmp:
        tmp.write_bytes(b"third")
    assert final.read_bytes() == b"first" and sorted(tmp_path.iterdir()) == [final]
    with atomic_path(final) as tmp:  # --overwrite: replacing is what was asked
        tmp.write_bytes(b"fourth")
    assert final.read_bytes() == b"fourth"

    folder = tmp_path / "run"
    assert claim_dir(folder) is True
    with pytest.raises(OutputExistsError):
        claim_dir(folder)
    out = tmp_path / "results"
    with claimed_output_dir(out):
        assert (out / CLAIM_FILE).is_file()
        with pytest.raises(OutputExistsError, match="another pochi command"), \
                claimed_output_dir(out):
            pass
        (out / "a.csv").write_text("mine")
    assert sorted(p.name for p in out.iterdir()) == ["a.csv"]
    with pytest.raises(RuntimeError), claimed_output_dir(tmp_path / "failed") as failed:
        (failed / "half.csv").write_text("x")
        raise RuntimeError("the run failed")
    assert not (tmp_path / "failed").exists()  # created by the claim: removed with its files


def test_disk_full_names_the_file(tmp_path: Path) -> None:
    target = tmp_path / "model.engine"
    with pytest.raises(DiskFullError, match=f"writing {target}"), atomic_path(target) as tmp:
        tmp.write_bytes(b"part")
        with open("/dev/full", "wb") as full:  # ENOSPC on write
            full.write(b"x")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DiskFullError, match="writing out.bin"), disk_space_guard(None):
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), "out.bin")  # as open() says it


def test_two_export_onnx_one_wins(untrained_checkpoint: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], rival: Rival) -> None:
    import onnx

    out = tmp_path / "x.onnx"
    argv = [["export-onnx", str(untrained_checkpoint), "-o", str(out), "--skip-verify",
             "--opset", opset] for opset in ("17", "18")]
    winner = _one_winner(Race(tmp_path, monkeypatch, capsys, rival).run(*argv), "already exists")
    opset = onnx.load(str(out), load_external_data=False).opset_import[0].version
    assert opset == (17, 18)[winner]  # the file is the winner's, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate", "x.onnx"]


def test_fp32_and_fp16_convert_one_wins(untrained_checkpoint: Path,
                                        onnx_export: Callable[..., Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str],
                                        rival: Rival) -> None:
    from pochitrain.tensorrt.engine_file import engine_matches, read_engine_metadata

    onnx_path = onnx_export(untrained_checkpoint, 1)
    engine = tmp_path / "x.engine"
    base = ["convert", str(onnx_path), "-o", str(engine), "--no-progress"]
    winner = _one_winner(Race(tmp_path, monkeypatch, capsys, rival).run(base, [*base, "--fp16"]),
                         "already exists")
    meta = read_engine_metadata(engine)
    assert meta["precision"] == ("fp32", "fp16")[winner] and engine_matches(engine, meta)
    # the FP16 graph stays only when the FP16 build won
    assert (tmp_path / "x_fp16.onnx").exists() == (winner == 1)
    assert not list(tmp_path.glob(".*.tmp"))


def test_two_infers_into_one_folder_never_mix(untrained_checkpoint: Path,
                                              onnx_export: Callable[..., Path],
                                              tiny_data: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str],
                                              rival: Rival) -> None:
    out = tmp_path / "o"
    argv = [["infer", model, "--data", str(tiny_data / "val"), "-o", str(out), "--quiet"]
            for model in (str(untrained_checkpoint), str(onnx_export(untrained_checkpoint, 1)))]
    winner = _one_winner(Race(tmp_path, monkeypatch, capsys, rival).run(*argv),
                         "being written by another pochi command",
                         "already holds inference results")  # the winner was that quick
    prefix = ("pytorch", "onnx")[winner]
    assert [p.name for p in out.glob("*_inference_results.csv")] == [
        f"{prefix}_inference_results.csv"]
    assert not (out / CLAIM_FILE).exists()


def test_two_runs_get_their_own_run_folders(tmp_path: Path) -> None:
    """Two trainings started together: the run folder ``pochi train`` makes
    (``workspace.new_run_dir``) is distinct for each."""
    gate = tmp_path / "gate"
    gate.mkdir()
    code = ("import sys; from pochitrain.workspace import new_run_dir; "
            "print(new_run_dir(sys.argv[1]).name)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "w")],
                              env={**CHILD_ENV, TEST_GATE_ENV: str(gate)},
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 60  # a hang guard, not a timing
    while len(list(gate.glob("arrived-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    (gate / "open").touch()  # both chose the same next number before either created it
    names = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs) and names[0] != names[1]
    assert names[0].endswith("_001") and names[1].endswith("_002")


def _assert_disk_full(code: int, err: str, name: str) -> None:
    assert code == 1, err[-1500:]
    assert "not enough disk space while writing" in err.lower()
    assert name in err and "Traceback" not in err
    assert "--opset" not in err


def test_full_disk_in_export_and_infer(untrained_checkpoint: Path,
                                       onnx_export: Callable[..., Path], tiny_data: Path,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.cli.main import run

    out = tmp_path / "x.onnx"
    onnx_path = onnx_export(untrained_checkpoint, 1)
    with _file_size_limit(1 << 20, monkeypatch):
        code = run(["export-onnx", str(untrained_checkpoint), "-o", str(out), "--skip-verify"])
    _assert_disk_full(code, capsys.readouterr().err, str(out))
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp

    results = tmp_path / "results"
    with _file_size_limit(600, monkeypatch):
        code = run(["infer", str(onnx_path), "--data", str(tiny_data / "val"), "-o",
                    str(results), "--quiet"])
    _assert_disk_full(code, capsys.readouterr().err, "onnx_inference_results.csv")
    assert not results.exists()  # the claimed folder goes with the failed run


def test_claimed_folder_that_existed_keeps_its_other_files(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(RuntimeError), claimed_output_dir(out):
        (out / "x_inference_results.csv").write_text("half")
        raise RuntimeError("failed")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@contextlib.contextmanager
def _file_size_limit(limit: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``ulimit -f`` for this process, briefly (no bytecode written meanwhile: see below)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # a command under the limit sets it
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_full_disk_while_saving_a_checkpoint(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's own file writer loses the errno of a full disk; the checkpoint's does not."""
    import torch

    from pochitrain.checkpoint import save_checkpoint
    from pochitrain.meta import ModelMeta
    from pochitrain.preprocess import Preprocess

    model = torch.nn.Linear(1000, 100)  # 400 kB of weights
    meta = ModelMeta(["a", "b"], Preprocess.simple(32, 32), model_name="resnet18")
    with _file_size_limit(100_000, monkeypatch), pytest.raises(DiskFullError, match="best.pth"):
        save_checkpoint(tmp_path / "best.pth", model, meta)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_in_fp16_convert(untrained_checkpoint: Path,
                                   onnx_export: Callable[..., Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.cli.main import run

    onnx_path = onnx_export(untrained_checkpoint, 1)
    argv = ["convert", str(onnx_path), "--fp16", "-o", str(tmp_path / "x.engine"),
            "--no-progress"]
    with _file_size_limit(1 << 20, monkeypatch):
        code = run(argv)
    err = capsys.readouterr().err
    assert code == 1 and "not enough disk space while writing" in err.lower(), err
    assert "x_fp16.onnx" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_no_bytecode_is_cut_short_by_a_file_size_limit(tmp_path: Path) -> None:
    """Python writes a .pyc with one unchecked write: under ``ulimit -f`` a command writes
    none, instead of a truncated one that breaks every later import of the module."""
    (tmp_path / "big_module.py").write_text(
        "".join(f"VALUE_{i} = {i}\n" for i in range(2000)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # the limit comes after pochitrain's own imports (their bytecode is the package's)
    code = ("import resource; from pochitrain.bytecode import keep_bytecode; "
            "hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]; "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4000, hard)); "
            "keep_bytecode(); import big_module")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=False,
                          env={**env, "PYTHONPATH": str(tmp_path)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob("__pycache__/big_module*"))


def test_a_claim_left_by_a_killed_command_is_taken_over(tmp_path: Path) -> None:
    """A results folder whose claim names a process that is gone is usable again; one whose
    process runs is not."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "results"
    out.mkdir()
    (out / CLAIM_FILE).write_text(str(gone.pid))
    with claimed_output_dir(out):
        assert (out / CLAIM_FILE).read_text() == str(os.getpid())
    assert not (out / CLAIM_FILE).exists()
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                          stdin=subprocess.PIPE) as alive:
        (out / CLAIM_FILE).write_text(str(alive.pid))
        with pytest.raises(OutputExistsError, match="another pochi command"), \
                claimed_output_dir(out):
            pass
        alive.communicate(b"")
