"""A record's fields as ClickHouse's input formats read them with their default
settings: a CSV line's fields (quoted or not), a TSV field unescaped, the text of a JSON
object's member as it was written. Malformed text raises
:class:`~chworkers.errors.RecordKeyError` naming the field."""

from __future__ import annotations

import json
import re

from chworkers.errors import RecordKeyError

__all__ = ["chomp", "csv_fields", "raw_member", "tsv_unescape"]

_HEX2 = re.compile(rb"[0-9A-Fa-f]{2}")
_TSV_ESCAPES = {
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("r"): b"\r",
    ord("n"): b"\n",
    ord("t"): b"\t",
    ord("0"): b"\0",
    ord("'"): b"'",
    ord('"'): b'"',
    ord("\\"): b"\\",
    ord("a"): b"\a",
    ord("v"): b"\v",
    ord("e"): b"\x1b",
}
_DECODER = json.JSONDecoder()


def chomp(record: bytes) -> bytes:
    """A CSV record without its line end (a quoted field may hold newlines)."""
    if record.endswith(b"\r\n"):
        return record[:-2]
    return record[:-1] if record.endswith(b"\n") else record


def csv_fields(line: bytes) -> list[tuple[bytes, bool]]:
    """A CSV line's fields (RFC 4180: a quoted field doubles its quotes), each with
    whether it was quoted."""
    out: list[tuple[bytes, bool]] = []
    i, n = 0, len(line)
    while True:
        j = i
        while j < n and line[j] in b" \t":
            j += 1
        if j < n and line[j] == 0x22:  # "
            chunks = []
            k = j + 1
            while True:
                q = line.find(b'"', k)
                if q < 0:
                    raise RecordKeyError("a CSV field's quotes are not closed", field="")
                chunks.append(line[k:q])
                if q + 1 < n and line[q + 1] == 0x22:
                    chunks.append(b'"')
                    k = q + 2
                    continue
                break
            out.append((b"".join(chunks), True))
            comma = line.find(b",", q + 1)
            if comma < 0:
                return out
            i = comma + 1
            continue
        comma = line.find(b",", i)
        if comma < 0:
            out.append((line[i:], False))
            return out
        out.append((line[i:comma], False))
        i = comma + 1


def tsv_unescape(text: bytes, name: str) -> bytes:
    if b"\\" not in text:
        return text
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != 0x5C or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        e = text[i + 1]
        if e == ord("x") and _HEX2.fullmatch(text[i + 2 : i + 4]):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
            continue
        escaped = _TSV_ESCAPES.get(e)
        if escaped is None:
            raise RecordKeyError(
                f"field {name} has the escape \\{chr(e)}, which chworkers does not read",
                field=name,
            )
        out += escaped
        i += 2
    return bytes(out)


def raw_member(record: bytes, name: str) -> bytes:
    """The text of member ``name`` of the JSON object ``record``, as written."""
    text = record.decode("utf-8")
    i = text.index("{") + 1
    found = ""
    while True:
        i = _skip_ws(text, i)
        key, i = _DECODER.raw_decode(text, i)
        i = _skip_ws(text, i)
        i = _skip_ws(text, i + 1)  # past ':'
        _, end = _DECODER.raw_decode(text, i)
        if key == name:
            found = text[i:end]
        i = _skip_ws(text, end)
        if text[i] == "}":
            return found.encode()
        i += 1  # past ','


def _skip_ws(text: str, i: int) -> int:
    while text[i] in " \t\r\n":
        i += 1
    return i
