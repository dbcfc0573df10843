"""multipart/form-data request bodies -> image payloads, parsed by python-multipart.

The body is already in memory (the middleware bounds its size), so python-multipart's
``MultipartParser`` runs over it in one ``write`` and callbacks collect each part; nothing is
spooled to a temp file as Starlette's ``request.form()`` would do.

Answers: a malformed body or too many parts 400 ``bad_multipart``; a file that is not an image
type 415; no file, or a ``top_k`` field that is not a whole number >= 1, 422.

    payloads, top_k = read_form(body, content_type, max_files=64)
"""

from __future__ import annotations

import email.message
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pochitrain.serve.decode import BadInput, Payload, check_part_type

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

try:  # python-multipart 0.0.13 and later
    from python_multipart.multipart import MultipartParser, parse_options_header
except ImportError:  # earlier releases install the same module as ``multipart``
    from multipart.multipart import (  # type: ignore[no-redef]
        MultipartParser,
        parse_options_header,
    )

MAX_FIELDS = 16  # plain form fields per request (only ``top_k`` is read)


@dataclass
class Part:
    name: str
    filename: str | None  # None for a plain field
    content_type: str
    data: bytes


def _bad(detail: str) -> BadInput:
    return BadInput(400, "bad_multipart", "multipart の本文を読めません。",
                    f"The multipart body cannot be read: {detail}")


def _filename_star(header: bytes) -> str | None:
    """An RFC 5987 ``filename*=charset''percent-encoded`` value, which python-multipart
    skips (RFC 7578 forbids it, yet some clients send it): decoded by the email package."""
    message = email.message.Message()
    message["content-disposition"] = header.decode("utf-8", "replace")
    return message.get_filename()


def _disposition(header: bytes) -> tuple[str, str | None]:
    """(name, filename) of a Content-Disposition header; filename None for a plain field."""
    # latin-1 in and out keeps the header's bytes; the names in it are UTF-8
    _, options = parse_options_header(header.decode("latin-1"))
    if b"name" not in options:
        raise _bad("a part has no Content-Disposition name.")
    name = options[b"name"].decode("utf-8", "replace")
    if b"filename*" in header:
        return name, _filename_star(header)
    filename = options.get(b"filename")
    return name, None if filename is None else filename.decode("utf-8", "replace")


@dataclass
class _Parts:
    """python-multipart's callbacks, collecting the parts of one body."""

    max_files: int
    parts: list[Part] = field(default_factory=list)
    ended: bool = False
    _headers: dict[str, bytes] = field(default_factory=dict)
    _field: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _chunks: list[bytes] = field(default_factory=list)
    _name: tuple[str, str | None] = ("", None)
    _files: int = 0
    _fields: int = 0

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self._begin, "on_header_field": self._on_field,
                "on_header_value": self._on_value, "on_header_end": self._header_end,
                "on_headers_finished": self._count, "on_part_data": self._data,
                "on_part_end": self._end, "on_end": self._finish}

    def _begin(self) -> None:
        self._headers.clear()
        self._chunks.clear()

    def _on_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _count(self) -> None:
        """The limits, checked as each part's headers end (before its data is kept)."""
        self._name = _disposition(self._headers.get("content-disposition", b""))
        filename = self._name[1]
        if filename is not None:
            self._files += 1
            if self._files > self.max_files:
                raise _bad(f"Too many files. Maximum number of files is {self.max_files}.")
        else:
            self._fields += 1
            if self._fields > MAX_FIELDS:
                raise _bad(f"Too many fields. Maximum number of fields is {MAX_FIELDS}.")

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._chunks.append(data[start:end])

    def _end(self) -> None:
        name, filename = self._name
        content_type = self._headers.get("content-type", b"").decode("utf-8", "replace")
        self.parts.append(Part(name, filename, content_type.strip(), b"".join(self._chunks)))

    def _finish(self) -> None:
        self.ended = True


def parse(body: bytes, content_type: str, *, max_files: int) -> list[Part]:
    """The parts of a multipart/form-data ``body``, in order; BadInput 400 when malformed."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if not boundary:
        raise _bad("the Content-Type has no boundary.")
    start = body.find(b"--" + boundary)
    if start < 0:
        raise _bad("the boundary does not occur in the body.")
    collected = _Parts(max_files)
    try:
        # a preamble before the first boundary is allowed (RFC 2046); the parser does not skip it
        parser = MultipartParser(boundary, collected.callbacks())
        parser.write(body[start:] if start else body)
        parser.finalize()
    except ValueError as exc:  # python-multipart's FormParserError and its subclasses
        raise _bad(f"{exc}.") from None
    if not collected.ended:
        raise _bad("it ends before its closing boundary.")
    return collected.parts


def read_form(body: bytes, content_type: str, *,
              max_files: int) -> tuple[list[Payload], int | None]:
    """(one payload per file part, the ``top_k`` form field or None)."""
    payloads: list[Payload] = []
    top_k: int | None = None
    for part in parse(body, content_type, max_files=max_files):
        if part.filename is not None:
            name = part.filename or part.name
            check_part_type(part.content_type, name)
            payloads.append(Payload(name, data=part.data))
        elif part.name == "top_k":
            top_k = _top_k(part.data.decode("utf-8", "replace"))
    if not payloads:
        raise BadInput(422, "no_files", "画像ファイルがありません。",
                       "The multipart body has no file: send images in the 'files' field.")
    return payloads, top_k


def _top_k(value: str) -> int:
    try:
        top_k = int(value)
    except ValueError:
        raise BadInput(422, "bad_top_k", f"top_k が整数ではありません: {value!r}",
                       f"top_k must be a whole number, got {value!r}.") from None
    if top_k < 1:
        raise BadInput(422, "bad_top_k", "top_k は 1 以上にしてください。",
                       f"top_k must be 1 or more, got {top_k}.")
    return top_k
