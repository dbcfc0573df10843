"""`pochi sample-data DIR`: the built-in digits as image folders, plus a ready config."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Write a real image-folder dataset without downloading anything: scikit-learn's 1,797
handwritten digits (8x8), upscaled to 32x32 RGB PNG files, split 80/20 (stratified, seeded,
identical on every machine):

  DIR/train/<0..9>/*.png
  DIR/val/<0..9>/*.png
  DIR/config.py          ready to train: pochi train -c DIR/config.py

DIR must not exist yet or be empty; nothing is overwritten.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR",
                        help="folder to create (must be new or empty), e.g. data/digits")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pochitrain.console import info
    from pochitrain.pipeline.quickstart import write_sample_data

    config = write_sample_data(args.dir)
    root = config.parent
    counts = {split: sum(1 for _ in (root / split).rglob("*.png")) for split in ("train", "val")}
    info(f"wrote {counts['train']} training images to {root / 'train'}")
    info(f"wrote {counts['val']} validation images to {root / 'val'}")
    info(f"wrote the config {config}")
    info(f"next: pochi train -c {Path(args.dir) / 'config.py'}")
    return 0
