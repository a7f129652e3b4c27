"""``Supervisor.insert_raw`` against raw POSTs of the same Native payloads, one request
shape at a time: for each size, ``rows // size`` requests of ``size`` rows (at least
:data:`MIN_REQUESTS`, so that a large size is not judged by one request a round).

The POSTs are the same requests ``insert_raw`` makes: the same body (not compressed:
``insert_raw`` sends bytes as given), the settings every chworkers insert carries
(:func:`~chworkers.clickhouse.insertmode.insert_settings`: synchronous, deduplicated) and
a deduplication token, over one kept-alive connection. Their tokens are the ones
``insert_raw`` derives, computed before the timing; ``insert_raw`` derives its own while
timed (a caller may give one instead).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from chworkers.bench import data
from chworkers.bench.rows import label, supervisor
from chworkers.bench.runner import Case, Group, timed
from chworkers.clickhouse.insertmode import insert_settings
from chworkers.workers import tasks

#: The payload, made by the server itself (exactly the table's types).
PAYLOAD_SQL = (
    "SELECT number + {start} AS id, concat('user-', toString((number + {start}) % 1000)) AS user, "
    "toDateTime('2026-01-01 00:00:00') + ((number + {start}) % 86400) AS ts, "
    "(number + {start}) * 0.25 AS value FROM numbers({size})"
)

#: Requests of each size a round makes at least (``--rows`` divided by a large size would
#: be one request, a handful of samples per run).
MIN_REQUESTS = 3


class Payloads:
    """The Native payloads of one request size (distinct ids each, so that no request
    is deduplicated as a repeat of another), made when first asked for; only one size's
    are kept at a time."""

    def __init__(self, client: object) -> None:
        self.client = client
        self.size = 0
        self.bodies: list[bytes] = []

    def get(self, size: int, count: int) -> list[bytes]:
        if size != self.size:
            self.bodies = []
            for n in range(count):
                sql = PAYLOAD_SQL.format(start=n * size, size=size)
                self.bodies.append(self.client.raw_query(sql, fmt="Native"))  # type: ignore[attr-defined]
            self.size = size
        return self.bodies


def post_settings(table: str, body: bytes) -> dict[str, object]:
    """What ``insert_raw(table, body, "Native")`` sends with its body: the settings of a
    synchronous chworkers insert and the token it derives from the body."""
    return insert_settings(None, token=tasks.raw_token(table, body, "Native"))


def groups(env: data.Env, stack: contextlib.ExitStack) -> list[Group]:
    client = env.target.client()
    stack.callback(client.close)
    http = env.target.http()
    stack.callback(http.close)
    sup = supervisor(env, stack, 1)
    payloads = Payloads(client)

    def check(table: str, total: int, path: str) -> Callable[[], None]:
        return lambda: data.expect(client, table, total, path)

    out = []
    for size in env.sizes.raw_sizes:
        count = max(MIN_REQUESTS, env.sizes.rows // size)
        total = count * size

        settings: list[dict[str, object]] = []

        def before(
            table: str,
            size: int = size,
            count: int = count,
            settings: list[dict[str, object]] = settings,
        ) -> Callable[[], None]:
            def run() -> None:
                bodies = payloads.get(size, count)
                if table == "raw_post" and not settings:
                    settings.extend(post_settings("raw_sup", body) for body in bodies)
                env.table(client, table)

            return run

        def posted(
            size: int = size,
            count: int = count,
            total: int = total,
            settings: list[dict[str, object]] = settings,
        ) -> int:
            for body, params in zip(payloads.get(size, count), settings, strict=True):
                http.post("INSERT INTO raw_post FORMAT Native", body, params)
            return total

        def inserted(size: int = size, count: int = count, total: int = total) -> int:
            futures = [
                sup.insert_raw("raw_sup", body, "Native", rows=size)
                for body in payloads.get(size, count)
            ]
            return sum(int(f.result()) for f in futures)

        out.append(
            Group(
                f"raw: {count:,} Native request(s) of {size:,} rows",
                [
                    Case(
                        "raw POST (http.client)",
                        timed(posted),
                        before("raw_post"),
                        check("raw_post", total, "raw POST"),
                    ),
                    Case(
                        f"{label(env, 1)}.insert_raw",
                        timed(inserted),
                        before("raw_sup"),
                        check("raw_sup", total, "insert_raw"),
                        target=0.8,
                    ),
                ],
            )
        )
    return out
