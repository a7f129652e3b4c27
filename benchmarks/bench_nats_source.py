"""The NATS source's own CPU per message, without ClickHouse: what the daemon spends on
a message between nats-server and the spool (pulls, parsing, batching, manifests,
acknowledgements), the number to compare with Redis's ~3 us (docs/brokers.md,
"Measured").

A real nats-server (JetStream, file store) is filled with ``--messages`` messages of
``--rows-per-message`` JSON lines; then a :class:`NatsSource` reads them in this
process, its batcher a stand-in that takes each batch and completes it at once (the
acknowledgements sent as the daemon sends them once ClickHouse confirmed a batch).
Printed: this process's CPU microseconds per message (all its threads: the source's,
its event loop's, the heartbeat's) and nats-server's, from the first batch to the last
acknowledgement. ``--json`` prints one line for a driver that compares code versions
(run with ``PYTHONPATH`` at another checkout to measure that code).

Run: ``.venv/bin/python benchmarks/bench_nats_source.py --messages 200000``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from brokerharness import Completing, per_message, process_cpu, source_bench, tree_cpu
from brokerservers import nats_produce
from natsserver import NatsServer


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    from chworkers.daemon.batcher import BatchLimits
    from chworkers.daemon.brokers.natsstream import NatsSource
    from chworkers.daemon.brokers.options import NatsSourceSettings

    server = NatsServer(tmp / "nats")
    server.start()
    try:
        server.make_stream("bench")
        asyncio.run(nats_produce(server.url, args.messages, args.rows_per_message))
        assert server.proc is not None
        batcher = Completing()
        source = NatsSource(
            name="bench",
            table="ev",
            format="JSONEachRow",
            batcher=batcher,  # type: ignore[arg-type]
            options=NatsSourceSettings(
                url=server.url,
                stream="bench",
                fetch_count=args.fetch_count,
                ack_policy=args.ack_policy,
            ),
            limits=BatchLimits(max_rows=args.max_rows, max_delay=0.5),
            consumer="bench",
            dead_letter=lambda records, token: None,
        )
        batcher.source = source
        stop = threading.Event()
        thread = threading.Thread(target=source.run, args=(stop,))
        spy = None
        if args.profile:  # py-spy (in this venv), the threads holding the GIL only
            command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid"]
            command += [str(os.getpid()), "--threads", "--gil", "--format", "raw"]
            spy = subprocess.Popen([*command, "--rate", "250", "--output", args.profile])
            time.sleep(1)  # py-spy attached
        own, nats = process_cpu(), tree_cpu(server.proc.pid)
        started = time.monotonic()
        thread.start()
        ended = batcher.until_rows(args.messages * args.rows_per_message, started)
        used = process_cpu() - own, tree_cpu(server.proc.pid) - nats
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        stop.set()
        thread.join(30)
        source.close()
    finally:
        server.stop()
    return per_message(args, used, ended - started, "messages")


def main() -> None:
    source_bench(
        __doc__,
        measure,
        unit=("message", "messages"),
        server="nats-server",
        profile=("--profile", "py-spy's raw samples of the reading"),
        options=(
            (
                "--ack-policy",
                {"choices": ("explicit", "all"), "default": "explicit", "help": "ack_policy"},
            ),
        ),
    )


if __name__ == "__main__":
    main()
