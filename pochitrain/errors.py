"""User-facing errors: a ``PochiError`` subclass carries ``message`` (a Japanese line, then
English lines) and ``remedy``; the CLI prints both (``console.print_error``), never a
traceback, and exits with ``exit_code`` (2: usage, 1: runtime).
"""

from __future__ import annotations

import re

# Hiragana, katakana, CJK ideographs and full-width forms: what makes a line Japanese.
_JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff00-\uffef]")
_KANA = re.compile(r"[\u3040-\u30ff]")


def is_bilingual(message: str) -> bool:
    """True when ``message`` is a Japanese line followed by an English line (one without
    kana, with Latin letters): the convention every ``PochiError`` message follows."""
    first, _, rest = message.partition("\n")
    english = rest.split("\n", 1)[0]
    return (bool(_JAPANESE.search(first)) and not _KANA.search(english)
            and re.search("[A-Za-z]", english) is not None)


def english_part(message: str) -> str:
    """The English lines of a bilingual message, for quoting it inside another message's
    English line; other messages as they are."""
    return message.partition("\n")[2] if is_bilingual(message) else message


class PochiError(Exception):
    exit_code = 1

    def __init__(self, message: str, remedy: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def __str__(self) -> str:
        return self.message if not self.remedy else f"{self.message}\n{self.remedy}"


class UsageError(PochiError):
    """Bad command-line arguments."""

    exit_code = 2


class GpuMemoryError(UsageError):
    """A batch does not fit in the GPU's memory (a smaller batch size is the remedy)."""


class MemoryShortError(PochiError):
    """The machine's memory ran out (a huge --input-size or batch, a huge image)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, at most ``limit`` characters, for a message
    of ours; its type's name when the message is empty (``str(exc)`` may be "")."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def out_of_memory(exc: BaseException, verb: str) -> MemoryShortError | None:
    """The message for an allocation that failed (Python's MemoryError, numpy's, PyTorch's CPU
    or CUDA allocator); None for any other exception."""
    text = str(exc)
    if not (isinstance(exc, MemoryError) or "can't allocate memory" in text
            or "out of memory" in text.lower()):
        return None
    first = text.strip().splitlines()[0][-200:] if text.strip() else type(exc).__name__
    return MemoryShortError(
        "メモリが足りません\n"
        f"'{verb}' ran out of memory: {first}",
        "Use a smaller --input-size / --batch-size (or input_size / batch_size in the "
        "config), or run on a machine with more memory.")


class ConfigError(PochiError):
    """A config file is missing, unreadable or invalid."""

    exit_code = 2


class DataError(PochiError):
    """An image folder is missing, empty or does not match the model."""


class ModelFileError(PochiError):
    """A checkpoint / ONNX / engine file is missing, corrupt or not ours."""


class ShapeError(PochiError):
    """An ONNX input shape cannot be used as asked (e.g. dynamic H/W without --input-size)."""

    exit_code = 2


class OutputExistsError(PochiError):
    """An output file exists and --overwrite was not given."""

    exit_code = 2


class DiskFullError(PochiError):
    """The disk (or the file-size limit, ``ulimit -f``) ran out while writing an output."""


class BackendMissingError(PochiError):
    """The library a verb needs (TensorRT, ModelOpt, CUDA...) is not installed or usable."""


class BuildError(PochiError):
    """The TensorRT builder or parser failed."""


class ExportError(PochiError):
    """The ONNX exporter failed on a model."""


class VerificationError(PochiError):
    """A converted model does not agree with its source beyond tolerance."""


class CalibrationError(PochiError):
    """INT8 calibration cannot run (no data, no val_transform, ...)."""


class EngineLoadError(PochiError):
    """A TensorRT engine cannot be deserialized or run here."""


class TrainingError(PochiError):
    """Training cannot go on (e.g. the loss became NaN / inf)."""


class PeerLostError(TrainingError):
    """This process of a multi-process (DDP) run stopped because another one failed; the
    launcher reports the other one's error (exit code 3 tells them apart)."""

    exit_code = 3
