"""``pochi sample-data DIR``: the digits image folders plus a ready ``DIR/config.py``."""

from __future__ import annotations

from pathlib import Path

from pochitrain.errors import OutputExistsError, PochiError


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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PochiError("フォルダを作成できません\n"
                         f"Cannot create {out_dir}: {exc.strerror}",
                         "Choose a writable location.") from exc
    write_digits(out_dir)
    return write_digits_config(out_dir / "config.py")
