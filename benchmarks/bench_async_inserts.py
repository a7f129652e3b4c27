"""Asynchronous inserts against client batching, on the same data (issue 15 item 2).

``--producers`` threads each send ``--inserts`` small batches of ``--rows`` JSONEachRow
rows to one table, every batch with its own deduplication token, in one of two ways:

* ``async``: each small batch is its own insert with ``async_insert = 1`` (and what
  chworkers adds: ``wait_for_async_insert = 1``, ``async_insert_deduplicate = 1``), so the
  server is left to batch them; every producer waits for its insert to be written.
* ``client``: the producers hand their batches to one client-side batcher (what
  ``chworkers run`` does), which sends synchronous inserts of ``--batch`` rows.

Reported per mode (medians of interleaved ``--rounds``): rows/s from the first batch
sent to the last one confirmed, the parts the inserts made (merges stopped, so each
insert that wrote a part shows), and the producers' wait per batch (p50/p99: for
``client``, from handing a batch over to its rows being confirmed).

By default this runs on a fresh embedded ClickHouse, whose asynchronous insert queue
(``chworkers/embedded/asyncqueue.py``, as the server's) batches the ``async`` inserts
with ClickHouse's default flush settings (adaptive busy timeout 50-200 ms).
``--url http://host:8123/db`` measures a ClickHouse server.

Run: ``flock /work/coord/bench.lock .venv/bin/python benchmarks/bench_async_inserts.py``
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from chworkers.clickhouse.connection import Connection
from chworkers.embedded import EmbeddedClickHouse

TABLE = "bench_async"


def batch(producer: int, n: int, rows: int) -> bytes:
    base = (producer * 1_000_000 + n) * rows
    return b"".join(b'{"id":%d,"s":"row %d"}\n' % (i, i) for i in range(base, base + rows))


def run_async(url: str, args: argparse.Namespace) -> list[float]:
    waits: list[float] = []
    lock = threading.Lock()

    def producer(p: int) -> None:
        with Connection(url) as conn:
            for n in range(args.inserts):
                started = time.perf_counter()
                conn.raw_insert(
                    TABLE,
                    batch(p, n, args.rows),
                    fmt="JSONEachRow",
                    settings={"async_insert": 1},
                    deduplication_token=f"a-{p}-{n}-{uuid.uuid4().hex}",
                )
                with lock:
                    waits.append(time.perf_counter() - started)

    threads = [threading.Thread(target=producer, args=(p,)) for p in range(args.producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return waits


def run_client(url: str, args: argparse.Namespace) -> list[float]:
    """One batcher thread: cuts ``--batch`` rows (or what has come within 200 ms)."""
    handed: queue.SimpleQueue[tuple[bytes, float, threading.Event] | None] = queue.SimpleQueue()
    waits: list[float] = []
    lock = threading.Lock()

    def batcher() -> None:
        with Connection(url) as conn:
            pending: list[tuple[bytes, float, threading.Event]] = []
            rows = 0
            deadline = None
            done = False
            while not done:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    item = handed.get(timeout=timeout)
                except queue.Empty:
                    item = ()  # type: ignore[assignment]
                if item is None:
                    done = True
                elif item:
                    pending.append(item)
                    rows += args.rows
                    deadline = deadline or time.monotonic() + 0.2
                if pending and (done or rows >= args.batch or time.monotonic() >= (deadline or 0)):
                    conn.raw_insert(
                        TABLE,
                        b"".join(p[0] for p in pending),
                        fmt="JSONEachRow",
                        deduplication_token=f"c-{uuid.uuid4().hex}",
                    )
                    now = time.perf_counter()
                    with lock:
                        waits.extend(now - p[1] for p in pending)
                    for p in pending:
                        p[2].set()
                    pending, rows, deadline = [], 0, None

    def producer(p: int) -> None:
        for n in range(args.inserts):
            confirmed = threading.Event()
            handed.put((batch(p, n, args.rows), time.perf_counter(), confirmed))
            confirmed.wait()  # as a producer waiting for its 202 would

    b = threading.Thread(target=batcher)
    b.start()
    threads = [threading.Thread(target=producer, args=(p,)) for p in range(args.producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handed.put(None)
    b.join()
    return waits


def one_round(url: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    with Connection(url) as conn:
        conn.command(f"DROP TABLE IF EXISTS {TABLE} SYNC")
        conn.command(
            f"CREATE TABLE {TABLE} (id UInt64, s String) ENGINE = MergeTree ORDER BY id "
            "SETTINGS non_replicated_deduplication_window = 1000000"
        )
        conn.command(f"SYSTEM STOP MERGES {TABLE}")
        started = time.perf_counter()
        waits = (run_async if mode == "async" else run_client)(url, args)
        elapsed = time.perf_counter() - started
        rows = int(str(conn.command(f"SELECT count() FROM {TABLE}")))
        parts = int(
            str(
                conn.command(
                    f"SELECT count() FROM system.parts WHERE table = '{TABLE}' "
                    "AND database = currentDatabase() AND active"
                )
            )
        )
    expected = args.producers * args.inserts * args.rows
    assert rows == expected, f"{mode}: {rows} rows in ClickHouse, {expected} sent"
    waits.sort()
    return {
        "rows_per_s": rows / elapsed,
        "parts": parts,
        "wait_p50_ms": 1000 * waits[len(waits) // 2],
        "wait_p99_ms": 1000 * waits[min(len(waits) - 1, int(len(waits) * 0.99))],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a ClickHouse server (default: a fresh embedded one)")
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--inserts", type=int, default=25, help="small batches per producer")
    parser.add_argument("--rows", type=int, default=20, help="rows per small batch")
    parser.add_argument("--batch", type=int, default=2000, help="client batcher's rows")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        embedded = None
        url = args.url
        if url is None:
            embedded = EmbeddedClickHouse(Path(tmp) / "data")
            embedded.start()
            url = embedded.url
        try:
            results: dict[str, list[dict[str, Any]]] = {"async": [], "client": []}
            for _ in range(args.rounds):
                for mode in results:  # interleaved
                    results[mode].append(one_round(url, mode, args))
        finally:
            if embedded is not None:
                embedded.close()
    total = args.producers * args.inserts * args.rows
    print(
        f"{args.producers} producers x {args.inserts} inserts x {args.rows} rows = {total} rows"
        f" ({'embedded endpoint' if args.url is None else args.url}),"
        f" medians of {args.rounds} rounds"
    )
    print(f"{'mode':8} {'rows/s':>10} {'parts':>6} {'wait p50 ms':>12} {'wait p99 ms':>12}")
    for mode, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(
            f"{mode:8} {med['rows_per_s']:>10.0f} {med['parts']:>6.0f} "
            f"{med['wait_p50_ms']:>12.1f} {med['wait_p99_ms']:>12.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
