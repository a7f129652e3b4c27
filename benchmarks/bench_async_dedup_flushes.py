"""Flushes per second of the embedded endpoint's asynchronous insert queue, into several
tables at once (the cost of the deduplication ids' fsync and of its lock).

Each flush of a table that deduplicates appends its entries' block ids to that table's
file and fsyncs it (``chworkers/embedded/asyncdedup.py``). Two measurements:

* ``record``: ``--tables`` threads, each recording one id at a time into its own table
  (what every flush does around its part: ``AsyncDedup.record`` in session 7's code,
  ``begin`` and ``commit`` since) for
  ``--seconds``: the ids recorded per second, all tables together. With one lock for
  all tables, each table's fsync waits for every other's.
* ``endpoint``: an embedded endpoint; ``--tables`` MergeTree tables with a
  deduplication window, one client thread each sending one-row asynchronous inserts
  (``wait_for_async_insert = 1``, a fixed 1 ms busy timeout, so about one flush per
  insert) for ``--seconds``: the flushes per second (``async_flushes_total``), and
  the endpoint process's CPU time per flush (user + system, from ``/proc``: what a
  loaded machine does not blur as much). ``--rows`` rows per insert, and with
  ``--partitions N`` the tables are ``PARTITION BY k % N`` (each insert's rows spread
  over them: a flush into several partitions keeps its rows until its last part).

``--code LABEL=DIR`` (repeatable; DIR a checkout of chworkers, e.g. a ``git worktree
add --detach`` of an older commit) runs each measurement with that code first on the
path, in interleaved rounds; without it, this checkout. Medians of ``--rounds``.

Run: ``flock /work/coord/bench.lock .venv/bin/python benchmarks/bench_async_dedup_flushes.py
--code before=/tmp/before --code after=.``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def measure_record(tables: int, seconds: float) -> float:
    from chworkers.embedded.asyncdedup import AsyncDedup

    with tempfile.TemporaryDirectory() as tmp:
        dedup = AsyncDedup(Path(tmp) / "ids")
        counts = [0] * tables
        stop = time.monotonic() + seconds
        start = threading.Barrier(tables)

        def run(i: int) -> None:
            storage = f"{tmp}/store/t{i}/"
            start.wait()
            n = 0
            while time.monotonic() < stop:
                ids = [f"id-{i}-{n}"]
                if hasattr(dedup, "record"):  # session 7's code: after the part
                    dedup.record(storage, 1000, ids)
                else:  # pending before the part (fsync'd), committed after
                    dedup.begin(storage, 1000, f"flush-{n}", ids)
                    dedup.commit(storage, 1000, f"flush-{n}", ids)
                n += 1
            counts[i] = n

        threads = [threading.Thread(target=run, args=(i,)) for i in range(tables)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) / seconds


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_endpoint(
    tables: int, seconds: float, rows: int = 1, partitions: int = 0
) -> tuple[float, float]:
    from clickhouse_connect import get_client

    from chworkers import EmbeddedClickHouse

    settings = {
        "async_insert": 1,
        "wait_for_async_insert": 1,
        "async_insert_use_adaptive_busy_timeout": 0,
        "async_insert_busy_timeout_max_ms": 1,
    }
    with tempfile.TemporaryDirectory() as tmp, EmbeddedClickHouse(Path(tmp) / "data") as ch:
        admin = get_client(host=ch.host, port=ch.port)
        for i in range(tables):
            by = f"PARTITION BY k % {partitions} " if partitions else ""
            admin.command(
                f"CREATE TABLE t{i} (k UInt64) ENGINE = MergeTree {by}ORDER BY k "
                "SETTINGS non_replicated_deduplication_window = 1000"
            )
        clients = [get_client(host=ch.host, port=ch.port) for _ in range(tables)]
        start = threading.Barrier(tables + 1)
        stop = [0.0]

        def run(i: int) -> None:
            start.wait()
            n = 0
            while time.monotonic() < stop[0]:
                body = b"".join(b'{"k":%d}\n' % (n * rows + r) for r in range(rows))
                clients[i].raw_insert(f"t{i}", None, body, settings=settings, fmt="JSONEachRow")
                n += 1

        threads = [threading.Thread(target=run, args=(i,)) for i in range(tables)]
        for t in threads:
            t.start()
        assert ch.pid is not None
        before = ch.stats()["async_flushes_total"]
        cpu = _cpu_seconds(ch.pid)
        stop[0] = time.monotonic() + seconds
        started = time.monotonic()
        start.wait()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        flushes = ch.stats()["async_flushes_total"] - before
        return flushes / elapsed, (_cpu_seconds(ch.pid) - cpu) / max(flushes, 1)


def one(mode: str, tables: int, seconds: float, rows: int, partitions: int) -> None:
    import chworkers

    cpu = 0.0
    if mode == "record":
        rate = measure_record(tables, seconds)
    else:
        rate, cpu = measure_endpoint(tables, seconds, rows, partitions)
    code = str(Path(chworkers.__file__).parent.parent)
    print(json.dumps({"rate": rate, "cpu": cpu, "code": code}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="record,endpoint")
    parser.add_argument("--rows", type=int, default=1, help="rows per insert (endpoint)")
    parser.add_argument("--partitions", type=int, default=0, help="PARTITION BY k %% N")
    parser.add_argument("--code", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.tables, args.seconds, args.rows, args.partitions)
        return
    codes = [spec.split("=", 1) for spec in args.code] or [["here", "."]]
    results: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds):
        order = codes[round_ % len(codes) :] + codes[: round_ % len(codes)]
        for mode in args.modes.split(","):
            for label, where in order:
                code = str(Path(where).resolve())
                env = dict(
                    os.environ, PYTHONPATH=os.pathsep.join([code, os.environ.get("PYTHONPATH", "")])
                )
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        mode,
                        "--tables",
                        str(args.tables),
                        "--seconds",
                        str(args.seconds),
                        "--rows",
                        str(args.rows),
                        "--partitions",
                        str(args.partitions),
                    ],
                    env=env,
                    cwd=code,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                got = json.loads(out.stdout.strip().splitlines()[-1])
                if Path(got["code"]).resolve() != Path(code):
                    raise SystemExit(f"{label}: ran {got['code']}, not {code}")
                results.setdefault((mode, label), []).append(got["rate"])
                cpus.setdefault((mode, label), []).append(got.get("cpu", 0.0))
    print(
        f"{args.tables} tables, {args.seconds:g} s each, medians of {args.rounds} rounds "
        f"(load average {os.getloadavg()[0]:.1f}):"
    )
    for (mode, label), rates in results.items():
        unit = "ids recorded/s" if mode == "record" else "flushes/s"
        spread = ", ".join(f"{r:.0f}" for r in rates)
        line = f"  {mode:8} {label:10} {statistics.median(rates):8.0f} {unit}  ({spread})"
        if mode == "endpoint":
            ms = [c * 1000 for c in cpus[(mode, label)]]
            each = ", ".join(f"{c:.2f}" for c in ms)
            line += f"; endpoint CPU {statistics.median(ms):.2f} ms/flush ({each})"
        print(line)


if __name__ == "__main__":
    main()
