"""Benchmark the embedded ClickHouse endpoint against chDB used directly.

(a) POST a pre-built 1M-row Native payload to the endpoint (``INSERT ... FORMAT
    Native``), as-is and lz4-compressed the way clickhouse-connect sends it;
(b) ``INSERT ... FROM INFILE`` of the same payload into chDB in this process.
The target is (a) >= 0.9 x (b) in rows per second. Also measured: clickhouse-connect's
row-based ``insert()`` rate through the endpoint and the endpoint's idle RSS.

Every round runs (a) and (b) once each, in a rotating order (interleaved); the ratio
is of the medians, and the per-round ratios show how much the machine's load moved it.

Run: ``.venv/bin/python benchmarks/bench_embedded.py [--rows N] [--repeat K]``
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import time
from pathlib import Path

import clickhouse_connect
import lz4.frame

from chworkers.embedded import EmbeddedClickHouse

TABLE = (
    "CREATE TABLE {name} (id UInt64, ts DateTime, user_id UInt32, event LowCardinality(String), "
    "url String, value Float64) ENGINE = MergeTree ORDER BY (event, ts)"
)
ROWS_SQL = (
    "SELECT number AS id, toDateTime(1700000000 + number % 86400) AS ts, "
    "toUInt32(number % 100000) AS user_id, "
    "['view', 'click', 'buy', 'share'][number % 4 + 1] AS event, "
    "concat('https://example.com/p/', toString(number % 5000)) AS url, "
    "number / 7 AS value FROM numbers({rows})"
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def http_insert(ch: EmbeddedClickHouse, table: str, body: bytes, encoding: str | None) -> float:
    query = f"INSERT INTO {table} FORMAT Native"
    headers = {"Content-Type": "application/octet-stream"}
    if encoding:
        headers["Content-Encoding"] = encoding
    conn = http.client.HTTPConnection(ch.host, ch.port, timeout=600)
    target = "/?" + "&".join(["query=" + query.replace(" ", "%20")])
    start = time.perf_counter()
    conn.request("POST", target, body=body, headers=headers)
    resp = conn.getresponse()
    text = resp.read()
    elapsed = time.perf_counter() - start
    conn.close()
    if resp.status != 200:
        raise SystemExit(f"insert failed: {resp.status} {text[:300]!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--row-insert-rows", type=int, default=200_000)
    args = parser.parse_args()
    from chdb import _chdb  # this process's own chDB, for (b) and the payload

    with tempfile.TemporaryDirectory(prefix="bench-embedded-") as tmp:
        tmpdir = Path(tmp)
        direct = _chdb.connect(str(tmpdir / "direct"))
        payload = direct.query(ROWS_SQL.format(rows=args.rows), "Native").bytes()
        payload_file = tmpdir / "payload.native"
        payload_file.write_bytes(payload)
        compressed = lz4.frame.compress(payload)
        print(
            f"payload: {args.rows:,} rows, {len(payload) / 1e6:.1f} MB Native "
            f"({len(compressed) / 1e6:.1f} MB lz4)"
        )

        times_b: list[float] = []
        times_a: dict[str, list[float]] = {"none": [], "lz4": []}
        with EmbeddedClickHouse(tmpdir / "endpoint") as ch:
            assert ch.pid is not None
            client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
            time.sleep(1.0)
            idle_rss = rss_mb(ch.pid)

            def direct_insert(i: int) -> None:
                direct.query(TABLE.format(name=f"b{i}"), "TabSeparated")
                start = time.perf_counter()
                direct.query(f"INSERT INTO b{i} FROM INFILE '{payload_file}' FORMAT Native", "TSV")
                times_b.append(time.perf_counter() - start)
                counted = direct.query(f"SELECT count() FROM b{i}", "TSV").bytes().strip()
                assert int(counted) == args.rows, counted
                direct.query(f"DROP TABLE b{i} SYNC", "TSV")

            def endpoint_insert(enc: str, body: bytes, i: int) -> None:
                table = f"a_{enc}_{i}"
                client.command(TABLE.format(name=table))
                times_a[enc].append(http_insert(ch, table, body, None if enc == "none" else enc))
                assert client.command(f"SELECT count() FROM {table}") == args.rows
                client.command(f"DROP TABLE {table} SYNC")

            # Interleaved, each round in another order: the machine's load changes
            # from one second to the next, and a path measured only first or last
            # would get a share of it the others do not.
            paths = [
                direct_insert,
                lambda i: endpoint_insert("none", payload, i),
                lambda i: endpoint_insert("lz4", compressed, i),
            ]
            for i in range(args.repeat):
                for k in range(len(paths)):
                    paths[(i + k) % len(paths)](i)

            n = args.row_insert_rows
            client.command(TABLE.format(name="rows"))
            rows = [
                [i, 1_700_000_000 + i % 86_400, i % 100_000, "view", f"https://e.com/{i}", i / 7]
                for i in range(n)
            ]
            cols = ["id", "ts", "user_id", "event", "url", "value"]
            start = time.perf_counter()
            client.insert("rows", rows, column_names=cols)
            row_insert = time.perf_counter() - start
            assert client.command("SELECT count() FROM rows") == n
            time.sleep(1.0)
            idle_rss_after = rss_mb(ch.pid)
            client.close()
        direct.close()

    b = statistics.median(times_b)
    print(f"{args.repeat} rounds, interleaved; medians [min-max]")
    print(
        f"(b) chDB INSERT FROM INFILE, in-process: {b:.3f} s [{min(times_b):.3f}-"
        f"{max(times_b):.3f}]  {args.rows / b / 1e6:.2f} M rows/s"
    )
    for enc, ts in times_a.items():
        a = statistics.median(ts)
        ratios = sorted(tb / ta for tb, ta in zip(times_b, ts, strict=True))
        print(
            f"(a) HTTP insert via endpoint, body {enc:>4}: {a:.3f} s [{min(ts):.3f}-{max(ts):.3f}]"
            f"  {args.rows / a / 1e6:.2f} M rows/s  ratio a/b (rate) = {b / a:.2f} "
            f"(per round {ratios[0]:.2f}-{ratios[-1]:.2f}, median {statistics.median(ratios):.2f})"
        )
    print(
        f"clickhouse-connect row-based insert() of {n:,} rows: {row_insert:.2f} s  "
        f"{n / row_insert:,.0f} rows/s"
    )
    print(f"endpoint idle RSS: {idle_rss:.0f} MB at start, {idle_rss_after:.0f} MB after the runs")


if __name__ == "__main__":
    main()
