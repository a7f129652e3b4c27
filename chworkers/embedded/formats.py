"""Output formats: which ones stream, and how chDB's blocks join into one document.

chDB's streaming query (``send_query``/``streaming_fetch_result``) formats every block
as a complete document of its own: a JSON result of four blocks would be four JSON
documents, ``CSVWithNames`` would repeat its header per block, ``ArrowStream`` would be
four IPC streams (readers stop after the first). ClickHouse writes one document per
result, however many blocks it has, so the endpoint joins the blocks where the format
allows it and asks chDB for the whole document (a non-streaming query) where it does not:

- *concatenated*: formats whose documents are just their rows (Native, RowBinary, TSV,
  CSV, JSONEachRow, ...): the blocks are written as they come;
- *header once*: the ``WithNames``/``WithNamesAndTypes`` variants of TSV, CSV,
  JSONCompactEachRow and RowBinary: every block after the first loses its header;
- ``Values``: the blocks are joined with a comma, as rows are;
- ``ArrowStream``: one IPC stream with one schema: the schema message of every block
  after the first and the end-of-stream marker of every block but the last are dropped
  (the record batches in between, one per block, are what ClickHouse writes too);
- everything else (JSON, JSONCompact, XML, Parquet, Arrow, ORC, Avro, Pretty*,
  Markdown, Vertical, Template, ...) has a prefix, a suffix, statistics or a footer that
  covers the whole result, and is produced whole by chDB.

Every joined result is byte for byte what chDB's non-streaming ``query()`` returns for
the same query (``tests/test_embedded_formats.py`` checks it).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from chworkers.embedded.exceptions import LOGICAL_ERROR, NOT_IMPLEMENTED, clickhouse_error


class Layout(enum.Enum):
    CONCAT = "concatenated"
    LINES_HEADER = "a header of escaped lines"
    CSV_HEADER = "a header of CSV records"
    ROWBINARY_HEADER = "a RowBinary header"
    VALUES = "comma-separated rows"
    ARROW_STREAM = "one Arrow IPC stream"
    WHOLE = "whole"


@dataclass(frozen=True)
class OutputFormat:
    name: str
    layout: Layout
    #: Header rows written before the data (1 for names, 2 for names and types).
    header_rows: int = 0

    @property
    def streams(self) -> bool:
        return self.layout is not Layout.WHOLE


def _table() -> dict[str, OutputFormat]:
    table: dict[str, OutputFormat] = {}

    def add(layout: Layout, names: str, header_rows: int = 0) -> None:
        for name in names.split():
            table[name.lower()] = OutputFormat(name, layout, header_rows)

    add(
        Layout.CONCAT,
        "Native RowBinary TabSeparated TSV TabSeparatedRaw TSVRaw Raw CSV JSONEachRow "
        "JSONLines NDJSON JSONStringsEachRow JSONCompactEachRow JSONCompactStringsEachRow "
        "MsgPack LineAsString CustomSeparated RawBLOB BSONEachRow TSKV Null",
    )
    add(
        Layout.LINES_HEADER,
        "TabSeparatedWithNames TSVWithNames JSONCompactEachRowWithNames "
        "JSONCompactStringsEachRowWithNames",
        1,
    )
    add(
        Layout.LINES_HEADER,
        "TabSeparatedWithNamesAndTypes TSVWithNamesAndTypes "
        "JSONCompactEachRowWithNamesAndTypes JSONCompactStringsEachRowWithNamesAndTypes",
        2,
    )
    add(Layout.CSV_HEADER, "CSVWithNames", 1)
    add(Layout.CSV_HEADER, "CSVWithNamesAndTypes", 2)
    add(Layout.ROWBINARY_HEADER, "RowBinaryWithNames", 1)
    add(Layout.ROWBINARY_HEADER, "RowBinaryWithNamesAndTypes", 2)
    add(Layout.VALUES, "Values")
    add(Layout.ARROW_STREAM, "ArrowStream")
    return table


_FORMATS = _table()


def output_format(name: str) -> OutputFormat:
    """How ``name`` (any case, as ClickHouse accepts it) is written; WHOLE if unknown."""
    return _FORMATS.get(name.lower(), OutputFormat(name, Layout.WHOLE))


def streamable_formats() -> list[str]:
    """The formats the endpoint streams, by their canonical names."""
    return sorted({f.name for f in _FORMATS.values()})


def check_protocol_version(fmt_name: str, version: int) -> None:
    """Refuse Native data for a client protocol revision chDB cannot write or read.

    With ``client_protocol_version`` ClickHouse writes Native blocks as that TCP protocol
    revision has them (block info, LowCardinality as dictionaries, the time zone in
    DateTime type names); chDB only has the revision-0 layout. Answering with an error
    rather than revision-0 bytes lets a client fall back (clickhouse-connect's probe
    does) instead of misreading the data.
    """
    if version and fmt_name.lower() == "native":
        raise clickhouse_error(
            NOT_IMPLEMENTED,
            f"client_protocol_version={version} is not supported by the embedded "
            "ClickHouse endpoint: chDB reads and writes Native only as for protocol "
            "version 0 (no block info, no time zone in DateTime type names); leave "
            "client_protocol_version out or set it to 0",
        )


class Joiner:
    """Turns chDB's per-block documents into the bytes of one document.

    Feed every block in order, write what :meth:`feed` returns, and at the end what
    :meth:`finish` returns.
    """

    def __init__(self, fmt: OutputFormat) -> None:
        if not fmt.streams:
            raise ValueError(f"{fmt.name} is produced whole, not joined")
        self.fmt = fmt
        self._prefix: bytes | None = None  # the first block's header or schema
        self._blocks = 0
        #: Set when a block's header or schema was not the first one's: the result
        #: cannot be joined (a setting this module does not know changed the layout).
        self.mismatched = False

    def feed(self, block: bytes) -> bytes:
        self._blocks += 1
        layout = self.fmt.layout
        if layout is Layout.CONCAT:
            return block
        if layout is Layout.VALUES:
            if not block:
                return b""
            first = self._prefix is None
            self._prefix = b""
            return block if first else b"," + block
        if layout is Layout.ARROW_STREAM:
            return self._arrow(block)
        end = self._header_end(block)
        header = block[:end]
        if self._prefix is None:
            self._prefix = header
            return block
        if header != self._prefix:
            raise self._mismatch("header")
        return block[end:]

    def finish(self) -> bytes:
        if self.fmt.layout is Layout.ARROW_STREAM and self._prefix is not None:
            return _ARROW_EOS
        return b""

    def _header_end(self, block: bytes) -> int:
        rows = self.fmt.header_rows
        if self.fmt.layout is Layout.LINES_HEADER:
            return _lines_end(block, rows)
        if self.fmt.layout is Layout.CSV_HEADER:
            return _csv_records_end(block, rows)
        return _rowbinary_header_end(block, rows)

    def _arrow(self, block: bytes) -> bytes:
        # An IPC stream: messages framed as 0xFFFFFFFF, int32 metadata length, metadata,
        # body; the first is the schema (no body), the last the end-of-stream marker.
        if len(block) < 16 or not block.endswith(_ARROW_EOS) or block[:4] != _CONTINUATION:
            raise self._mismatch("IPC stream framing")
        (meta_len,) = struct.unpack_from("<i", block, 4)
        schema_end = 8 + meta_len
        schema = block[:schema_end]
        if self._prefix is None:
            self._prefix = schema
            return block[: -len(_ARROW_EOS)]
        if schema != self._prefix:
            raise self._mismatch("schema")
        return block[schema_end : -len(_ARROW_EOS)]

    def _mismatch(self, what: str) -> Exception:
        self.mismatched = True
        return clickhouse_error(
            LOGICAL_ERROR,
            f"The {self.fmt.name} result changed its {what} between blocks; the endpoint "
            "cannot join the blocks into one document",
        )


_CONTINUATION = b"\xff\xff\xff\xff"
_ARROW_EOS = _CONTINUATION + b"\x00\x00\x00\x00"


def _lines_end(block: bytes, rows: int) -> int:
    """Where ``rows`` newline-terminated lines end (names are escaped: no raw newlines)."""
    pos = 0
    for _ in range(rows):
        nl = block.find(b"\n", pos)
        if nl < 0:
            return len(block)
        pos = nl + 1
    return pos


def _csv_records_end(block: bytes, rows: int) -> int:
    """Where ``rows`` CSV records end; a newline inside double quotes is data."""
    pos, n = 0, len(block)
    for _ in range(rows):
        quoted = False
        while pos < n:
            c = block[pos]
            pos += 1
            if c == 0x22:  # '"'; a doubled quote inside quotes toggles twice
                quoted = not quoted
            elif c == 0x0A and not quoted:
                break
    return pos


def _rowbinary_header_end(block: bytes, rows: int) -> int:
    """Where RowBinaryWithNames(AndTypes)'s header ends: a count, then strings."""
    count, pos = _varint(block, 0)
    for _ in range(count * rows):
        length, pos = _varint(block, pos)
        pos += length
    return min(pos, len(block))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data):
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
    return value, pos
