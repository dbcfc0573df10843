"""multipart/form-data over a body already in memory (the middleware bounds its size).

Splitting on the boundary with ``bytes.find`` costs a few microseconds per request, where the
streaming form parser (python-multipart through Starlette's ``request.form()``, a spooled
temp file per upload) cost about a third of the event loop's time per request.

    parts = parse(body, content_type, max_files=64, max_fields=16)
    parts[i].name, .filename (None for a plain field), .content_type, .data
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from pochitrain.serve.decode import BadInput

# name=value or name="quoted \"value\"" in a header's parameters
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes


def _bad(detail: str) -> BadInput:
    return BadInput(400, "bad_multipart", "multipart の本文を読めません。",
                    f"The multipart body cannot be read: {detail}")


def params(value: str) -> dict[str, str]:
    """The parameters of a header value: 'form-data; name="files"; filename="a.jpg"'."""
    out = {}
    for key, raw in _PARAM.findall(value):
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        out[key.lower()] = raw
    if "filename*" in out:  # RFC 5987: charset'lang'percent-encoded
        charset, _, rest = out["filename*"].partition("'")
        out["filename"] = unquote(rest.partition("'")[2], charset or "utf-8", "replace")
    return out


def parse(body: bytes, content_type: str, *, max_files: int, max_fields: int) -> list[Part]:
    boundary = params(content_type).get("boundary", "")
    if not boundary:
        raise _bad("the Content-Type has no boundary.")
    delimiter = b"--" + boundary.encode("latin-1")
    separator = b"\r\n" + delimiter
    start = body.find(delimiter)
    if start < 0:
        raise _bad("the boundary does not occur in the body.")
    pos = start + len(delimiter)
    parts: list[Part] = []
    files = fields = 0
    while not body.startswith(b"--", pos):  # "--" after a delimiter closes the body
        line_end = body.find(b"\r\n", pos)
        end = body.find(separator, line_end)
        if line_end < 0 or end < 0:
            raise _bad("it ends before its closing boundary.")
        head_end = body.find(b"\r\n\r\n", line_end, end + 2)
        if head_end < 0:
            raise _bad("a part has no header block.")
        headers = {}
        for line in body[line_end + 2:head_end].decode("utf-8", "replace").split("\r\n"):
            key, colon, value = line.partition(":")
            if colon:
                headers[key.strip().lower()] = value.strip()
        disposition = params(headers.get("content-disposition", ""))
        if "name" not in disposition:
            raise _bad("a part has no Content-Disposition name.")
        filename = disposition.get("filename")
        if filename is not None:
            files += 1
            if files > max_files:
                raise _bad(f"Too many files. Maximum number of files is {max_files}.")
        else:
            fields += 1
            if fields > max_fields:
                raise _bad(f"Too many fields. Maximum number of fields is {max_fields}.")
        parts.append(Part(disposition["name"], filename, headers.get("content-type", ""),
                          body[head_end + 4:end]))
        pos = end + len(separator)
    return parts
