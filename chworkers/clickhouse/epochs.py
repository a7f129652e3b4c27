"""Epoch numbers in JSONEachRow records, read as the people who send them mean them.

With ``date_time_input_format = best_effort`` ClickHouse reads a timestamp *string* the
way people write it: ISO 8601 with a zone (``"2026-12-01T10:00:00Z"``, ``+02:00``,
fractions), or epoch digits told apart by their length (10 digits: seconds, 13:
milliseconds, 16: microseconds, 19: nanoseconds). A JSON *number* takes another path:
it is read as whole seconds, so epoch milliseconds saturate a ``DateTime`` column at
2106-02-07 06:28:15 without an error and overflow a ``DateTime64`` one
(DECIMAL_OVERFLOW), and servers before 26.x (``input_format_read_datetime_number_as_raw_value``)
read a number in a ``DateTime64(p)`` column as ticks of 10^-p s, so epoch seconds land
in January 1970.

:func:`rewrite` turns the numbers of a table's timestamp columns (top-level fields of
type ``DateTime``/``DateTime64``, ``Nullable`` or not) into ISO 8601 UTC strings before
the records are sent. Its unit is told by the number's magnitude, as best_effort tells
digits by their count: below 10^11 seconds (up to the year 5138), then milliseconds,
microseconds below 10^17, nanoseconds beyond; fractions are kept to the nanosecond
(exact decimal arithmetic, no float rounding). Records without such a number go as they
are, byte for byte; a batch without any is not even split into lines. A number out of
the range of a date (years 1 to 9999) is left alone, for ClickHouse to reject.

Whether a batch needs the rewrite at all is one scan of its bytes (:func:`needs_rewrite`),
which the caller of an insert may do ahead of the worker, off the request's path: an
insert that says it was checked against the same :class:`TimestampColumns` the worker
finds for its table (``prepare(..., checked=...)``) goes without the worker's own scan.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from chworkers.clickhouse.dedup import Queries

__all__ = [
    "TimestampColumns",
    "forget",
    "is_timestamp_type",
    "needs_rewrite",
    "prepare",
    "rewrite",
    "rewrites",
    "table_timestamps",
    "timestamp_columns",
    "to_iso",
]

_TIMESTAMP = re.compile(r"^(?:Nullable\()?(?:LowCardinality\()?DateTime(?:64)?\b")
#: Plain DateTime (its time zone or not), which reads a JSON number as whole seconds.
_WHOLE_SECONDS = re.compile(r"^(?:Nullable\()?(?:LowCardinality\()?DateTime(?:\(|\)|$)")
_EPOCH = _dt.datetime(1970, 1, 1)
_UNITS = ((Decimal(10) ** 11, 0), (Decimal(10) ** 14, 3), (Decimal(10) ** 17, 6))


@dataclass(frozen=True)
class TimestampColumns:
    """A table's timestamp columns (top-level DateTime/DateTime64, Nullable or not) and
    those of them of plain ``DateTime`` (which read whole epoch seconds right)."""

    columns: tuple[str, ...] = ()
    seconds: frozenset[str] = frozenset()


def is_timestamp_type(type_name: str) -> bool:
    """Whether a column of this ClickHouse type takes a timestamp (DateTime, DateTime64,
    their Nullable forms)."""
    return bool(_TIMESTAMP.match(type_name))


def to_iso(number: str) -> str | None:
    """An epoch number (its JSON text) as an ISO 8601 UTC string, its unit told by its
    magnitude; None when it is no number or out of the range of a date."""
    if number.isdigit() or (number[:1] == "-" and number[1:].isdigit()):
        whole = int(number)  # the common case, in integers
        size = abs(whole)
        digits = 0 if size < 10**11 else 3 if size < 10**14 else 6 if size < 10**17 else 9
        nanos = whole * 10 ** (9 - digits)
    else:
        try:
            value = Decimal(number)
        except InvalidOperation:
            return None
        if not value.is_finite():
            return None
        digits = next((d for limit, d in _UNITS if abs(value) < limit), 9)
        nanos = int((value * 10 ** (9 - digits)).to_integral_value(rounding="ROUND_FLOOR"))
    seconds, fraction = divmod(nanos, 10**9)
    try:
        moment = _EPOCH + _dt.timedelta(seconds=seconds)
    except OverflowError:
        return None
    return (
        f"{moment:%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"
        if fraction
        else f"{moment:%Y-%m-%dT%H:%M:%S}Z"
    )


def _number_pattern(columns: Sequence[str], seconds: Collection[str] = ()) -> re.Pattern[bytes]:
    """A number in one of ``columns`` that needs reading by magnitude: any number, but in
    the ``seconds`` columns (plain ``DateTime``) only one that is not whole seconds
    (negative, 12 digits or more, a fraction or an exponent): ClickHouse reads whole
    seconds there as they are meant."""
    alternatives = []
    for c in columns:
        name = _key(c)
        # Whole seconds: a number that is not 1 to 11 digits ending there. Possessive,
        # and the usual case refused by one lookahead, so that the one scan of a batch
        # costs about 8 ms per 100,000 records (as alternatives that backtrack: 18).
        tail = rb"(?=[-0-9])(?![0-9]{1,11}+[^0-9.eE])" if c in seconds else rb"-?[0-9]"
        alternatives.append(name + rb"\s*+:\s*+" + tail)
    return re.compile(b"|".join(alternatives))


def rewrite(
    data: bytes | memoryview, columns: Sequence[str], seconds: Collection[str] = ()
) -> bytes | memoryview:
    """``data`` (JSONEachRow records) with the epoch numbers of ``columns`` as ISO strings.

    Only top-level fields change (a nested field of the same name is data, not a
    timestamp column); a line that is not a JSON object goes as it is, for ClickHouse to
    reject with its own reason. Whole seconds in the ``seconds`` columns (plain
    ``DateTime``, which reads them right) do not make a line rewritten: a batch of
    them goes as it is, found by one scan at C speed instead of 6 us per record.
    """
    if not columns:
        return data
    pattern = _number_pattern(columns, seconds)
    if pattern.search(data) is None:
        return data  # a view stays a view: no copy
    if not isinstance(data, bytes):
        data = bytes(data)
    wanted = set(columns)
    numbers = {c: _field_number(c) for c in columns}
    out: list[bytes] = []
    for line in data.splitlines(keepends=True):
        out.append(_fast_line(line, numbers, wanted) if pattern.search(line) else line)
    return b"".join(out)


def needs_rewrite(data: bytes | memoryview, timestamps: TimestampColumns) -> bool:
    """Whether :func:`rewrite` may change ``data`` for these columns: False means it
    holds no epoch number to rewrite (nor does any run of its whole records), so it goes
    byte for byte. One scan at C speed, about 7 ms per 100,000 records.

    The scan is :func:`_compact_pattern`'s, which finds at least where the full
    pattern would and, on records written without whitespace, only that; from the first
    place it finds the full pattern decides (at once, on a number to rewrite)."""
    if not timestamps.columns:
        return False
    columns, seconds = timestamps.columns, timestamps.seconds
    found = _compact_pattern(columns, seconds).search(data)
    if found is None:
        return False
    return _number_pattern(columns, seconds).search(data, found.start()) is not None


def _compact_pattern(columns: Sequence[str], seconds: Collection[str] = ()) -> re.Pattern[bytes]:
    """Where :func:`_number_pattern` may match, read the way most records are written:
    a column's key, a colon and a number it matches with nothing between them (``-``,
    or digits that it does not read as whole seconds in the ``seconds`` columns); or a
    key followed by whitespace, or by a colon and whitespace (which the full pattern
    then reads). A key followed at once by its colon and a number is the common case,
    and its number is told from one position, where the full pattern's lookaheads cost
    ~16% more per record."""
    alternatives = []
    for c in columns:
        # A number of whole seconds: 1 to 11 digits followed by anything but a digit, a
        # point or an exponent (not the end of the batch); anything else is a match.
        number = rb"[0-9]{1,11}+(?:[0-9.eE]|\Z)|-" if c in seconds else rb"-?[0-9]"
        alternatives.append(_key(c) + rb"(?::(?:" + number + rb"|\s)|\s)")
    return re.compile(b"|".join(alternatives))


def _key(column: str) -> bytes:
    """A pattern of ``column``'s name as a JSON key: as written by encoders that keep
    non-ASCII characters (UTF-8, what most of them write) and by those that escape them
    (``\\uXXXX``, Python's default); one form for an ASCII name."""
    forms = dict.fromkeys(
        re.escape(json.dumps(column, ensure_ascii=ascii).encode()) for ascii in (False, True)
    )
    return forms.popitem()[0] if len(forms) == 1 else b"(?:" + b"|".join(forms) + b")"


def _field_number(column: str) -> re.Pattern[bytes]:
    """``"column": <JSON number>``, the number in group 1."""
    return re.compile(
        _key(column) + rb"\s*:\s*(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    )


def _fast_line(line: bytes, numbers: dict[str, re.Pattern[bytes]], columns: set[str]) -> bytes:
    """The common case at C speed: a column's ``"name": <number>`` matched once in the
    line, with no ``{`` or ``[`` between the record's opening brace and it, can only be
    the top-level field (``"name"`` followed by ``:`` cannot sit inside a JSON string,
    and nesting needs an opening bracket first). Anything else (the key twice, after a
    nested value, escaped in its name...) takes :func:`_line`, which walks the record's
    top level."""
    opening = len(line) - len(line.lstrip())
    if line[opening : opening + 1] != b"{":
        return line  # not a JSON object: ClickHouse says why
    spans: list[tuple[int, int]] = []
    for pattern in numbers.values():
        found = list(pattern.finditer(line))
        if not found:
            continue
        if len(found) > 1:
            return _line(line, columns)
        begin = found[0].start()
        if line.find(b"{", opening + 1, begin) >= 0 or line.find(b"[", opening, begin) >= 0:
            return _line(line, columns)
        spans.append(found[0].span(1))
    pieces: list[bytes] = []
    done = 0
    for start, stop in sorted(spans):
        iso = to_iso(line[start:stop].decode())
        if iso is not None:
            pieces += (line[done:start], b'"', iso.encode(), b'"')
            done = stop
    if not done:
        return line
    pieces.append(line[done:])
    return b"".join(pieces)


def _line(line: bytes, columns: set[str]) -> bytes:
    try:
        text = line.decode()
        spans = [
            (start, stop)
            for key, start, stop in _top_level(text)
            if key in columns and text[start] in _NUMBER_START
        ]
    except (UnicodeDecodeError, ValueError, IndexError):
        return line  # not a JSON object: ClickHouse says why
    pieces: list[str] = []
    done = 0
    for start, stop in spans:
        iso = to_iso(text[start:stop])
        if iso is not None:
            pieces += (text[done:start], '"', iso, '"')
            done = stop
    if not done:
        return line
    pieces.append(text[done:])
    return "".join(pieces).encode()


_NUMBER_START = frozenset("-0123456789")
_SPACE = " \t\n\r"
_DECODER = json.JSONDecoder()


def _top_level(text: str) -> Iterator[tuple[str, int, int]]:
    """``(key, start, stop)`` of each top-level field of the JSON object ``text``: the
    exact span of its value, so that everything else is kept byte for byte. Raises
    ValueError (or IndexError) when ``text`` is not one."""
    i = _skip(text, 0)
    if text[i] != "{":
        raise ValueError("not an object")
    i = _skip(text, i + 1)
    if text[i] == "}":
        return
    while True:
        if text[i] != '"':
            raise ValueError("expected a key")
        key, i = _DECODER.raw_decode(text, i)
        i = _skip(text, i)
        if text[i] != ":":
            raise ValueError("expected ':'")
        start = _skip(text, i + 1)
        _, stop = _DECODER.raw_decode(text, start)
        yield key, start, stop
        i = _skip(text, stop)
        if text[i] == "}":
            return
        if text[i] != ",":
            raise ValueError("expected ',' or '}'")
        i = _skip(text, i + 1)


def _skip(text: str, i: int) -> int:
    while text[i] in _SPACE:
        i += 1
    return i


#: A table's timestamp columns are looked up again after this long (a column added by
#: ``ALTER TABLE`` while the daemon runs is seen within it).
COLUMNS_TTL = 60.0

#: (looked up at, timestamp columns, those of them of plain DateTime) by table.
_columns: dict[tuple[str, str, str], tuple[float, tuple[str, ...], frozenset[str]]] = {}
_columns_lock = threading.Lock()


def prepare(
    conn: Queries,
    table: str,
    data: bytes | memoryview,
    fmt: str,
    settings: Mapping[str, object],
    checked: TimestampColumns | None = None,
) -> bytes | memoryview:
    """What ``Connection.raw_insert`` sends: JSONEachRow records of an insert whose settings
    say ``date_time_input_format = best_effort`` get :func:`rewrite` for the table's
    timestamp columns (looked up per table and process every :data:`COLUMNS_TTL` s, and
    after a failed insert); anything else goes as it
    is (a server whose own default is best_effort reads the numbers its own way).

    ``checked``: the caller found with :func:`needs_rewrite` that ``data`` needs no
    rewrite for these columns. When they are the ones looked up here, ``data`` goes as
    it is without a second scan; when they are not (the table changed, or the caller's
    lookup is older), it is scanned here as usual."""
    if fmt != "JSONEachRow" or not _best_effort(settings):
        return data
    columns, seconds = _lookup(conn, table)
    if checked is not None and checked == TimestampColumns(columns, seconds):
        return data
    return rewrite(data, columns, seconds) if columns else data


def timestamp_columns(conn: Queries, table: str) -> tuple[str, ...]:
    """The names of ``table``'s DateTime/DateTime64 columns (none when it cannot tell)."""
    return _lookup(conn, table)[0]


def table_timestamps(conn: Queries, table: str) -> TimestampColumns:
    """``table``'s timestamp columns as :func:`prepare` finds them on this connection's
    server (the same per-process lookup: a caller that checks batches ahead with
    :func:`needs_rewrite` asks a worker for it)."""
    return TimestampColumns(*_lookup(conn, table))


def _lookup(conn: Queries, table: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """``table``'s timestamp columns, and those of them of plain ``DateTime``."""
    db, _, name = table.rpartition(".")
    key = (conn.endpoint, db or conn.config.database or "", name)
    with _columns_lock:
        cached = _columns.get(key)
    if cached is not None and time.monotonic() - cached[0] < COLUMNS_TTL:
        return cached[1], cached[2]
    db_expr = "{db:String}" if db else "currentDatabase()"
    try:
        rows = conn.client.query(
            f"SELECT name, type FROM system.columns WHERE database = {db_expr} AND table = {{t:String}}",
            parameters={"db": db, "t": name},
        ).result_rows
    except Exception:  # the insert itself reports what is wrong
        return (), frozenset()
    found = tuple(str(n) for n, t in rows if is_timestamp_type(str(t)))
    seconds = frozenset(str(n) for n, t in rows if _WHOLE_SECONDS.match(str(t)))
    if rows:
        with _columns_lock:
            _columns[key] = (time.monotonic(), found, seconds)
    return found, seconds


def forget(conn: Queries, table: str) -> None:
    """Look ``table``'s columns up again next time (an insert into it failed)."""
    db, _, name = table.rpartition(".")
    with _columns_lock:
        _columns.pop((conn.endpoint, db or conn.config.database or "", name), None)


def rewrites(fmt: str | None, settings: Mapping[str, object] | None) -> bool:
    """Whether :func:`prepare` looks for epoch numbers in an insert of ``fmt`` with these
    settings (JSONEachRow read with ``date_time_input_format = best_effort``)."""
    return fmt == "JSONEachRow" and _best_effort(settings or {})


def _best_effort(settings: Mapping[str, object]) -> bool:
    value = settings.get("date_time_input_format")
    return str(value).strip().lower() == "best_effort"
