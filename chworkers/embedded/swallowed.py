"""The errors chDB's streaming insert swallows, found afterwards in ``system.errors``.

chDB's streaming insert (``send_insert``/``insert_append``/``insert_done``) raises what
the data's parsing throws, and swallows whatever the table's sink chain throws after it:
``insert_done`` returns as if the insert succeeded (often with the rows counted as
written) and nothing is in the table. That is a ``DEFAULT`` computed for a column the
insert leaves out, a ``MATERIALIZED`` or ``EPHEMERAL`` expression (any code: ``throwIf``'s
395, a conversion's 6), a ``CONSTRAINT`` (469), a ``Nested`` column's arrays of
different lengths (190), a MergeTree's "Too many parts" and "Too many partitions for
single INSERT block" (252, twice per insert), its disk full as the part is written (243),
a MergeTree key's expression, and any error of a materialized view the insert pushes
its block through. chDB's insert writes nothing of a block stream that failed: the
rows before the failing one are not in the table either (300,000 and 3,000,000 rows,
the last one throwing, Memory and MergeTree alike).

Every such error still counts in ``system.errors`` with the query id of the query that
threw it, and chDB's connection keeps the insert's query id for the queries it runs
next (:func:`learn_insert_ids` checks that this chDB does), so the check after an insert
(:func:`swallowed_error`) knows its own error exactly. An error of another query in the
meantime is not taken for it, unless that code was raised more than once meanwhile and
the last was another query's: the insert's own may be hidden behind it, and the insert
is answered that error (the safe side: a client's retry with its deduplication token is
dropped if the insert had landed).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable
from typing import Any

from chworkers.embedded.exceptions import from_chdb
from chworkers.embedded.queries import OWN_QUERY_SETTINGS, run
from chworkers.errors import ServerError

log = logging.getLogger(__name__)

#: Codes only raised before a statement runs (its text, names, rights, settings): never
#: by an insert's sink chain, so never an insert's swallowed error, however many.
_BEFORE_RUNNING = frozenset(
    [
        16,  # NO_SUCH_COLUMN_IN_TABLE
        46,  # UNKNOWN_FUNCTION
        47,  # UNKNOWN_IDENTIFIER
        57,  # TABLE_ALREADY_EXISTS
        60,  # UNKNOWN_TABLE
        62,  # SYNTAX_ERROR
        81,  # UNKNOWN_DATABASE
        82,  # DATABASE_ALREADY_EXISTS
        115,  # UNKNOWN_SETTING
        164,  # READONLY
        497,  # ACCESS_DENIED
        516,  # AUTHENTICATION_FAILED
    ]
)

#: Whether a query run on a connection right after its streaming insert has the
#: insert's query id (:func:`learn_insert_ids`); None: not asked yet.
_insert_ids: bool | None = None
#: Asks :func:`learn_insert_ids` on the engine's connections (:func:`probe_with`).
_prober: Callable[[], bool] | None = None
_lock = threading.Lock()

#: The text the probe insert carries, to find it in ``system.processes``.
_PROBE = "/* chworkers: insert id probe */"


def probe_with(prober: Callable[[], bool]) -> None:
    """The engine's way of calling :func:`learn_insert_ids` (an engine just opened: what
    was learnt of another is forgotten). It is called at the first check that needs it."""
    global _insert_ids, _prober
    with _lock:
        _insert_ids, _prober = None, prober


def insert_ids_known() -> bool:
    """Whether :func:`swallowed_error` can tell its insert's errors by query id (asked
    once, on first use; False without an engine's prober)."""
    global _insert_ids
    with _lock:  # once per process: the callers of the same moment wait for the answer
        if _insert_ids is None:
            _insert_ids = _prober() if _prober is not None else False
        return _insert_ids


