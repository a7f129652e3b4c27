"""Memory and time of the embedded endpoint's results, per output format, for big results.

For each format, ``SELECT number, toString(number) AS s FROM numbers(N)`` (1M rows by
default) is read through the endpoint (the client discards the bytes as they arrive)
while a thread samples the endpoint's RSS every 10 ms. Reported: the body size, the
seconds, and the endpoint's peak RSS above its RSS before the query. Streamed formats
should stay flat whatever N is; whole formats (JSON, Parquet, ...) cost about their
result size (chDB builds the document in memory; the endpoint sends from chDB's buffer
without copying it).

Run: ``.venv/bin/python benchmarks/bench_embedded_results.py [--rows N] [--formats A,B]``
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import threading
import time
from pathlib import Path

from chworkers.embedded import EmbeddedClickHouse

DEFAULT_FORMATS = (
    "Native,RowBinaryWithNamesAndTypes,TSV,CSVWithNames,JSONEachRow,ArrowStream,"
    "JSON,JSONCompact,Parquet,Arrow"
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.01)


def read_result(ch: EmbeddedClickHouse, sql: str) -> int:
    conn = http.client.HTTPConnection(ch.host, ch.port, timeout=600)
    try:
        conn.request("POST", "/", body=sql.encode())
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(resp.read().decode())
        total = 0
        while chunk := resp.read(1 << 16):
            total += len(chunk)
        return total
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default=DEFAULT_FORMATS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedClickHouse(Path(tmp) / "data") as ch:
        assert ch.pid is not None
        read_result(ch, "SELECT 1")  # load what the first query loads
        print(f"{'format':<28} {'body MB':>8} {'seconds':>8} {'peak RSS +MB':>13}")
        for fmt in args.formats.split(","):
            sql = f"SELECT number, toString(number) AS s FROM numbers({args.rows}) FORMAT {fmt}"
            before = rss_mb(ch.pid)
            started = time.perf_counter()
            with PeakRss(ch.pid) as peak:
                size = read_result(ch, sql)
            seconds = time.perf_counter() - started
            grew = max(0.0, peak.peak - before)
            print(f"{fmt:<28} {size / 1e6:>8.1f} {seconds:>8.2f} {grew:>13.1f}")


if __name__ == "__main__":
    main()
