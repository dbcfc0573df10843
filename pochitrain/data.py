"""Image folders: listing, class checks and safe decoding (no torch here)."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from pochitrain.errors import DataError, UsageError
from pochitrain.preprocess import rgb8

PIXEL_LIMIT_ENV = "POCHI_MAX_IMAGE_PIXELS"
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
            h.update(f"{path.relative_to(self.root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n"
                     .encode(errors="surrogateescape"))  # a file name that is not UTF-8
        return h.hexdigest()


def _is_image(entry: os.DirEntry[str]) -> bool:
    """A file (or a link to one) with an image suffix and not hidden."""
    name = entry.name
    if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
        return False
    try:
        return entry.is_file()  # the listing's file type: a stat only for links
    except OSError:
        return False


def _is_folder(entry: os.DirEntry[str], follow_links: bool = True) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow_links)
    except OSError:
        return False


def _typed_children(folder: Path,
                    strict: bool = False) -> list[tuple[str, Path, os.DirEntry[str]]]:
    """(name, path, directory entry) of each entry of ``folder``; none when it cannot be read
    (as ``Path.rglob`` skips it), unless ``strict``. Paths from ``iterdir`` know their text at
    once (a joined path parses itself later, in the reading threads); entries spare a stat."""
    try:
        with os.scandir(folder) as listing:
            entries = {entry.name: entry for entry in listing}
        paths = list(folder.iterdir())
    except OSError:
        if strict:
            raise
        return []
    named = ((os.path.basename(path), path) for path in paths)
    return [(name, path, entries[name]) for name, path in named if name in entries]


def _image_files(folder: Path) -> list[Path]:
    """The images under ``folder`` and its sub-folders (linked sub-folders not entered; hidden
    files left out), in path order: what sorting ``folder.rglob("*")``'s images gives."""
    found: list[tuple[tuple[str, ...], Path]] = []
    todo: list[tuple[tuple[str, ...], Path]] = [((), folder)]
    while todo:
        rel, here = todo.pop()
        for name, path, entry in _typed_children(here):
            if _is_image(entry):
                found.append(((*rel, name), path))
            elif _is_folder(entry, follow_links=False):
                todo.append(((*rel, name), path))
    found.sort(key=lambda item: item[0])  # a path's parts in turn: sorted Path objects' order
    return [path for _, path in found]


def scan_image_folder(root: Path | str, what: str = "data folder",
                      allow_unlabelled: bool = True) -> ImageFolder:
    """List images under ``root``; class folders are the sorted sub-folder names."""
    root = Path(root)
    if not root.exists():
        raise DataError("データフォルダが存在しません\n"
                        f"The {what} does not exist: {root}",
                        "Check the path (e.g. --data DIR or the config's *_data_root).")
    if not root.is_dir():
        raise DataError("データのパスがフォルダではありません\n"
                        f"The {what} is not a folder: {root}",
                        "Pass a folder that holds one sub-folder of images per class.")
    top = _typed_children(root, strict=True)
    subdirs = sorted(path for name, path, entry in top
                     if not name.startswith(".") and _is_folder(entry))
    if subdirs:
        samples: list[tuple[Path, int]] = []
        empty = []
        for idx, d in enumerate(subdirs):
            files = _image_files(d)
            if not files:
                empty.append(d.name)
            samples.extend((p, idx) for p in files)
        if empty:
            raise DataError(
                "画像のないクラスフォルダがあります\n"
                f"Class folder(s) with no images in {root}: {', '.join(empty)}",
                f"Add images ({', '.join(IMAGE_EXTENSIONS)}) or remove the empty folder(s).",
            )
        return ImageFolder(root, [d.name for d in subdirs], samples)
    files = [path for _, path, entry in sorted(top, key=lambda t: t[0]) if _is_image(entry)]
    if not files or not allow_unlabelled:
        raise DataError(
            "データフォルダに画像が見つかりません\n"
            f"No images found in the {what}: {root}",
            "Expected <folder>/<class_name>/*.png|jpg (one sub-folder per class).",
        )
    return ImageFolder(root, [], [(p, -1) for p in files])