def learn_insert_ids(other: Any, conn: Any) -> bool:
    """Find out whether chDB's connection ``conn`` keeps its streaming
    insert's query id for the next queries (``queryID()`` then names the insert), as
    chDB 26.x does; :func:`swallowed_error` relies on it to tell its insert's errors
    from other queries'. ``other`` is another connection of the same engine, which
    reads the insert's id in ``system.processes`` while it runs. Writes nothing."""
    try:
        handle = conn.send_insert(f"INSERT INTO FUNCTION null('x UInt8') {_PROBE}".encode(), "TSV")
        try:
            running = other.query(
                b"SELECT query_id FROM system.processes WHERE query_id != queryID() "
                b"AND position(query, '" + _PROBE.encode() + b"') > 0",
                "TabSeparated",
            )
            conn.insert_append(handle, b"1\n")
        finally:
            conn.insert_done(handle)
        conn.query(b"SELECT 1", "TabSeparated")  # as the check's counts query runs first
        after = conn.query(b"SELECT queryID()", "TabSeparated")
    except RuntimeError:
        log.warning("could not tell whether chDB keeps an insert's query id", exc_info=True)
        return False
    ids = running.bytes().decode().split()
    kept = len(ids) == 1 and after.bytes().decode().strip() == ids[0]
    if not kept:
        log.warning(
            "chDB does not keep a streaming insert's query id: an insert is answered with "
            "any error raised while it ran (another query's too)"
        )
    return kept


def error_counts(conn: Any) -> dict[int, int]:
    """The server's count of every error code so far (``system.errors``).

    An insert reads them before it starts and compares them after it
    (:func:`swallowed_error`). Read fresh each time, not remembered from the last
    insert: an insert that raised its error itself (a query,
    :mod:`chworkers.embedded.infile`) moves the counts without looking at them.
    """
    counts: dict[int, int] = {}
    res = run(conn, "SELECT code, value FROM system.errors" + OWN_QUERY_SETTINGS)
    for line in res.bytes().decode().splitlines():
        code, total = line.split("\t")
        counts[int(code)] = int(total)
    return counts


def swallowed_error(conn: Any, before: dict[int, int], since: int) -> ServerError | None:
    """The error chDB swallowed during the streaming insert that just finished on
    ``conn``, which started at ``since`` with the counts ``before``; or None.

    Run on the insert's connection before any other query: ``queryID()`` is then the
    insert's. An error is the insert's when the last one of its code names the insert's
    query id (any code). The last of a code raised more than once while the insert ran
    that names another query may hide the insert's own: that is answered too (see the
    module's doc). Without the query ids (:func:`learn_insert_ids` found this chDB
    does not keep them), every error raised while the insert ran is taken for its own.
    """
    # The counts alone first: as cheap as any chDB query (the message and the time cost
    # 5x as much), so an insert that raised nothing pays only this.
    counts = error_counts(conn)
    rose = {c: total - before.get(c, 0) for c, total in counts.items() if total > before.get(c, 0)}
    if not rose:
        return None
    res = run(
        conn,
        # Numbers and base64 in TabSeparated: the request's own output settings are on
        # this connection, and none of them changes how these are written.
        "SELECT code, base64Encode(name), base64Encode(last_error_message), "
        "toUnixTimestamp(last_error_time), query_id = queryID() FROM system.errors "
        f"WHERE code IN ({', '.join(map(str, rose))}) "
        "ORDER BY query_id = queryID() DESC, last_error_time DESC, code" + OWN_QUERY_SETTINGS,
    )
    ids = insert_ids_known()
    for line in res.bytes().decode().splitlines():
        fields = line.split("\t")
        code, at, ours = int(fields[0]), int(fields[3]), fields[4] == "1"
        # Not known to be the insert's: another query's, unless it may hide the insert's.
        foreign = at < since or code in _BEFORE_RUNNING or (ids and rose[code] < 2)
        if not (ours and ids) and foreign:
            continue
        name, message = (base64.b64decode(f).decode("utf-8", "replace") for f in fields[1:3])
        if not (ours and ids):  # say so: the message may be another query's
            message += f" ({_unsure(rose[code], ids)}, so it is not answered as written)"
        return from_chdb(RuntimeError(f"Code: {code}. DB::Exception: {message}. ({name})"))
    return None


def _unsure(times: int, ids: bool) -> str:
    if not ids:
        return "raised while this INSERT ran; chDB does not tell which query raised it"
    return (
        f"raised {times} times while this INSERT ran, the last by another query; this "
        "INSERT's own failure may be among them"
    )
