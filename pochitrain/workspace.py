"""Run folders (``work_dirs/YYYYMMDD_NNN``) and atomic file writes.

Everything pochitrain knows about a run folder lives here::

    work_dirs/YYYYMMDD_NNN/
        config.py     copy of the training config (its relative paths mean the original's)
        run.json      what the run resolved and produced (config_path: the original config)
        models/       checkpoints, and the ONNX / engines exported from them
        inference_results/YYYYMMDD_NNN/   one folder per inference run

Outputs are created exclusively (``publish``: a hard link fails when the name is taken, a
rename would replace it; ``claim_dir``, ``claimed_output_dir``): of two commands writing one
output at once, one wins and the other is refused as if the output had been there before.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pochitrain.errors import DiskFullError, OutputExistsError, PochiError

RUN_DIR_PATTERN = re.compile(r"^\d{8}_\d{3,}$")
RUN_JSON = "run.json"
CONFIG_COPY = "config.py"
CLAIM_FILE = ".pochi-writing"  # in a results folder while a command writes into it
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# Test hook: a folder where each exclusive create first announces itself (arrived-<pid>) and
# waits for the file "open", so a test can line two real processes up on one output.
TEST_GATE_ENV = "POCHI_TEST_GATE_DIR"


def run_folder_of(model_path: Path | str) -> Path:
    """work_dirs/X/models/best.pth -> work_dirs/X; anything else -> the model's folder."""
    parent = Path(model_path).resolve().parent
    return parent.parent if parent.name == "models" else parent


def find_config_near(model_path: Path | str) -> Path | None:
    """``config.py`` in the model's folder or its parents up to the run folder (YYYYMMDD_NNN;
    without one above, the model's folder and its parent): X/models/best.pth -> X/config.py."""
    folder = Path(model_path).expanduser().resolve().parent
    chain = [folder, *folder.parents]
    run_idx = next((i for i, p in enumerate(chain) if RUN_DIR_PATTERN.match(p.name)), None)
    limit = run_idx if run_idx is not None and run_idx <= 3 else 1
    for candidate in (p / CONFIG_COPY for p in chain[:limit + 1]):
        if candidate.is_file():
            return candidate
    return None


def read_json_dict(path: Path) -> dict[str, Any] | None:
    """A JSON object file as a dict; None when absent, unreadable or not an object (records
    are not inputs anyone must provide)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_run_json(folder: Path | str) -> dict[str, Any] | None:
    return read_json_dict(Path(folder) / RUN_JSON)


def write_run_json(run_dir: Path, data: dict[str, Any]) -> None:
    atomic_write_text(run_dir / RUN_JSON,
                      json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def config_paths_base(config_path: Path) -> Path:
    """The folder that relative paths in ``config_path`` are relative to: for the copy in a
    run folder, the original's (recorded in run.json beside the copy)."""
    original = (read_run_json(config_path.parent) or {}).get("config_path")
    if original and Path(original).resolve() != config_path.resolve():
        return Path(original).resolve().parent
    return config_path.parent


def recorded_path(config_path: Path, key: str, value: str) -> Path | None:
    """The absolute ``key`` that run.json beside a run's config copy recorded for the relative
    ``value`` (same trailing parts), when it still exists: a run trained from another working
    directory stays usable from anywhere."""
    settings = (read_run_json(config_path.parent) or {}).get("settings")
    recorded = settings.get(key) if isinstance(settings, dict) else None
    if not isinstance(recorded, str) or not recorded:
        return None
    path, tail = Path(recorded), Path(value).parts
    if path.is_absolute() and tail and path.parts[-len(tail):] == tail and path.exists():
        return path
    return None


def local_now() -> _dt.datetime:
    """The current local time with its UTC offset (the machine's zone, never a fixed one)."""
    return _dt.datetime.now().astimezone()


