"""What holds the embedded endpoint's memory over a long client run.

Runs phases of N requests each against one endpoint, the way a client's test suite
does, and prints the endpoint's RSS after each phase together with what chDB itself
accounts for (``system.metrics``: MemoryTracking and the caches' bytes) and how many databases and tables exist:

- ``select``: ``SELECT 1`` (each request on a chDB connection of its own, reused from
  the endpoint's pool);
- ``churn``: a database and a table created, a row inserted and read, the database
  dropped;
- ``keep``: the same without the drop (databases pile up, as in a test run that never
  cleans up);
- ``sessions``: ``SELECT 1`` in a new HTTP session each time (clickhouse-connect
  clients make a session each unless told not to; each keeps a chDB connection until
  ``session_timeout``, 60 s by default, after its last request);
- ``select-after``: ``SELECT 1`` again, to see whether the memory is given back.

With ``--saturate SECONDS`` it instead keeps the endpoint busy for that long from
``--clients`` threads, each on its own keep-alive connection, taking turns at: one-row
inserts, 20,000-row lz4-compressed Native inserts, streamed and whole SELECTs, and
requests in short-lived sessions (a new one every few requests, ``session_timeout=5``);
each client empties its table every 500 requests, so the data does not grow with time.
It prints the endpoint's RSS and chDB's MemoryTracking every ``--every`` seconds, then
the growth per minute after the first two minutes (a least-squares slope): flat is
what the endpoint should be.

With ``--inserts SECONDS`` it runs a saturated insert loop instead, as ``chworkers run``
drives the endpoint (the soak of ``benchmarks/bench_soak.py`` without the daemon):
``--clients`` threads each send 20,000-row lz4 Native batches, each with its own
deduplication token, into one MergeTree table that grows all along (merges run as they
would). Every ``--every`` seconds it prints the endpoint's RSS and threads, chDB's
MemoryTracking, jemalloc's allocated, resident and retained bytes (``system.jemalloc_stats``),
the caches' bytes, and the table's active parts, rows and primary-index bytes; then each
figure's growth per minute after the first fifth of the run, and the RSS once more after
``SYSTEM JEMALLOC PURGE``. ``--truncate-every N`` empties the table every N inserts, to
tell growth with the data from growth with time.

Run: ``.venv/bin/python benchmarks/bench_embedded_memory.py [--requests N]``
     ``.venv/bin/python benchmarks/bench_embedded_memory.py --saturate 600``
     ``.venv/bin/python benchmarks/bench_embedded_memory.py --inserts 600``
"""

from __future__ import annotations

import argparse
import http.client
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import clickhouse_connect
import lz4.frame
from clickhouse_connect.driver.client import Client

from chworkers.embedded import EmbeddedClickHouse

