"""``val_split``: one folder of class sub-folders, split into training and validation images.

The split is stratified (each class gives the same share, at least one image to each side when
it has two or more) and seeded (``seed``; 0 when ``seed = None``, so that every DDP process
draws the same split). The run writes it to ``paths/train.txt`` and ``paths/val.txt``; a
resumed run reads it back from there, so images added to the folder later never move between
the sides of a run.
"""

from __future__ import annotations

import random
from pathlib import Path

from pochitrain.data import ImageFolder
from pochitrain.errors import DataError


def split_folder(folder: ImageFolder, fraction: float, seed: int | None
                 ) -> tuple[ImageFolder, ImageFolder]:
    """(train, val) of ``folder``: ``fraction`` of each class's images go to val."""
    rng = random.Random(seed if seed is not None else 0)
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for path, label in folder.samples:
        by_class.setdefault(label, []).append((path, label))
    train: list[tuple[Path, int]] = []
    val: list[tuple[Path, int]] = []
    for label in sorted(by_class):
        images = sorted(by_class[label])  # the file system's listing order does not matter
        rng.shuffle(images)
        n_val = min(max(round(len(images) * fraction), 1), len(images) - 1)
        val += images[:n_val]
        train += images[n_val:]
    return (ImageFolder(folder.root, folder.classes, sorted(train)),
            ImageFolder(folder.root, folder.classes, sorted(val)))


def recorded_split(run_dir: Path, folder: ImageFolder) -> tuple[ImageFolder, ImageFolder]:
    """The split a run wrote to ``paths/*.txt``, labelled by ``folder``'s classes."""
    sides = []
    for name in ("train.txt", "val.txt"):
        listed = run_dir / "paths" / name
        if not listed.is_file():
            raise DataError("学習の分割 (paths/*.txt) が見つかりません\n"
                            f"{listed} is missing: the run's val_split cannot be read back.",
                            "Restore the run's paths/ folder, or start a new run.")
        samples = []
        for line in listed.read_text(encoding="utf-8").splitlines():
            path = Path(line)
            if line and path.parent.name in folder.classes:
                samples.append((path, folder.classes.index(path.parent.name)))
        sides.append(ImageFolder(folder.root, folder.classes, samples))
    return sides[0], sides[1]