def make_folder(path: Path, remedy: str, error: type[PochiError] = PochiError) -> Path:
    """``path`` created with its parents (an existing folder is fine), or ``error`` saying
    why not, with ``remedy``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error("出力フォルダを作成できません\n"
                    f"Cannot create the output folder {path}: {exc.strerror}.", remedy) from exc
    return path


def new_run_dir(base: Path | str, today: _dt.date | None = None,
                hint: str = "--output DIR") -> Path:
    """Create ``base/YYYYMMDD_NNN`` with the next free NNN; ``hint``: the option that chooses
    ``base``, named in the error when it is unusable."""
    base = make_folder(Path(base), f"Choose a writable location ({hint}).")
    stamp = (today or _dt.date.today()).strftime("%Y%m%d")
    taken = [p.name for p in base.glob(f"{stamp}_*") if p.name[9:].isdigit()]
    n = max((int(name[9:]) for name in taken), default=0) + 1
    while True:
        path = base / f"{stamp}_{n:03d}"
        try:
            claim_dir(path)  # exclusive: two runs started together still get distinct folders
            return path
        except OutputExistsError:
            n += 1


def output_exists_error(path: Path, what: str = "Output file") -> OutputExistsError:
    return OutputExistsError(
        "出力先がすでに存在します\n"
        f"{what} already exists: {path}",
        "Pass --overwrite to replace it, or --output to write elsewhere.",
    )


def check_writable(path: Path, overwrite: bool = False, what: str = "Output file") -> None:
    """Refuse to clobber ``path`` unless asked; check its folder exists and is writable."""
    if path.exists() and not overwrite:
        raise output_exists_error(path, what)
    parent = path.parent
    if not parent.is_dir():
        raise no_folder_error(parent, "Create it or choose another.")
    if not os.access(parent, os.W_OK):
        raise PochiError("出力フォルダに書き込めません\n"
                         f"Output folder is not writable: {parent}", "Choose a writable location.")


def no_folder_error(folder: Path, remedy: str) -> PochiError:
    """The output's folder is missing (``remedy`` says what to do), or a file stands where it
    should be."""
    if folder.exists():
        return PochiError("出力フォルダの場所にファイルがあります\n"
                          f"The output folder {folder} is a file, not a folder.",
                          "Move that file away, or choose an output path inside a folder.")
    return PochiError("出力フォルダが存在しません\n"
                      f"Output folder does not exist: {folder}", remedy)


def probe_writable(folder: Path, option: str = "--output PATH") -> None:
    """Really create (and remove) a file in ``folder``: os.access says yes to root even on a
    read-only mount. ``option``: what chooses the folder, named in the error."""
    try:
        fd, name = tempfile.mkstemp(prefix=".pochi-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise PochiError("出力フォルダに書き込めません\n"
                         f"Cannot write to the output folder {folder}: {exc.strerror}.",
                         f"Choose a writable location with {option}.") from exc


def check_output_dir(output: Path | str | None, refuse_earlier: Callable[[Path], None],
                     files: str = "result files") -> Path | None:
    """``--output DIR``, checked before any work so that a bad path fails fast: a folder
    holding no earlier results (``refuse_earlier`` raises) whose parent exists and can be
    written (the folder is claimed next, with ``claimed_output_dir``)."""
    if output is None:
        return None
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise PochiError("--output がフォルダではなくファイルです\n"
                         f"--output {out} is a file, not a folder.",
                         f"Choose a folder for the {files}.")
    refuse_earlier(out)
    if not out.parent.is_dir():
        raise no_folder_error(out.parent,
                              "Create it first, or choose an --output inside an existing folder.")
    if not os.access(out if out.exists() else out.parent, os.W_OK):
        raise PochiError("出力フォルダに書き込めません\n"
                         f"Output folder is not writable: {out}",
                         "Choose a writable --output folder.")
    return out


def wait_at_test_gate() -> None:
    """The test hook of ``TEST_GATE_ENV`` (nothing when it is unset)."""
    gate = os.environ.get(TEST_GATE_ENV)
    if not gate:
        return
    Path(gate, f"arrived-{os.getpid()}").touch()
    deadline = time.monotonic() + 600  # a hang guard (a test's job may wait a whole session)
    while not Path(gate, "open").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


@contextlib.contextmanager
def disk_space_guard(path: Path | str | None) -> Iterator[None]:
    """A full disk (ENOSPC, EDQUOT) or the file-size limit (EFBIG, ``ulimit -f``) while
    writing ``path`` becomes a DiskFullError naming the file (``None``: the file the OSError
    names)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        name = path if path is not None else exc.filename or "an output file"
        raise DiskFullError(
            "ディスクの空き容量が足りません\n"
            f"Not enough disk space while writing {name} ({exc.strerror or exc}).",
            "Free some disk space (or write to another disk) and run the command again.",
        ) from exc


