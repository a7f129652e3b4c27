"""``Supervisor.insert_raw`` against raw POSTs of the same Native payloads, one request
shape at a time: for each size, ``rows // size`` requests of ``size`` rows."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from chworkers.bench import data
from chworkers.bench.rows import label, supervisor
from chworkers.bench.runner import Case, Group, timed

#: The payload, made by the server itself (exactly the table's types).
PAYLOAD_SQL = (
    "SELECT number + {start} AS id, concat('user-', toString((number + {start}) % 1000)) AS user, "
    "toDateTime('2026-01-01 00:00:00') + ((number + {start}) % 86400) AS ts, "
    "(number + {start}) * 0.25 AS value FROM numbers({size})"
)


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
        count = max(1, env.sizes.rows // size)
        total = count * size

        def before(table: str, size: int = size, count: int = count) -> Callable[[], None]:
            def run() -> None:
                payloads.get(size, count)
                env.table(client, table)

            return run

        def posted(size: int = size, count: int = count, total: int = total) -> int:
            for body in payloads.get(size, count):
                http.post("INSERT INTO raw_post FORMAT Native", body)
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
