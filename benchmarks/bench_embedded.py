"""Benchmark the embedded ClickHouse endpoint against chDB used directly.

(a) POST a pre-built 1M-row Native payload to the endpoint (``INSERT ... FORMAT
    Native``), as-is and lz4-compressed the way clickhouse-connect sends it;
(b) ``INSERT ... FROM INFILE`` of the same payload into chDB in this process, from the
    plain file and from the same lz4 bytes the endpoint receives (``COMPRESSION 'lz4'``:
    chDB decompresses them itself, as the endpoint has to).
The target is (a) >= 0.9 x (b) in rows per second, each encoding against INFILE of the
same bytes (and the lz4 body against the plain INFILE too). Also measured:
clickhouse-connect's row-based ``insert()`` rate through the endpoint and the
endpoint's idle RSS.

Every round runs (a) and (b) once each, in a rotating order (interleaved); the ratio
is of the medians, and the per-round ratios show how much the machine's load moved it.
Besides the wall clock, the CPU each path spent: (a) the endpoint process's (all its
threads, from ``/proc/PID/stat``; the client's sending is not in it), (b) this
process's. On a machine shared with other work the wall clock moves with the load and
the CPU much less. ``--rows`` takes a comma-separated list (``10000,100000,1000000``):
each size is a run of its own.

Run: ``.venv/bin/python benchmarks/bench_embedded.py [--rows N[,N...]] [--repeat K]``
"""

from __future__ import annotations

import argparse
import functools
import http.client
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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


class Run:
    """One payload size: the timings and CPU of every path, round by round."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        paths = ("infile", "infile-lz4", "none", "lz4")
        self.wall: dict[str, list[float]] = {p: [] for p in paths}
        self.cpu: dict[str, list[float]] = {p: [] for p in paths}

    def report(self, sizes: tuple[int, int]) -> None:
        print(
            f"payload: {self.rows:,} rows, {sizes[0] / 1e6:.1f} MB Native "
            f"({sizes[1] / 1e6:.1f} MB lz4); {len(self.wall['infile'])} rounds, "
            "interleaved; medians [min-max]"
        )
        for infile, label in (("infile", "plain file"), ("infile-lz4", "lz4 file  ")):
            ts, cpus = self.wall[infile], self.cpu[infile]
            b, b_cpu = statistics.median(ts), statistics.median(cpus)
            print(
                f"  (b) chDB INSERT FROM INFILE, {label}: {b:.3f} s "
                f"[{min(ts):.3f}-{max(ts):.3f}]  {self.rows / b / 1e6:.2f} M rows/s  "
                f"CPU {b_cpu:.3f} s"
            )
        # Each body against INFILE of the same bytes; the lz4 body against the plain file too.
        for enc, infile in (("none", "infile"), ("lz4", "infile-lz4"), ("lz4", "infile")):
            ts, cpus = self.wall[enc], self.cpu[enc]
            a, a_cpu = statistics.median(ts), statistics.median(cpus)
            bs = self.wall[infile]
            b, b_cpu = statistics.median(bs), statistics.median(self.cpu[infile])
            ratios = sorted(tb / ta for tb, ta in zip(bs, ts, strict=True))
            print(
                f"  (a) HTTP insert via endpoint, body {enc:>4}: {a:.3f} s "
                f"[{min(ts):.3f}-{max(ts):.3f}]  {self.rows / a / 1e6:.2f} M rows/s  "
                f"vs {infile:<10} ratio a/b (rate) = {b / a:.2f} (per round "
                f"{ratios[0]:.2f}-{ratios[-1]:.2f}, median {statistics.median(ratios):.2f})  "
                f"CPU {a_cpu:.3f} s (b/a {b_cpu / a_cpu:.2f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000000", help="rows per payload, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--row-insert-rows", type=int, default=200_000)
    args = parser.parse_args()
    from chdb import _chdb  # this process's own chDB, for (b) and the payload

    with tempfile.TemporaryDirectory(prefix="bench-embedded-") as tmp:
        tmpdir = Path(tmp)
        direct = _chdb.connect(str(tmpdir / "direct"))
        with EmbeddedClickHouse(tmpdir / "endpoint") as ch:
            pid = ch.pid
            assert pid is not None
            client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
            time.sleep(1.0)
            idle_rss = rss_mb(pid)
            for rows in (int(r) for r in args.rows.split(",")):
                run = Run(rows)
                payload = direct.query(ROWS_SQL.format(rows=rows), "Native").bytes()
                payload_file = tmpdir / "payload.native"
                payload_file.write_bytes(payload)
                compressed = lz4.frame.compress(payload)
                compressed_file = tmpdir / "payload.native.lz4"
                compressed_file.write_bytes(compressed)

                def direct_insert(path: Path, compression: str, i: int, run: Run = run) -> None:
                    name = "infile" if compression == "none" else f"infile-{compression}"
                    table = f"b_{compression}_{i}"
                    direct.query(TABLE.format(name=table), "TabSeparated")
                    cpu, start = own_cpu_seconds(), time.perf_counter()
                    direct.query(
                        f"INSERT INTO {table} FROM INFILE '{path}' "
                        f"COMPRESSION '{compression}' FORMAT Native",
                        "TSV",
                    )
                    run.wall[name].append(time.perf_counter() - start)
                    run.cpu[name].append(own_cpu_seconds() - cpu)
                    counted = direct.query(f"SELECT count() FROM {table}", "TSV").bytes().strip()
                    assert int(counted) == run.rows, counted
                    direct.query(f"DROP TABLE {table} SYNC", "TSV")

                def endpoint_insert(enc: str, body: bytes, i: int, run: Run = run) -> None:
                    table = f"a_{enc}_{i}"
                    client.command(TABLE.format(name=table))
                    cpu = cpu_seconds(pid)
                    elapsed = http_insert(ch, table, body, None if enc == "none" else enc)
                    run.cpu[enc].append(cpu_seconds(pid) - cpu)
                    run.wall[enc].append(elapsed)
                    assert client.command(f"SELECT count() FROM {table}") == run.rows
                    client.command(f"DROP TABLE {table} SYNC")

                # Interleaved, each round in another order: the machine's load changes
                # from one second to the next, and a path measured only first or last
                # would get a share of it the others do not.
                paths: list[Callable[[int], None]] = [
                    functools.partial(direct_insert, payload_file, "none"),
                    functools.partial(direct_insert, compressed_file, "lz4"),
                    functools.partial(endpoint_insert, "none", payload),
                    functools.partial(endpoint_insert, "lz4", compressed),
                ]
                for i in range(args.repeat):
                    for k in range(len(paths)):
                        paths[(i + k) % len(paths)](i)
                run.report((len(payload), len(compressed)))

            n = args.row_insert_rows
            client.command(TABLE.format(name="rows"))
            rows_list = [
                [i, 1_700_000_000 + i % 86_400, i % 100_000, "view", f"https://e.com/{i}", i / 7]
                for i in range(n)
            ]
            cols = ["id", "ts", "user_id", "event", "url", "value"]
            start = time.perf_counter()
            client.insert("rows", rows_list, column_names=cols)
            row_insert = time.perf_counter() - start
            assert client.command("SELECT count() FROM rows") == n
            time.sleep(1.0)
            idle_rss_after = rss_mb(pid)
            client.close()
        direct.close()
    print(
        f"clickhouse-connect row-based insert() of {n:,} rows: {row_insert:.2f} s  "
        f"{n / row_insert:,.0f} rows/s"
    )
    print(f"endpoint idle RSS: {idle_rss:.0f} MB at start, {idle_rss_after:.0f} MB after the runs")


if __name__ == "__main__":
    main()
