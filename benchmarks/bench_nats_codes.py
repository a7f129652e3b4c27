"""The NATS source's own CPU per message, one version of the code against another, on
one stream filled once (docs/brokers.md, "Measured").

``bench_nats_source.py`` fills a stream for every run, which takes most of a run's time;
this fills one (``--messages`` messages of ``--rows-per-message`` JSON lines) and reads
it again and again: each round, each ``--code NAME=DIR`` in turn, a process with
``PYTHONPATH=DIR`` (a checkout whose ``chworkers`` is that version; ``.`` for this one)
reads the whole stream through a durable consumer of its own with a
:class:`~chworkers.daemon.brokers.natsstream.NatsSource`, its batcher a stand-in that
completes every batch at once, as ``bench_nats_source.py`` does (``--hold N``: once N
more were given to it, as the spool holds batches while ClickHouse inserts them). Printed: per round and
version, that process's CPU microseconds per message (all its threads, start-up left
out, and by thread: ``source`` frames and batches, ``source-bench-nats`` is the event
loop that parses the reads and writes the acknowledgements) and nats-server's over the
same time; then the medians.

Run (under the bench lock):
``flock /work/coord/bench.lock .venv/bin/python benchmarks/bench_nats_codes.py
--code before=/tmp/old-checkout --code after=. --messages 200000 --rounds 3``
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from brokerharness import Batch, Completing, process_cpu, thread_cpu, tree_cpu
from brokerservers import nats_produce
from natsserver import NatsServer


class Holding(Completing):
    """A batcher that completes each batch once ``hold`` more were given to it (0: at
    once), as the daemon's spool holds batches while ClickHouse inserts them: their
    messages are pending in the consumer meanwhile, which nats-server's work per
    message depends on."""

    def __init__(self, hold: int) -> None:
        super().__init__()
        self.hold = hold
        self.held: collections.deque[Batch] = collections.deque()

    def add(self, table: str, payload: bytes, rows: int, **kw: Any) -> None:
        if not self.batches:
            self.first = time.monotonic()
        self.held.append(Batch(kw["meta"]))
        while len(self.held) > self.hold:
            self.source.complete(self.held.popleft())
        self.rows += rows
        self.batches += 1

    def release(self) -> None:
        """Complete the batches still held (all rows were given)."""
        while self.held:
            self.source.complete(self.held.popleft())


def read_once(args: argparse.Namespace) -> None:
    """One read of the whole stream (in the process of one version of the code)."""
    from chworkers.daemon.batcher import BatchLimits
    from chworkers.daemon.brokers.natsstream import NatsSource
    from chworkers.daemon.brokers.options import NatsSourceSettings

    batcher = Holding(int(args.hold))
    source = NatsSource(
        name="bench",
        table="ev",
        format="JSONEachRow",
        batcher=batcher,  # type: ignore[arg-type]
        options=NatsSourceSettings(
            url=args.url, stream="bench", consumer=args.consumer, fetch_count=args.fetch_count
        ),
        limits=BatchLimits(max_rows=args.max_rows, max_delay=0.5),
        consumer="bench",
        dead_letter=lambda records, token: None,
    )
    batcher.source = source
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,), name="source")
    spy = None
    if args.profile:  # py-spy (in this venv), the threads holding the GIL only
        command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid"]
        command += [str(os.getpid()), "--threads", "--gil", "--format", "raw"]
        spy = subprocess.Popen([*command, "--rate", "250", "--output", args.profile])
        time.sleep(1)  # py-spy attached
    before = by_thread()
    own, nats = process_cpu(), tree_cpu(args.server_pid)
    started = time.monotonic()
    thread.start()
    ended = batcher.until_rows(args.messages * args.rows_per_message, started)
    batcher.release()  # their acknowledgements counted too
    used = process_cpu() - own, tree_cpu(args.server_pid) - nats
    threads = {
        name: (cpu - before.get(name, 0.0)) / args.messages * 1e6
        for name, cpu in by_thread().items()
    }
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    stop.set()
    thread.join(30)
    source.close()
    print(
        json.dumps(
            {
                "source_us": used[0] / args.messages * 1e6,
                "server_us": used[1] / args.messages * 1e6,
                "messages_per_s": args.messages / (ended - started),
                "threads_us": {name: us for name, us in threads.items() if us > 0},
            }
        )
    )


def by_thread() -> dict[str, float]:
    """CPU seconds so far of each of this process's Python threads, by name."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.native_id is not None:
            with contextlib.suppress(FileNotFoundError):  # it ended
                out[thread.name] = thread_cpu(thread.native_id)
    return out


