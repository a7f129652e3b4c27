"""The embedded endpoint killed in the middle of a flush into several partitions.

chDB writes an insert into several partitions as a part per partition, each committed
(renamed into place, its block id logged) on its own, one after the other. A flush of
the asynchronous insert queue killed after some of its parts left them, and chDB's log
held the flush's token (in those partitions' block ids): at the next start the flush
counted as written, its clients' retries were dropped, and the rows of the partitions
not written were lost. Now a flush into several partitions keeps its rows in a file
beside its pending ids until its last part; a start completes it from there, with the
same token, so chDB writes only the partitions its log does not have.

The kill is real (SIGKILL of the endpoint process), at a point named by the test hook
``CHWORKERS_EMBEDDED_TEST_KILL_FLUSH``: ``between-parts`` kills as soon as the first of
the flush's parts is committed (a thread of the endpoint watching the table's
directory), ``before-insert`` once the flush's ids and rows are on disk.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from chclients import make_client
from clickhouse_connect.driver.exceptions import ClickHouseError

from chworkers import EmbeddedClickHouse
from chworkers.embedded.asynccomplete import KILL_FLUSH_ENV

pytestmark = pytest.mark.timeout(180)

PARTITIONS = 40
CLIENTS = 4
ROWS = 4000  # per client, spread over every partition
SETTINGS = {
    "async_insert": 1,
    "async_insert_use_adaptive_busy_timeout": 0,
    "async_insert_busy_timeout_max_ms": 1000,
    "wait_for_async_insert": 1,
    "max_partitions_per_insert_block": 0,
}


def body(client: int) -> bytes:
    rows = (json.dumps({"k": client * ROWS + i, "s": "x" * 200}) for i in range(ROWS))
    return ("\n".join(rows) + "\n").encode()


def send_all(ch: EmbeddedClickHouse, clause: bool = False) -> list[BaseException | int]:
    """Each client's insert, with its token (in the URL, or the statement's SETTINGS
    clause), in one flush; what each got."""
    results: list[BaseException | int] = [0] * CLIENTS

    def send(n: int) -> None:
        client = make_client(ch)
        token = f"client-{n}"
        try:
            if clause:
                statement = (
                    f"INSERT INTO t SETTINGS insert_deduplication_token = '{token}' "
                    "FORMAT JSONEachRow"
                )
                client.command(statement, data=body(n), settings=SETTINGS)
                results[n] = -1  # answered (its written rows are not in a command's)
                return
            settings = {**SETTINGS, "insert_deduplication_token": token}
            summary = client.raw_insert("t", None, body(n), settings=settings, fmt="JSONEachRow")
            results[n] = int(summary.written_rows)
        except BaseException as exc:
            results[n] = exc

    threads = [threading.Thread(target=send, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def parts_on_disk(data: Path) -> int:
    """The table's committed parts, as the killed endpoint left them."""
    (table_dir,) = [p for p in (data / "store").glob("*/*") if (p / "format_version.txt").exists()]
    return sum(
        1
        for p in table_dir.iterdir()
        if p.is_dir() and p.name[0].isdigit() and not p.name.startswith("tmp")
    )


@pytest.mark.parametrize(
    ("point", "clause"),
    [("between-parts", False), ("before-insert", False), ("between-parts", True)],
)
def test_a_flush_killed_between_its_parts_is_completed_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str, clause: bool
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv(KILL_FLUSH_ENV, point)
    with EmbeddedClickHouse(data) as ch:
        monkeypatch.delenv(KILL_FLUSH_ENV)  # only the first endpoint is killed
        client = make_client(ch)
        client.command(
            f"CREATE TABLE t (k UInt64, s String) ENGINE = MergeTree "
            f"PARTITION BY k % {PARTITIONS} ORDER BY k "
            "SETTINGS non_replicated_deduplication_window = 100"
        )
        results = send_all(ch, clause)
        # No client got an answer: the endpoint is gone.
        assert all(isinstance(r, ClickHouseError) for r in results), results
        written = parts_on_disk(data)
        if point == "between-parts":
            assert 0 < written < PARTITIONS  # killed between the flush's parts
        else:
            assert written == 0
        ch.restart()
        client = make_client(ch)
        total = CLIENTS * ROWS
        # The flush, whole (with the tokens in their statements the clients' inserts
        # are keyed apart: one of them was being flushed, the others were lost).
        flushed = ROWS if clause else total
        assert client.command("SELECT count() FROM t") == flushed
        assert client.command("SELECT uniqExact(k) FROM t") == flushed
        assert client.command("SELECT uniqExact(_partition_id) FROM t") == PARTITIONS
        # The clients' retries, same tokens: the flushed ones dropped, the rest land.
        assert send_all(ch, clause) == [-1 if clause else 0] * CLIENTS
        assert client.command("SELECT count() FROM t") == total
        assert client.command("SELECT uniqExact(k) FROM t") == total
        assert not list((data / "store").glob("*/*/chworkers_async_flush_*"))
