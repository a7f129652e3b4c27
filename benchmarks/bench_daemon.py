"""Benchmark ``chworkers run`` end to end (issue: the ingestion daemon).

Throughput, same JSONEachRow file, same embedded endpoint:
  (a) the daemon (file source -> spool -> workers) with 1, 2 and 4 workers;
  (b) clickhouse-connect inserting the same rows, parsed with json, in one process;
  (c) the endpoint's own ``INSERT ... FORMAT JSONEachRow`` of the raw file.
Memory: the daemon under a steady generated load for ``--soak`` seconds with ClickHouse
stopped for the middle third: the spool grows on disk, RSS must not.

Run: ``.venv/bin/python benchmarks/bench_daemon.py [--rows N] [--soak SECONDS]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import clickhouse_connect

from chworkers.daemon import config
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse

SCHEMA = "ts DateTime, user_id UInt64, event LowCardinality(String), value Float64, url String"
COLUMNS = ["ts", "user_id", "event", "value", "url"]


def make_file(path: Path, rows: int) -> None:
    events = ("view", "click", "purchase", "signup", "logout")
    with open(path, "w") as fh:
        for i in range(rows):
            fh.write(
                f'{{"ts":{1700000000 + i // 1000},"user_id":{i * 7919 % 100000},'
                f'"event":"{events[i % 5]}","value":{i % 1000 / 10},"url":"/p/{i % 1000}"}}\n'
            )


def table(client: Any, name: str) -> None:
    client.command(f"DROP TABLE IF EXISTS {name}")
    client.command(f"CREATE TABLE {name} ({SCHEMA}) ENGINE = MergeTree ORDER BY (event, ts)")


def daemon_run(ch: EmbeddedClickHouse, tmp: Path, path: Path, workers: int, name: str) -> float:
    cfg = config.load(
        data={
            "state_dir": str(tmp / f"state-{name}"),
            "clickhouse": {"url": ch.url, "pool": {"max_connections": workers}},
            "supervisor": {"workers": workers},
            "metrics": {"port": 0},
            "pipelines": [
                {
                    "name": name,
                    "source": "file",
                    "paths": [str(path)],
                    "table": name,
                    "max_rows": 100_000,
                }
            ],
        },
        env={},
    )
    daemon = Daemon(cfg)
    ready: list[float] = []
    thread = threading.Thread(
        target=lambda: ready.append(daemon.wait_ready(120) and time.monotonic())
    )
    thread.start()
    daemon.run()
    end = time.monotonic()
    thread.join()
    assert daemon.totals.rows_inserted > 0
    return daemon.totals.rows_inserted / (end - ready[0])


def connect_rows(client: Any, path: Path, name: str) -> float:
    started = time.monotonic()
    batch: list[list[Any]] = []
    n = 0
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            batch.append([row[c] for c in COLUMNS])
            if len(batch) == 100_000:
                client.insert(name, batch, column_names=COLUMNS)
                n += len(batch)
                batch = []
    if batch:
        client.insert(name, batch, column_names=COLUMNS)
        n += len(batch)
    return n / (time.monotonic() - started)


def raw_format(client: Any, path: Path, name: str, rows: int) -> float:
    data = path.read_bytes()
    started = time.monotonic()
    client.raw_insert(name, insert_block=data, fmt="JSONEachRow")
    return rows / (time.monotonic() - started)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def soak(ch: EmbeddedClickHouse, tmp: Path, seconds: float) -> None:
    import os

    cfg = config.load(
        data={
            "state_dir": str(tmp / "state-soak"),
            "clickhouse": {"url": ch.url, "pool": {"max_connections": 2}},
            "supervisor": {"workers": 2},
            "metrics": {"port": 0},
            "spool": {"fsync": False, "retry_backoff_max": 5},
            "pipelines": [
                {
                    "name": "soak",
                    "source": "generator",
                    "generator_count": 0,
                    "generator_rate": 20_000,
                    "table": "soak",
                    "create": SCHEMA,
                    "max_rows": 20_000,
                }
            ],
        },
        env={},
    )
    daemon = Daemon(cfg)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    daemon.wait_ready(120)
    started = time.monotonic()
    samples: list[tuple[float, float, float, str]] = []
    stopped = False
    while (elapsed := time.monotonic() - started) < seconds:
        phase = "up"
        if seconds / 3 <= elapsed < 2 * seconds / 3:
            phase = "DOWN"
            if not stopped:
                ch.kill()
                stopped = True
        elif stopped and elapsed >= 2 * seconds / 3:
            ch.start()
            stopped = False
            daemon.dispatcher.retry_now()
        spool_mb = daemon.spool.stats()["bytes"] / 2**20
        samples.append((elapsed, rss_mb(os.getpid()), spool_mb, phase))
        time.sleep(1)
    daemon.request_stop()
    thread.join()
    print(f"\nsoak: {seconds:.0f} s at 20k rows/s, ClickHouse down for the middle third")
    print(f"{'t (s)':>6} {'daemon RSS MB':>14} {'spool MB':>9}  phase")
    step = max(1, len(samples) // 15)
    for t, rss, spool, phase in samples[::step]:
        print(f"{t:6.0f} {rss:14.1f} {spool:9.1f}  {phase}")
    rss_values = [s[1] for s in samples[len(samples) // 10 :]]
    print(
        f"RSS after warm-up: min {min(rss_values):.1f} MB, max {max(rss_values):.1f} MB; "
        f"spool peak {max(s[2] for s in samples):.1f} MB; rows inserted "
        f"{daemon.totals.rows_inserted:,}, read {daemon.totals.rows_read:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--soak", type=float, default=300.0, help="0 skips the memory run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        path = tmp / "events.json"
        make_file(path, args.rows)
        print(f"{args.rows:,} JSONEachRow lines, {path.stat().st_size / 2**20:.0f} MB")
        with EmbeddedClickHouse(tmp / "ch") as ch:
            client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
            results: dict[str, float] = {}
            table(client, "raw")
            results["(c) endpoint INSERT FORMAT JSONEachRow"] = raw_format(
                client, path, "raw", args.rows
            )
            table(client, "cc")
            results["(b) clickhouse-connect, parsed rows"] = connect_rows(client, path, "cc")
            for workers in (1, 2, 4):
                name = f"d{workers}"
                table(client, name)
                results[f"(a) chworkers run, {workers} worker(s)"] = daemon_run(
                    ch, tmp, path, workers, name
                )
                assert client.command(f"SELECT count() FROM {name}") == args.rows
            base = results["(b) clickhouse-connect, parsed rows"]
            for label, rate in results.items():
                print(f"{label:<42} {rate:>12,.0f} rows/s  {rate / base:5.2f}x (b)")
            client.close()
            if args.soak > 0:
                soak(ch, tmp, args.soak)


if __name__ == "__main__":
    main()
