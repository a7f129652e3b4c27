"""The Redis source's own CPU per entry, without ClickHouse: what the daemon spends on an
entry between redis-server and the spool (reads, framing, batching, manifests,
acknowledgements), as benchmarks/bench_nats_source.py measures the NATS source's.

A real redis-server (tests/redisserver.py, ``appendfsync always``, as bench_brokers.py's)
is filled with ``--messages`` entries of ``--rows-per-message`` JSON lines; then a
:class:`RedisSource` reads them in this process, its batcher a stand-in that takes each
batch and completes it at once (the entries acknowledged and the manifest removed as the
daemon does once ClickHouse confirmed a batch). Printed: this process's CPU microseconds
per entry (all its threads: the source's and the heartbeat's) and redis-server's, from
the start of the reading to the last acknowledgement. ``--json`` prints one line for a
driver that compares code versions (run with ``PYTHONPATH`` at another checkout to
measure that code); ``--cprofile FILE`` keeps cProfile's statistics of the source's
thread (which slow it: the CPU figures of such a run do not count).

Run: ``.venv/bin/python benchmarks/bench_redis_source.py --messages 200000``
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from brokerharness import STREAM, Completing, per_message, process_cpu, source_bench, tree_cpu
from brokerservers import Redis


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    from chworkers.daemon.batcher import BatchLimits
    from chworkers.daemon.brokers.options import RedisSourceSettings
    from chworkers.daemon.brokers.redisstream import RedisSource

    broker = Redis(tmp / "redis")
    try:
        broker.fill(args.messages, args.rows_per_message)
        batcher = Completing()
        source = RedisSource(
            name="bench",
            table="ev",
            format="JSONEachRow",
            batcher=batcher,  # type: ignore[arg-type]
            options=RedisSourceSettings(
                url=broker.url, stream=STREAM, fetch_count=args.fetch_count
            ),
            limits=BatchLimits(max_rows=args.max_rows, max_delay=0.5),
            consumer="bench",
            dead_letter=lambda records, token: None,
        )
        batcher.source = source
        stop = threading.Event()
        profile = cProfile.Profile() if args.cprofile else None

        def run() -> None:
            if profile is not None:
                profile.enable()
            try:
                source.run(stop)
            finally:
                if profile is not None:
                    profile.disable()

        thread = threading.Thread(target=run)
        own, server = process_cpu(), tree_cpu(broker.pid)
        started = time.monotonic()
        thread.start()
        ended = batcher.until_rows(args.messages * args.rows_per_message, started)
        used = process_cpu() - own, tree_cpu(broker.pid) - server
        stop.set()
        thread.join(30)
        if profile is not None:
            profile.dump_stats(args.cprofile)
    finally:
        broker.stop()
    return per_message(args, used, ended - started, "entries")


def main() -> None:
    source_bench(
        __doc__,
        measure,
        unit=("entry", "entries"),
        server="redis-server",
        profile=("--cprofile", "cProfile's stats of the source's thread"),
    )


if __name__ == "__main__":
    main()
