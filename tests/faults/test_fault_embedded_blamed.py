"""Regression test: a small insert is not blamed for another insert's error.

After chDB's streaming insert the endpoint read ``system.errors`` to find what chDB
swallows (TOO_MANY_PARTS and the like), and took any such error raised while the insert
ran, in the same second, for the insert's own. So an insert into one table, while
another table refused an insert with "Too many parts", was answered 252 although its
rows had landed: the client retried a batch that was in (dropped only if it carried a
deduplication token) and counted an error that never was. An insert whose data arrives
whole within the first MiB is now one chDB query reading it from a pipe, which raises
its own errors and nobody else's, so there is no check to be misled.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.parse

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_an_insert_running_while_another_table_refuses_one_succeeds(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    ch_client.command(
        "CREATE TABLE full (k UInt32) ENGINE = MergeTree ORDER BY tuple() "
        "SETTINGS parts_to_delay_insert = 2, parts_to_throw_insert = 3"
    )
    ch_client.command("SYSTEM STOP MERGES full")
    for i in range(3):
        ch_client.raw_insert("full", None, b"%d\n" % i, fmt="TSV")
    ch_client.command("CREATE TABLE fine (k UInt32) ENGINE = MergeTree ORDER BY k")

    target = "/?" + urllib.parse.urlencode({"database": database})
    with socket.create_connection((endpoint.host, endpoint.port), timeout=30) as sock:
        # The insert into `fine` starts, its body (chunked) not yet complete ...
        sock.sendall(
            f"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + _chunk(b"INSERT INTO fine FORMAT TSV\n1\n")
        )

        def running() -> bool:
            return bool(
                ch_client.command(
                    "SELECT count() FROM system.processes WHERE query LIKE 'INSERT INTO fine%'"
                )
            )

        # A streaming insert shows there at once; one read whole only once it has all.
        with contextlib.suppress(AssertionError):
            wait_for(running, timeout=2.0)
        # ... while `full` refuses one ...
        with pytest.raises(DatabaseError, match="Too many parts"):
            ch_client.raw_insert("full", None, b"9\n", fmt="TSV")
        # ... and then its body ends: its rows are in, and it says so.
        sock.sendall(_chunk(b"2\n") + b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            got = sock.recv(65536)
            assert got, answer
            answer += got
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert ch_client.command("SELECT count() FROM fine") == 2
    assert ch_client.command("SELECT count() FROM full") == 3