def compare(args: argparse.Namespace) -> None:
    pairs = [code.split("=", 1) for code in args.code]
    if not pairs or any(len(code) != 2 for code in pairs):
        raise SystemExit("--code NAME=DIR, at least once")
    holds = [int(h) for h in args.hold.split(",")]
    codes = [
        (name if len(holds) == 1 else f"{name}/hold{hold}", directory, hold)
        for name, directory in pairs
        for hold in holds
    ]
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        try:
            assert server.proc is not None
            server.make_stream("bench")
            t0 = time.monotonic()
            asyncio.run(nats_produce(server.url, args.messages, args.rows_per_message))
            print(f"filled {args.messages:,} messages in {time.monotonic() - t0:.1f} s", flush=True)
            results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in codes}
            for r in range(args.rounds):
                for index, (name, directory, hold) in enumerate(codes):
                    command = [sys.executable, __file__, "--read", "--url", server.url]
                    command += ["--consumer", f"bench{r}x{index}"]
                    command += ["--hold", str(hold), "--server-pid"]
                    command += [str(server.proc.pid), "--messages", str(args.messages)]
                    command += ["--rows-per-message", str(args.rows_per_message)]
                    command += ["--max-rows", str(args.max_rows)]
                    command += ["--fetch-count", str(args.fetch_count)]
                    if args.profile:
                        command += ["--profile", f"{args.profile}.{name}.{r + 1}.txt"]
                    environment = {**os.environ, "PYTHONPATH": str(Path(directory).resolve())}
                    out = subprocess.run(
                        command, env=environment, capture_output=True, check=True, cwd=tmp
                    ).stdout
                    result = json.loads(out.decode().strip().splitlines()[-1])
                    result["load"] = os.getloadavg()[0]
                    results[name].append(result)
                    print(
                        f"round {r + 1} {name} (load {result['load']:.1f}): the source "
                        f"{result['source_us']:.2f} us of CPU per message, nats-server "
                        f"{result['server_us']:.2f}, {result['messages_per_s']:,.0f} messages/s; "
                        "by thread: "
                        + ", ".join(f"{k} {v:.2f}" for k, v in result["threads_us"].items()),
                        flush=True,
                    )
        finally:
            server.stop()
    print(
        f"\n{args.messages:,} messages of {args.rows_per_message} rows, medians of "
        f"{args.rounds} rounds (us of CPU per message):"
    )
    for name, rounds in results.items():
        source = statistics.median(r["source_us"] for r in rounds)
        nats = statistics.median(r["server_us"] for r in rounds)
        rate = statistics.median(r["messages_per_s"] for r in rounds)
        print(f"  {name:<12} the source {source:5.2f}, nats-server {nats:5.2f}, {rate:,.0f}/s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--code", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rows-per-message", type=int, default=10)
    parser.add_argument("--max-rows", type=int, default=50_000)
    parser.add_argument("--fetch-count", type=int, default=10_000)
    parser.add_argument(
        "--hold",
        default="0",
        metavar="N[,N...]",
        help="batches the stand-in batcher holds before it completes one (as the spool "
        "does while ClickHouse inserts); several: each read with each",
    )
    parser.add_argument(
        "--profile",
        default="",
        metavar="PREFIX",
        help="py-spy (in this venv) records each read's threads holding the GIL to "
        "PREFIX.<code>.<round>.txt (it slows the reads: not for the figures)",
    )
    parser.add_argument("--read", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--consumer", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    (read_once if args.read else compare)(args)


if __name__ == "__main__":
    main()
