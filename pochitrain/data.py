"""Image folders: listing, class checks and safe decoding (no torch here)."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pochitrain.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class ImageFolder:
    """``root/<class>/*.png`` (labelled) or ``root/*.png`` (unlabelled: labels are -1)."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def fingerprint(self) -> str:
        """sha256 over relative paths, sizes and mtimes: changes when the image set changes."""
        h = hashlib.sha256()
        for path, label in self.samples:
            st = path.stat()
            h.update(f"{path.relative_to(self.root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def scan_image_folder(root: Path | str, what: str = "data folder",
                      allow_unlabelled: bool = True) -> ImageFolder:
    """List images under ``root``; class folders are the sorted sub-folder names."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"The {what} does not exist: {root}",
                        "Check the path (e.g. --data DIR or the config's *_data_root).")
    if not root.is_dir():
        raise DataError(f"The {what} is not a folder: {root}",
                        "Pass a folder that holds one sub-folder of images per class.")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        samples: list[tuple[Path, int]] = []
        empty = []
        for idx, d in enumerate(subdirs):
            files = sorted(p for p in d.rglob("*") if _is_image(p))
            if not files:
                empty.append(d.name)
            samples.extend((p, idx) for p in files)
        if empty:
            raise DataError(
                f"Class folder(s) with no images in {root}: {', '.join(empty)}",
                f"Add images ({', '.join(IMAGE_EXTENSIONS)}) or remove the empty folder(s).",
            )
        return ImageFolder(root, [d.name for d in subdirs], samples)
    files = sorted(p for p in root.iterdir() if _is_image(p))
    if not files or not allow_unlabelled:
        raise DataError(
            f"No images found in the {what}: {root}",
            "Expected <folder>/<class_name>/*.png|jpg (one sub-folder per class).",
        )
    return ImageFolder(root, [], [(p, -1) for p in files])


def check_classes(folder: ImageFolder, model_classes: list[str]) -> None:
    """The data's class folders must be exactly the model's classes (names, not order)."""
    if not folder.labelled or folder.classes == list(model_classes):
        return
    extra = sorted(set(folder.classes) - set(model_classes))
    missing = sorted(set(model_classes) - set(folder.classes))
    detail = []
    if extra:
        detail.append(f"not in the model: {', '.join(extra)}")
    if missing:
        detail.append(f"missing from the data: {', '.join(missing)}")
    if not detail:
        return  # same names; labels are remapped by name by the caller
    raise DataError(
        f"The classes of {folder.root} differ from the model's classes ({'; '.join(detail)}).",
        f"The model knows: {', '.join(model_classes)}. Point --data at a folder with these "
        "class sub-folders (or an unlabelled folder of images).",
    )


def remap_labels(folder: ImageFolder, model_classes: list[str]) -> ImageFolder:
    """Relabel samples by class name so label i means model_classes[i]."""
    if not folder.labelled:
        return folder
    index = {name: i for i, name in enumerate(model_classes)}
    samples = [(p, index[folder.classes[label]]) for p, label in folder.samples]
    return ImageFolder(folder.root, list(model_classes), samples)


def open_rgb(path: Path) -> Image.Image | None:
    """Decode an image fully as RGB; None when the file is corrupt or not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