def publish(tmp: Path, final: Path, replace: bool = False, what: str = "Output file") -> None:
    """Give the finished file ``tmp`` the name ``final`` (same folder). Without ``replace``
    the name is taken only if it is free, atomically: of two racing writers one wins and the
    other gets OutputExistsError."""
    try:
        if replace:
            os.replace(tmp, final)
            return
        wait_at_test_gate()
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise output_exists_error(final, what) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                                 errno.EMLINK, errno.ENOSYS):
                raise
            # a file system without hard links: reserve the name, then move the file onto it
            try:
                os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                raise output_exists_error(final, what) from None
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def claim_dir(path: Path, exist_ok: bool = False) -> bool:
    """Create the folder ``path``; True when this call created it. Without ``exist_ok`` an
    existing folder is an OutputExistsError: the folder is this command's alone."""
    wait_at_test_gate()
    try:
        path.mkdir()
        return True
    except FileExistsError:
        if exist_ok and path.is_dir():
            return False
        raise output_exists_error(path, "Output folder") from None
    except OSError as exc:
        raise PochiError("出力フォルダを作成できません\n"
                         f"Cannot create output folder {path}: {exc.strerror}",
                         "Choose a writable location.") from exc


def _take_claim(marker: Path) -> bool:
    """Create ``marker`` exclusively, holding this process's pid; False when it exists."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _drop_stale_claim(marker: Path) -> bool:
    """Remove a claim whose process is gone (killed before it could remove it); True when
    this call removed it. Renamed away first, so that of two callers one removes it."""
    from pochitrain.scratch import pid_alive

    try:
        pid = int(marker.read_text(encoding="ascii").strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0 or pid == os.getpid() or pid_alive(pid):
        return False
    grave = marker.with_name(f"{marker.name}.stale-{os.getpid()}")
    try:
        os.rename(marker, grave)
    except OSError:
        return False
    grave.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def claimed_output_dir(path: Path, check: Callable[[Path], None] | None = None,
                       new: bool = False) -> Iterator[Path]:
    """``path`` (created when missing) for this command alone while the block runs: a second
    command finds ``CLAIM_FILE`` and is refused at once; ``check(path)`` may refuse the folder.
    A failed block removes the files it added, and the folder if this call (``new``: the
    caller) created it and nothing else is in it."""
    created = claim_dir(path, exist_ok=True) or new
    marker = path / CLAIM_FILE
    if not _take_claim(marker) and not (_drop_stale_claim(marker) and _take_claim(marker)):
        raise OutputExistsError(
            "出力フォルダには別のコマンドが書き込み中です\n"
            f"{path} is being written by another pochi command.",
            "Choose another --output folder (if no pochi command is running, one that "
            f"stopped oddly left {marker}: delete it).")
    before = {p.name for p in path.iterdir()}
    try:
        if check is not None:
            check(path)
        yield path
    except BaseException:
        # the claim made everything new in the folder this command's own
        for added in (p for p in path.iterdir() if p.name not in before and p.is_file()):
            added.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    marker.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path | str, replace: bool = True,
                what: str = "Output file") -> Iterator[Path]:
    """Yield a temp path beside ``path`` that gets the name ``path`` only if the block
    succeeds (see ``publish``); a failure or Ctrl+C removes it, a full disk is a DiskFullError."""
    path = Path(path)
    with writing(path):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with disk_space_guard(path):
            yield tmp
        with writing(path):  # the folder may have gone or changed since the temp file was made
            # mkstemp creates 0600; give the file the mode a plain open() would have
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            publish(tmp, path, replace, what)
    finally:
        with contextlib.suppress(OSError):  # gone with its folder, or the folder replaced
            tmp.unlink()


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError while writing ``path``: a full disk as ``disk_space_guard`` says it, any other
    a PochiError naming the file."""
    with disk_space_guard(path):
        try:
            yield
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise
            raise PochiError("出力ファイルを作成できません\n"
                             f"Cannot write {path}: {exc.strerror or exc}.",
                             "Choose a writable location.") from exc


@contextlib.contextmanager
def atomic_file(path: Path | str, replace: bool = True,
                what: str = "Output file") -> Iterator[Path]:
    """``atomic_path`` for a block that only writes the temp file: its OSErrors name ``path``."""
    with atomic_path(path, replace, what) as tmp, writing(Path(path)):
        yield tmp


def atomic_write_bytes(path: Path | str, data: bytes | memoryview, replace: bool = True,
                       what: str = "Output file") -> None:
    with atomic_file(path, replace, what) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    """UTF-8; a file name that is not UTF-8 (read as surrogates) is written escaped, so the
    file stays valid UTF-8 instead of failing to write."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")
