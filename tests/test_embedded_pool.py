"""Requests without a session share chDB connections, and nothing of one reaches the next.

The endpoint keeps a connection for the next request when its request cannot have
changed it; these tests send, one after another (so the next request gets the same
connection back), every kind of request that changes a connection, and check that the
request after it sees a connection as new.
"""

from __future__ import annotations

import threading
import urllib.parse
import uuid

import pytest
from httpcall import call

from chworkers.embedded import EmbeddedClickHouse

STATE = (
    b"SELECT currentDatabase(), getSetting('max_threads'), getSetting('readonly'), "
    b"getSetting('insert_deduplicate') FORMAT TSV"
)


def _state(endpoint: EmbeddedClickHouse) -> bytes:
    status, _, body = call(endpoint, "/", STATE)
    assert status == 200, body
    return body


@pytest.mark.parametrize(
    ("target", "body", "method"),
    [
        ("/?max_threads=3&insert_deduplicate=0", STATE, "POST"),
        ("/?database={db}", STATE, "POST"),
        ("/?database={db}&max_threads=1", b"CREATE TABLE t (a UInt8) ENGINE = Memory", "POST"),
        ("/?database={db}", b"INSERT INTO t FORMAT TSV\n1\n", "POST"),
        ("/?max_threads=3", b"SET insert_deduplicate = 0", "POST"),
        ("/?database={db}", b"USE system", "POST"),
        ("/", b"USE system", "POST"),
        ("/?query=" + urllib.parse.quote(STATE.decode()), None, "GET"),
        ("/?max_threads=3", b"SELECT * FROM no_such_table", "POST"),
        ("/?no_such_setting_xyz=1&max_threads=3", STATE, "POST"),
        ("/?database=no_such_database_xyz", STATE, "POST"),
    ],
)
def test_nothing_of_a_request_reaches_the_next(
    endpoint: EmbeddedClickHouse, database: str, target: str, body: bytes | None, method: str
) -> None:
    fresh = _state(endpoint)
    assert fresh.startswith(b"default\t")
    for _ in range(3):
        call(endpoint, target.format(db=database), body, method=method)
        assert _state(endpoint) == fresh


def test_temporary_tables_stay_with_their_request(endpoint: EmbeddedClickHouse) -> None:
    status, _, body = call(endpoint, "/", b"CREATE TEMPORARY TABLE tmp_x (a UInt8)")
    assert status == 200, body
    assert call(endpoint, "/", b"EXISTS TEMPORARY TABLE tmp_x")[2] == b"0\n"
    boundary = "b0undary"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="query"\r\n\r\n'
        "SELECT count() FROM ext\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="ext_structure"\r\n\r\n'
        "a UInt8\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="ext"; filename="e"\r\n\r\n'
        f"1\n2\n\r\n--{boundary}--\r\n"
    ).encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert call(endpoint, "/", form, headers)[2] == b"2\n"
    assert call(endpoint, "/", b"EXISTS TEMPORARY TABLE ext")[2] == b"0\n"


def test_concurrent_requests_each_get_their_own_connection(
    endpoint: EmbeddedClickHouse, database: str
) -> None:
    errors: list[str] = []

    def client(i: int) -> None:
        for j in range(30):
            threads = 1 + (i + j) % 4
            target = f"/?max_threads={threads}" + (f"&database={database}" if j % 2 else "")
            status, _, body = call(endpoint, target, STATE)
            want_db = database if j % 2 else "default"
            if status != 200 or body.split(b"\t")[:2] != [want_db.encode(), b"%d" % threads]:
                errors.append(f"{target}: {status} {body!r}")

    workers = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []


def test_connections_are_reused_only_when_nothing_was_left(endpoint: EmbeddedClickHouse) -> None:
    def opened() -> int:
        return int(endpoint.stats()["chdb_connections_opened_total"])

    call(endpoint, "/?max_threads=2", b"SELECT 1")  # one idle connection at least
    before = opened()
    for i in range(20):
        settings = f"/?max_threads={1 + i % 3}&insert_deduplicate={i % 2}"
        assert call(endpoint, settings, b"SELECT %d" % i)[2] == b"%d\n" % i
    assert opened() == before  # served by idle connections
    assert call(endpoint, "/", b"SET max_threads = 1")[0] == 200  # that one is closed
    assert call(endpoint, f"/?session_id={uuid.uuid4()}", b"SELECT 1")[0] == 200
    assert opened() == before + 1  # the session's own
