"""The errors chDB's streaming insert swallows, found afterwards in ``system.errors``."""

from __future__ import annotations

import base64
from typing import Any

from chworkers.embedded.exceptions import from_chdb
from chworkers.embedded.queries import run
from chworkers.errors import ServerError

#: Errors chDB's streaming insert does not raise: the table's sink throws them when the
#: insert commits, ``insert_done`` returns as if it succeeded (sometimes even with the
#: rows counted as written) and nothing is in the table. TOO_MANY_PARTS covers both
#: "Too many parts" (``parts_to_throw_insert``) and "Too many partitions for single
#: INSERT block" (``max_partitions_per_insert_block``); SIZES_OF_ARRAYS_DONT_MATCH (190:
#: the arrays of a ``Nested`` column's rows of different lengths) and VIOLATED_CONSTRAINT
#: (469: a ``CONSTRAINT ... CHECK``) are raised by the same sink, rows counted as written;
#: so is NOT_ENOUGH_SPACE (243: "Cannot reserve 3.97 MiB, not enough space", the data
#: directory's disk full when the part is written), which answered 200 for rows it lost.
SWALLOWED_CODES = (190, 243, 252, 469)

#: What ClickHouse adds to the message of an error a materialized view threw while an
#: insert pushed its block through it (any code: the view's SELECT, its target's sink).
#: chDB's streaming insert swallows those as well.
_VIEW_ERROR = "while pushing to view"


def error_counts(conn: Any) -> dict[int, int]:
    """The server's count of every error code so far (``system.errors``).

    An insert reads them before it starts and compares them after it
    (:func:`swallowed_error`): its own failure always shows as a higher count of its
    code with a ``last_error_time`` no older than its start. Read fresh each time, not
    remembered from the last insert: an insert that raised its error itself (a query,
    :mod:`chworkers.embedded.infile`) moves the counts without looking at them.
    """
    counts: dict[int, int] = {}
    for line in run(conn, "SELECT code, value FROM system.errors").bytes().decode().splitlines():
        code, total = line.split("\t")
        counts[int(code)] = int(total)
    return counts


def swallowed_error(conn: Any, before: dict[int, int], since: int) -> ServerError | None:
    """The error chDB swallowed during an insert that started at ``since`` with the
    counts ``before``, or None.

    Those of :data:`SWALLOWED_CODES`, and of any code whose last error a materialized
    view threw. Errors are server-wide and timed in whole seconds, so another insert's
    failure while this one ran is taken for this one's too; that errs on the safe side
    (the client retries an insert that landed, and its deduplication token drops it),
    while a lost insert answered 200 cannot happen. Counts are compared per code, so an
    insert is answered with the code whose count it raised, not with another code's
    error of the same second.
    """
    # The counts alone first: as cheap as any chDB query (the message and the time cost
    # 5x as much), so an insert that raised nothing pays only this. Of every code: a
    # view's error can have any.
    counts = error_counts(conn)
    rose = [c for c, total in counts.items() if total > before.get(c, 0)]
    if not rose:
        return None
    res = run(
        conn,
        # Numbers and base64 in TabSeparated: the request's own output settings are on
        # this connection, and none of them changes how these are written.
        "SELECT code, base64Encode(name), base64Encode(last_error_message), "
        "toUnixTimestamp(last_error_time) FROM system.errors "
        f"WHERE code IN ({', '.join(map(str, rose))}) "
        "ORDER BY last_error_time DESC, code",
    )
    for line in res.bytes().decode().splitlines():
        fields = line.split("\t")
        if int(fields[3]) < since:
            continue
        name, message = (base64.b64decode(f).decode("utf-8", "replace") for f in fields[1:3])
        if int(fields[0]) not in SWALLOWED_CODES and _VIEW_ERROR not in message:
            continue  # another query's error (a SELECT's, say): not this insert's
        return from_chdb(RuntimeError(f"Code: {fields[0]}. DB::Exception: {message}. ({name})"))
    return None
