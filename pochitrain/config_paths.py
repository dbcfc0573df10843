"""Relative paths in config and suite files: the working directory or the file's folder.

The original pochitrain read ``train_data_root = "data/train"`` from the working directory
(its sample config lives in ``configs/`` and is run from the project root); pochitrain reads
it from the config's folder, so a config works from anywhere. Both are tried: a path that
exists in one folder is used from there (with a notice for the working directory), one in both
is refused, one in neither keeps both candidates for the error that names it. ``work_dir`` (an
output folder) follows the data folders instead; see ``_work_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pochitrain.config_checks import type_error
from pochitrain.errors import ConfigError
from pochitrain.workspace import recorded_path

CWD_NOTICE_JA = "作業ディレクトリから解決しました"
PATH_KEYS = ("train_data_root", "val_data_root", "work_dir")  # the config's folder paths
# (file, key, folder) already announced: a process may read a config more than once (each
# pochi optimize trial does), and the notice is said once
_NOTICED: set[tuple[str, str, Path]] = set()


def _say_cwd(source: Path, key: str, text: str, path: Path) -> None:
    """The one notice line for a path taken from the working directory."""
    if (str(source), key, path) in _NOTICED:
        return
    from pochitrain.console import info

    _NOTICED.add((str(source), key, path))
    info(f"{key} = {text!r}: {CWD_NOTICE_JA} / resolved against the working directory: {path}")


class AmbiguousPathError(ConfigError):
    """A relative path exists both under the working directory and the file's folder."""


class MissingPathError(ConfigError):
    """A relative path exists neither under the working directory nor the file's folder."""


@dataclass(frozen=True)
class ResolvedPath:
    """Where a path value led. ``anchor``: "absolute", "cwd", "file" or "missing";
    ``candidates``: (working-directory candidate, file-folder candidate) of a relative value."""

    value: str
    path: Path
    anchor: str
    candidates: tuple[Path, Path] | None = None


def resolve_relative(key: str, value: str | Path, base: Path, source: Path,
                     must_exist: bool = False) -> ResolvedPath:
    """Resolve ``value`` (the ``key`` of file ``source``) as the module docstring says;
    ``base``: the folder the file's own paths are relative to."""
    text = str(value)
    path = Path(text).expanduser()
    if path.is_absolute():
        return ResolvedPath(text, path, "absolute")
    in_cwd, in_base = (Path.cwd() / path).resolve(), (base / path).resolve()
    if in_cwd == in_base:
        return ResolvedPath(text, in_base, "file" if in_base.exists() else "missing",
                            (in_cwd, in_base))
    cwd_ok, base_ok = in_cwd.exists(), in_base.exists()
    if cwd_ok and base_ok:
        raise AmbiguousPathError(
            f"{key} = {text!r} ({source}) はどちらのフォルダを指すか決められません: "
            f"{in_cwd} と {in_base} の両方があります\n"
            f"{key} = {text!r} in {source} exists in two places: {in_cwd} (from the working "
            f"directory) and {in_base} (from the folder of {source.name}).",
            f"{key} に絶対パスを書いてください / Write {key} as an absolute path, or run from "
            "a directory where only the intended one exists.")
    if cwd_ok:
        _say_cwd(source, key, text, in_cwd)
        return ResolvedPath(text, in_cwd, "cwd", (in_cwd, in_base))
    resolved = ResolvedPath(text, in_base, "file" if base_ok else "missing", (in_cwd, in_base))
    if must_exist and not base_ok:
        raise missing_path_error(key, resolved, source)
    return resolved


def resolve_config_paths(values: dict[str, Any], config_dir: Path, config_path: Path | None
                         ) -> tuple[dict[str, str], dict[str, ResolvedPath]]:
    """(key -> absolute path, key -> the data folders found nowhere) for ``PATH_KEYS``; a
    data folder found nowhere falls back on the path the run's run.json recorded for it."""
    source = config_path or config_dir
    paths: dict[str, str] = {}
    missing: dict[str, ResolvedPath] = {}
    anchors: list[str] = []
    for key in PATH_KEYS:
        value = values.get(key)
        if value is None and key != "work_dir":
            continue
        if not isinstance(value, (str, Path)) or not str(value):
            raise type_error(key, value, "a folder path string")
        if key == "work_dir":
            paths[key] = str(_work_dir(str(value), config_dir, source, anchors))
            continue
        found = resolve_relative(key, value, config_dir, source)
        if found.anchor == "missing":
            recorded = recorded_path(config_path, key, found.value) if config_path else None
            if recorded is None:
                missing[key] = found
            else:
                found = ResolvedPath(found.value, recorded, "recorded")
        anchors.append(found.anchor)
        paths[key] = str(found.path)
    return paths, missing


def _work_dir(value: str, config_dir: Path, source: Path, data_anchors: list[str]) -> Path:
    """The output folder goes beside the data: the working directory when a data folder was
    found there (the original's place), the config's folder when one was found there; with
    absolute data paths, the working directory only when just it has the folder already.
    Never an error: a work_dirs folder in both places is common."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    in_cwd, in_base = (Path.cwd() / path).resolve(), (config_dir / path).resolve()
    relative = [a for a in data_anchors if a != "absolute"]
    use_cwd = ("cwd" in relative) if relative else in_cwd.is_dir() and not in_base.exists()
    if use_cwd and in_cwd != in_base:
        _say_cwd(source, "work_dir", value, in_cwd)
    return in_cwd if use_cwd else in_base


def missing_path_error(key: str, resolved: ResolvedPath, source: Path | None,
                       what: str = "") -> MissingPathError:
    """The error for a path that exists nowhere: the value, and each candidate tried."""
    where = f" ({source})" if source is not None else ""
    label = f"{what} " if what else ""
    if resolved.candidates is None or resolved.candidates[0] == resolved.candidates[1]:
        tried_ja, tried_en = f"{resolved.path} がありません", f"{resolved.path} does not exist."
    else:
        cwd, base = resolved.candidates
        tried_ja = (f"{cwd} (作業ディレクトリ基準) にも {base} (ファイルのフォルダ基準) にも"
                    "ありません")
        tried_en = (f"Neither {cwd} (from the working directory) nor {base} (from the "
                    f"file's folder) exists.")
    return MissingPathError(
        f"{label}{key} = {resolved.value!r}{where} が見つかりません: {tried_ja}\n"
        f"{label}{key} = {resolved.value!r}{where} was not found. {tried_en}",
        "パスを直すか、そのパスが有効なディレクトリから実行してください / Fix the path, or run "
        "from the directory it is relative to (the original pochitrain read relative paths "
        "from the working directory).")