#: chDB's caches that grow with use (system.metrics; chDB has no asynchronous_metrics).
CACHES = (
    "MarkCacheBytes",
    "UncompressedCacheBytes",
    "QueryCacheBytes",
    "QueryConditionCacheBytes",
    "PrimaryIndexCacheBytes",
    "IndexMarkCacheBytes",
    "CompiledExpressionCacheBytes",
    "SerializationCacheBytesInMemoryAllocated",
    "PageCacheBytes",
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report(name: str, ch: EmbeddedClickHouse, client: Client, seconds: float) -> None:
    assert ch.pid is not None
    tracked = client.command("SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'")
    caches = client.query(
        "SELECT metric, value FROM system.metrics WHERE metric IN {m:Array(String)}",
        parameters={"m": list(CACHES)},
    ).result_rows
    cache_mb = sum(float(v) for _, v in caches) / 1e6
    databases = client.command("SELECT count() FROM system.databases")
    tables = client.command("SELECT count() FROM system.tables")
    print(
        f"{name:<14} RSS {rss_mb(ch.pid):7.1f} MB  chDB tracked {int(tracked) / 1e6:7.1f} MB  "
        f"caches {cache_mb:6.1f} MB  databases {databases:>6}  tables {tables:>6}  "
        f"{seconds:6.1f} s"
    )


def phase(n: int, step: Callable[[int], None]) -> float:
    started = time.perf_counter()
    for i in range(n):
        step(i)
    return time.perf_counter() - started


SATURATE_TABLE = (
    "CREATE TABLE {name} (id UInt64, s String, v Float64) ENGINE = MergeTree ORDER BY id"
)


def _post(conn: http.client.HTTPConnection, target: str, body: bytes, **headers: str) -> bytes:
    conn.request("POST", target, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise SystemExit(f"{target[:80]} failed: {resp.status} {data[:300]!r}")
    return data


def saturate(ch: EmbeddedClickHouse, seconds: float, clients: int, every: float) -> None:
    """Keep the endpoint busy for ``seconds``; print its memory as it goes."""
    assert ch.pid is not None
    admin = clickhouse_connect.get_client(host=ch.host, port=ch.port, autogenerate_session_id=False)
    for i in range(clients):
        admin.command(SATURATE_TABLE.format(name=f"sat{i}"))
    native = admin.raw_query(
        "SELECT number AS id, toString(number) AS s, number / 3 AS v FROM numbers(20000)",
        fmt="Native",
    )
    payload = lz4.frame.compress(native)
    stop = threading.Event()
    counts = [0] * clients
    failures: list[BaseException] = []

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(ch.host, ch.port, timeout=120)
        table = f"sat{i}"
        insert = "/?query=" + quote(f"INSERT INTO {table} FORMAT Native")
        one = "/?query=" + quote(f"INSERT INTO {table} FORMAT TSV")
        session = ""
        try:
            step = 0
            while not stop.is_set():
                kind = step % 5
                if step % 500 == 499:  # the data stays bounded: what grows is not rows
                    _post(conn, "/", f"TRUNCATE TABLE {table}".encode())
                elif kind == 0:
                    _post(conn, one, b"%d\tone\t1.5\n" % step)
                elif kind == 1:
                    _post(conn, insert, payload, **{"Content-Encoding": "lz4"})
                elif kind == 2:
                    sql = (
                        f"SELECT id, s FROM {table} ORDER BY id DESC LIMIT 20000 FORMAT JSONEachRow"
                    )
                    _post(conn, "/", sql.encode())
                elif kind == 3:
                    sql = f"SELECT count(), sum(v), uniq(s) FROM {table} FORMAT JSON"
                    _post(conn, "/", sql.encode())
                else:
                    if step % 50 == 4:
                        session = f"session_id=sat-{i}-{uuid.uuid4()}&session_timeout=5"
                    _post(conn, f"/?{session}", b"SET max_block_size = 5000")
                    _post(conn, f"/?{session}&max_threads=1", b"SELECT count() FROM system.one")
                step += 1
                counts[i] = step
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
            stop.set()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    samples: list[tuple[float, float]] = []
    print(f"{'s':>6} {'RSS MB':>8} {'tracked MB':>11} {'requests':>9}")
    try:
        while not stop.is_set() and time.monotonic() - started < seconds:
            stop.wait(every)
            at = time.monotonic() - started
            rss = rss_mb(ch.pid)
            tracked = admin.command(
                "SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'"
            )
            samples.append((at, rss))
            print(f"{at:6.0f} {rss:8.1f} {int(tracked) / 1e6:11.1f} {sum(counts):9d}", flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join()
    if failures:
        raise SystemExit(f"a client failed: {failures[0]!r}")
    steady = [(t, r) for t, r in samples if t >= 120] or samples
    n = len(steady)
    mean_t = sum(t for t, _ in steady) / n
    mean_r = sum(r for _, r in steady) / n
    var = sum((t - mean_t) ** 2 for t, _ in steady)
    slope = sum((t - mean_t) * (r - mean_r) for t, r in steady) / var * 60 if var else 0.0
    rss = [r for _, r in samples]
    print(
        f"{sum(counts)} requests in {seconds:.0f} s from {clients} clients; RSS {rss[0]:.0f} MB "
        f"at first, {min(rss):.0f}-{max(rss):.0f} MB, {rss[-1]:.0f} MB at the end; "
        f"after 2 minutes {slope:+.2f} MB/min"
    )
    admin.close()


INSERT_TABLE = (
    "CREATE TABLE soak (ts DateTime, user_id UInt64, event LowCardinality(String), "
    "value Float64, url String) ENGINE = MergeTree ORDER BY (event, ts) "
    "SETTINGS non_replicated_deduplication_window = 1000"
)
INSERT_ROWS = (
    "SELECT toDateTime(1700000000 + number) AS ts, number % 100000 AS user_id, "
    "['view', 'click', 'buy'][number % 3 + 1] AS event, number / 7 AS value, "
    "concat('https://example.com/', toString(number % 10000)) AS url FROM numbers(20000)"
)
_JEMALLOC = re.compile(
    r"Allocated: (\d+), active: (\d+), metadata: (\d+).*?resident: (\d+), "
    r"mapped: (\d+), retained: (\d+)",
    re.S,
)


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def memory_sample(pid: int, admin: Client) -> dict[str, float]:
    """What holds the endpoint's memory now, in MB (threads, parts and rows as counts)."""
    metrics = dict(
        admin.query(
            "SELECT metric, value FROM system.metrics WHERE metric IN {m:Array(String)}",
            parameters={"m": ["MemoryTracking", "MMappedFileBytes", *CACHES]},
        ).result_rows
    )
    stats = admin.raw_query("SELECT stats FROM system.jemalloc_stats", fmt="RawBLOB").decode()
    found = _JEMALLOC.search(stats)
    allocated, _active, _meta, resident, _mapped, retained = (
        (int(v) for v in found.groups()) if found else (0,) * 6
    )
    parts, rows, index = admin.query(
        "SELECT count(), sum(rows), sum(primary_key_bytes_in_memory_allocated) "
        "FROM system.parts WHERE active AND table = 'soak'"
    ).result_rows[0]
    return {
        "rss": rss_mb(pid),
        "threads": threads(pid),
        "tracked": float(metrics.get("MemoryTracking", 0)) / 1e6,
        "je_alloc": allocated / 1e6,
        "je_resident": resident / 1e6,
        "je_retained": retained / 1e6,
        "mmapped": float(metrics.get("MMappedFileBytes", 0)) / 1e6,
        "caches": sum(float(metrics.get(c, 0)) for c in CACHES) / 1e6,
        "parts": float(parts),
        "rows": float(rows or 0),
        "index": float(index or 0) / 1e6,
    }


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares growth per minute of ``(seconds, value)`` points."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 60 if var else 0.0


def inserts(
    ch: EmbeddedClickHouse, seconds: float, clients: int, every: float, truncate_every: int
) -> None:
    """A saturated insert loop for ``seconds``; print what holds the memory as it goes."""
    assert ch.pid is not None
    pid = ch.pid
    admin = clickhouse_connect.get_client(host=ch.host, port=ch.port, autogenerate_session_id=False)
    admin.command(INSERT_TABLE)
    payload = lz4.frame.compress(admin.raw_query(INSERT_ROWS, fmt="Native"))
    stop = threading.Event()
    counts = [0] * clients
    failures: list[BaseException] = []

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(ch.host, ch.port, timeout=120)
        try:
            while not stop.is_set():
                n = counts[i]
                if truncate_every and i == 0 and n % truncate_every == truncate_every - 1:
                    _post(conn, "/", b"TRUNCATE TABLE soak")
                token = f"soak-{i}-{n}"
                target = "/?" + "&".join(
                    [
                        "query=" + quote("INSERT INTO soak FORMAT Native"),
                        "insert_deduplication_token=" + token,
                    ]
                )
                _post(conn, target, payload, **{"Content-Encoding": "lz4"})
                counts[i] = n + 1
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
            stop.set()
        finally:
            conn.close()

    pool = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.monotonic()
    for t in pool:
        t.start()
    samples: list[tuple[float, dict[str, float]]] = []
    names = ["rss", "threads", "tracked", "je_alloc", "je_resident", "je_retained", "mmapped"]
    names += ["caches", "parts", "rows", "index"]
    print(f"{'s':>5} {'inserts':>8} " + " ".join(f"{n:>11}" for n in names))
    try:
        while not stop.is_set() and time.monotonic() - started < seconds:
            stop.wait(every)
            at = time.monotonic() - started
            sample = memory_sample(pid, admin)
            samples.append((at, sample))
            print(
                f"{at:5.0f} {sum(counts):8d} " + " ".join(f"{sample[n]:11.1f}" for n in names),
                flush=True,
            )
    finally:
        stop.set()
        for t in pool:
            t.join()
    if failures:
        raise SystemExit(f"a client failed: {failures[0]!r}")
    total = sum(counts)
    print(f"{total} inserts ({total * 20_000:,} rows) in {seconds:.0f} s from {clients} clients")
    steady = [(t, s) for t, s in samples if t >= seconds / 5] or samples
    for n in names:
        first, last = steady[0][1][n], steady[-1][1][n]
        growth = slope([(t, s[n]) for t, s in steady])
        print(f"  {n:<12} {first:10.1f} -> {last:10.1f}  {growth:+8.2f} per minute after warm-up")
    time.sleep(2.0)
    before = rss_mb(pid)
    admin.command("SYSTEM JEMALLOC PURGE")
    time.sleep(1.0)
    print(f"idle RSS {before:.1f} MB; after SYSTEM JEMALLOC PURGE {rss_mb(pid):.1f} MB")
    admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="steps per phase")
    parser.add_argument("--saturate", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--clients", type=int, default=4, help="with --saturate")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--inserts", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--truncate-every", type=int, default=0, help="with --inserts")
    args = parser.parse_args()
    if args.inserts:
        with tempfile.TemporaryDirectory() as tmp, EmbeddedClickHouse(Path(tmp) / "data") as ch:
            inserts(ch, args.inserts, args.clients, args.every, args.truncate_every)
        return
    if args.saturate:
        with tempfile.TemporaryDirectory() as tmp, EmbeddedClickHouse(Path(tmp) / "data") as ch:
            saturate(ch, args.saturate, args.clients, args.every)
        return
    n = args.requests
    with tempfile.TemporaryDirectory() as tmp, EmbeddedClickHouse(Path(tmp) / "data") as ch:
        client = clickhouse_connect.get_client(
            host=ch.host, port=ch.port, autogenerate_session_id=False
        )
        report("start", ch, client, 0.0)

        def select(_: int) -> None:
            client.command("SELECT 1")

        def database_step(drop: bool) -> Callable[[int], None]:
            def step(_: int) -> None:
                name = f"db_{uuid.uuid4().hex[:12]}"
                client.command(f"CREATE DATABASE {name}")
                client.command(
                    f"CREATE TABLE {name}.t (a UInt64, s String) ENGINE = MergeTree ORDER BY a"
                )
                client.command(f"INSERT INTO {name}.t VALUES (1, 'x')")
                client.query(f"SELECT * FROM {name}.t")
                if drop:
                    client.command(f"DROP DATABASE {name} SYNC")

            return step

        report("select", ch, client, phase(n, select))
        report("churn", ch, client, phase(n, database_step(True)))
        report("keep", ch, client, phase(n, database_step(False)))

        def new_session(i: int) -> None:
            client.command("SELECT 1", settings={"session_id": f"bench-{i}-{uuid.uuid4()}"})

        report("sessions", ch, client, phase(n, new_session))
        report("select-after", ch, client, phase(n, select))
        client.close()


if __name__ == "__main__":
    main()
