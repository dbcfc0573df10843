"""multipart/form-data bodies -> image payloads, parsed by python-multipart's MultipartParser.

The body is already in memory (the middleware bounds its size), so the parser runs over it in
one ``write``; nothing is spooled to a temp file as Starlette's ``request.form()`` would do.
"""

from __future__ import annotations

import email.message
from typing import TYPE_CHECKING

from pochitrain.serve.decode import BadInput, Payload, check_part_type

try:  # python-multipart 0.0.13 and later
    from python_multipart.multipart import MultipartParser, parse_options_header
except ImportError:  # earlier releases install the same module as ``multipart``
    from multipart.multipart import (  # type: ignore[no-redef]
        MultipartParser,
        parse_options_header,
    )

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELDS = 16  # plain form fields per request (only ``top_k`` is read)
Part = tuple[str, "str | None", str, bytes]  # name, filename (None: a field), type, data


def _bad(detail: str) -> BadInput:
    return BadInput(400, "bad_multipart", "multipart の本文を読めません。",
                    f"The multipart body cannot be read: {detail}")


def _disposition(header: bytes) -> tuple[str, str | None]:
    """(name, filename) of a Content-Disposition header; filename None for a plain field."""
    # latin-1 in and out keeps the header's bytes; the names in it are UTF-8
    _, options = parse_options_header(header.decode("latin-1"))
    if b"name" not in options:
        raise _bad("a part has no Content-Disposition name.")
    name = options[b"name"].decode("utf-8", "replace")
    if b"filename*" in header:  # RFC 5987, skipped by python-multipart, yet some clients send it
        message = email.message.Message()
        message["content-disposition"] = header.decode("utf-8", "replace")
        return name, message.get_filename()
    filename = options.get(b"filename")
    return name, None if filename is None else filename.decode("utf-8", "replace")


class _Collector:
    """python-multipart's callbacks: collects the parts and checks the limits as they come."""

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self.parts: list[Part] = []
        self.headers: dict[str, bytes] = {}
        self.field, self.value = bytearray(), bytearray()
        self.chunks: list[bytes] = []
        self.name: str = ""
        self.filename: str | None = None
        self.fields = self.files = 0
        self.ended = False

    def callbacks(self) -> MultipartCallbacks:
        return {"on_header_field": lambda data, a, b: self.field.extend(data[a:b]),
                "on_header_value": lambda data, a, b: self.value.extend(data[a:b]),
                "on_header_end": self.header_end, "on_headers_finished": self.headers_done,
                "on_part_data": lambda data, a, b: self.chunks.append(data[a:b]),
                "on_part_end": self.part_end, "on_end": self.end}

    def header_end(self) -> None:
        self.headers[self.field.decode("latin-1").strip().lower()] = bytes(self.value)
        self.field.clear()
        self.value.clear()

    def headers_done(self) -> None:  # the limits, checked before the part's data is kept
        self.name, self.filename = _disposition(self.headers.get("content-disposition", b""))
        if self.filename is None:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise _bad(f"Too many fields. Maximum number of fields is {MAX_FIELDS}.")
        else:
            self.files += 1
            if self.files > self.max_files:
                raise BadInput(413, "too_many_images",
                               f"画像が多すぎます (1 リクエスト {self.max_files} 枚まで)。",
                               f"More than {self.max_files} files in one multipart request "
                               "(--max-images): send fewer per request.")

    def part_end(self) -> None:
        kind = self.headers.get("content-type", b"").decode("utf-8", "replace").strip()
        self.parts.append((self.name, self.filename, kind, b"".join(self.chunks)))
        self.headers.clear()
        self.chunks.clear()

    def end(self) -> None:
        self.ended = True


def read_form(body: bytes, content_type: str, *,
              max_files: int) -> tuple[list[Payload], int | None]:
    """(one payload per file part, the ``top_k`` form field or None); BadInput 400 when
    the body is malformed."""
    boundary = parse_options_header(content_type)[1].get(b"boundary", b"")
    if not boundary:
        raise _bad("the Content-Type has no boundary.")
    start = body.find(b"--" + boundary)
    if start < 0:
        raise _bad("the boundary does not occur in the body.")
    collector = _Collector(max_files)
    try:
        # a preamble before the first boundary is allowed (RFC 2046); the parser does not skip it
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body[start:])
        parser.finalize()
    except ValueError as exc:  # python-multipart's FormParserError and its subclasses
        raise _bad(f"{exc}.") from None
    if not collector.ended:
        raise _bad("it ends before its closing boundary.")
    payloads: list[Payload] = []
    top_k: int | None = None
    for name, filename, kind, data in collector.parts:
        if filename is not None:
            check_part_type(kind, filename or name)
            payloads.append(Payload(filename or name, data=data))
        elif name == "top_k":
            top_k = _top_k(data.decode("utf-8", "replace"))
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
