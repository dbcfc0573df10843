from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from pochitrain.errors import OutputExistsError, PochiError, UsageError, is_bilingual
from pochitrain.workspace import (
    atomic_file,
    atomic_path,
    check_writable,
    make_folder,
    new_run_dir,
)


def test_run_dirs_increment_and_never_reuse(tmp_path: Path) -> None:
    day = dt.date(2026, 11, 28)
    a = new_run_dir(tmp_path, day)
    b = new_run_dir(tmp_path, day)
    assert (a.name, b.name) == ("20261128_001", "20261128_002")
    a.rmdir()  # a gap left by a deleted run is not refilled below the highest number
    assert new_run_dir(tmp_path, day).name == "20261128_003"


def test_a_folder_that_cannot_be_made_is_named_with_the_remedy(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file where a folder should go")
    assert make_folder(tmp_path / "a" / "b", "unused") == tmp_path / "a" / "b"
    assert make_folder(tmp_path / "a" / "b", "unused").is_dir()  # an existing folder is fine
    with pytest.raises(UsageError) as caught:
        make_folder(blocker / "plots", "Choose another --output-dir DIR.", UsageError)
    assert is_bilingual(caught.value.message)
    assert str(blocker / "plots") in caught.value.message
    assert caught.value.remedy == "Choose another --output-dir DIR."
    with pytest.raises(PochiError, match="Cannot create the output folder"):
        new_run_dir(blocker / "runs", hint="--work-dir DIR")
    assert blocker.read_text() == "a file where a folder should go"


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model.engine"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("build failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert list(tmp_path.iterdir()) == [target]


def test_a_folder_gone_while_writing_is_named(tmp_path: Path) -> None:
    """The folder removed (or replaced by a file) after the temp file was made, as another
    program may do while a background thread writes: a PochiError naming the file, never a
    bare OSError."""
    folder = tmp_path / "models"
    folder.mkdir()
    with (pytest.raises(PochiError, match="Cannot write .*a.pth") as caught,
          atomic_path(folder / "a.pth") as tmp):
        tmp.write_bytes(b"weights")
        shutil.rmtree(folder)
        folder.write_text("a file where the folder was", encoding="utf-8")
    assert is_bilingual(caught.value.message)
    folder.unlink()
    folder.mkdir()
    with (pytest.raises(PochiError, match="Cannot write .*b.pth"),
          atomic_file(folder / "b.pth") as tmp):
        shutil.rmtree(folder)
        tmp.write_bytes(b"weights")
    assert not folder.exists()


def test_a_file_where_the_output_folder_should_be_is_named(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder", encoding="utf-8")
    with pytest.raises(PochiError, match="afile is a file, not a folder") as caught:
        check_writable(afile / "x.onnx")
    assert is_bilingual(caught.value.message)
    with pytest.raises(PochiError, match="does not exist"):
        check_writable(tmp_path / "missing" / "x.onnx")


def test_check_writable_refuses_existing(tmp_path: Path) -> None:
    target = tmp_path / "x.onnx"
    target.write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_writable(target)
    check_writable(target, overwrite=True)
    assert target.read_bytes() == b"mine"


def test_atomic_files_get_the_usual_mode(tmp_path: Path) -> None:
    import os

    target = tmp_path / "report.csv"
    with atomic_path(target) as tmp:
        tmp.write_text("a")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
