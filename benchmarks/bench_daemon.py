"""Benchmark ``chworkers run``'s memory under an outage (issue: the ingestion daemon).

The daemon under a steady generated load for ``--soak`` seconds with ClickHouse stopped
for the middle third: the spool grows on disk, RSS must not.

Throughput (the daemon on a JSON-lines file against raw POSTs of it and against
clickhouse-connect inserting parsed rows) is ``chworkers bench --only daemon``
(docs/bench.md); ``--rows N`` runs it first, with that many lines and 1, 2 and 4 workers.

Run: ``.venv/bin/python benchmarks/bench_daemon.py [--rows N] [--soak SECONDS]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from chworkers.daemon import config
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse

SCHEMA = "ts DateTime, user_id UInt64, event LowCardinality(String), value Float64, url String"


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
    parser.add_argument(
        "--rows", type=int, default=0, help="run chworkers bench --only daemon on N lines first"
    )
    parser.add_argument("--soak", type=float, default=300.0, help="0 skips the memory run")
    args = parser.parse_args()
    if args.rows > 0:
        bench_args = ["--daemon-lines", str(args.rows), "--workers", "1,2,4"]
        subprocess.run(
            [sys.executable, "-m", "chworkers", "bench", "--only", "daemon", *bench_args],
            check=True,
        )
    if args.soak > 0:
        with tempfile.TemporaryDirectory() as tmpdir, EmbeddedClickHouse(Path(tmpdir) / "ch") as ch:
            soak(ch, Path(tmpdir), args.soak)


if __name__ == "__main__":
    main()