def check_classes(folder: ImageFolder, model_classes: list[str],
                  for_training: bool = False) -> None:
    """Every class folder of the data must be one of the model's classes (a subset is fine:
    :func:`remap_labels`). ``for_training``: ``folder`` is val_data_root and
    ``model_classes`` the training folder's classes."""
    if not folder.labelled:
        return
    unknown = sorted(set(folder.classes) - set(model_classes))
    if not unknown:
        return
    known = ", ".join(model_classes)
    if for_training:
        raise DataError(
            "検証データに学習データにないクラスのフォルダがあります\n"
            f"The validation data (val_data_root, {folder.root}) has class folder(s) that the "
            f"training data (train_data_root) does not have: {', '.join(unknown)}.",
            f"The training classes are: {known}. Make val_data_root's class sub-folders some or "
            "all of these, or add the missing classes to train_data_root.",
        )
    raise DataError(
        "モデルにないクラスのフォルダがあります\n"
        f"{folder.root} has class folder(s) not in the model: {', '.join(unknown)}.",
        f"The model's classes are: {known}. Use a data folder whose class sub-folders are some "
        "or all of these (or a folder of unlabelled images).",
    )


def remap_labels(folder: ImageFolder, model_classes: list[str]) -> ImageFolder:
    """Relabel samples by class name so label i means model_classes[i]."""
    if not folder.labelled:
        return folder
    index = {name: i for i, name in enumerate(model_classes)}
    samples = [(p, index[folder.classes[label]]) for p, label in folder.samples]
    return ImageFolder(folder.root, list(model_classes), samples)


def pixel_limit_from_env(environ: Mapping[str, str] = os.environ) -> None:
    """``POCHI_MAX_IMAGE_PIXELS``: PIL's decompression-bomb limit (``none`` or 0: no limit);
    unset, ``PIL.Image.MAX_IMAGE_PIXELS`` is left as a program embedding pochitrain set it."""
    text = environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not text:
        return
    if text.lower() in ("none", "0", "off"):
        Image.MAX_IMAGE_PIXELS = None
        return
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = -1
    if value < 1:
        raise UsageError("POCHI_MAX_IMAGE_PIXELS には画素数を指定してください\n"
                         f"{PIXEL_LIMIT_ENV}={text!r} is not a number of pixels.",
                         f"Set {PIXEL_LIMIT_ENV} to a whole number (e.g. 200000000) or 'none'.")
    Image.MAX_IMAGE_PIXELS = value


def _over_pixel_limit(img: Image.Image, path: Path) -> bool:
    """PIL only warns between MAX_IMAGE_PIXELS and twice that: treat it as the limit."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or img.width * img.height <= limit:
        return False
    _warn_pixel_limit(f"{path} has {img.width}x{img.height} pixels", limit)
    return True


_limit_warned = False


def _warn_pixel_limit(what: str, limit: int | None) -> None:
    """Once per process: why such a file is skipped and how to read it anyway."""
    global _limit_warned
    if _limit_warned:
        return
    _limit_warned = True
    from pochitrain.console import warn

    warn(f"{what}, over the limit of {limit} pixels: skipped like an unreadable image. "
         f"Set the environment variable {PIXEL_LIMIT_ENV}=N (or 'none') to read larger images.")


def upright(image: Image.Image) -> Image.Image:
    """A PIL image as decoded from a file (``format`` set: not yet edited), loaded (a truncated
    file fails here) and with its EXIF orientation applied; other images as they are."""
    if image.format is None:
        return image
    image.load()
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - broken EXIF block: keep the stored pixels
        return image


def open_rgb(path: Path) -> Image.Image | None:
    """The image as 8-bit RGB, upright (EXIF orientation) and 16-bit scaled, as training, CPU
    and GPU inference all see it; None when corrupt, not an image or over PIL's pixel limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                if _over_pixel_limit(img, path):
                    return None
                return rgb8(upright(img))
    except Image.DecompressionBombError:
        _warn_pixel_limit(f"{path} is too large", Image.MAX_IMAGE_PIXELS)
        return None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


pixel_limit_from_env()
