"""The broker sources measured (issue 13): throughput against the file source and a plain
consumer loop, and exact counts with several daemons, ``kill -9``, a broker restart and a
ClickHouse outage. ``--broker redis`` (the default) or ``--broker nats``: the same runs,
the same data, the same harness; what differs per broker is a small class below
(:class:`Redis`, :class:`Nats`).

Everything runs on this machine: a broker of its own (tests/redisserver.py with
``appendfsync always``, or tests/natsserver.py: JetStream on a file store), one embedded
ClickHouse, and ``chworkers run`` daemons as subprocesses. Each message holds
``--rows-per-message`` JSONEachRow rows with a unique id.

* ``throughput``: the same rows (a) from a file through the file source, (b) from the
  stream through the broker source, (c) through a plain loop (redis-py XREADGROUP, or
  nats-py fetch -> clickhouse-connect raw insert -> XACK / ack each message); rows/s from
  the first row in ClickHouse to the last (start-up left out), and the CPU seconds the
  path's processes used meanwhile, medians of interleaved ``--rounds``.
* ``scale``: ``--daemons`` daemons on one stream, ``--kill-every`` seconds one of them
  killed -9 and restarted at once (same state directory, so the same consumer name),
  ``--broker-restart`` kills the broker once mid-ingest, ``--clickhouse-outage S``
  stops ClickHouse for S seconds past half-way; rows sent, rows in ClickHouse,
  distinct ids, and how long after each kill what the killed daemon held was all
  acknowledged (Redis: its pending entries; NATS: the messages of every batch it had
  written a manifest for, by the consumer's acknowledgement floor).

Run: ``.venv/bin/python benchmarks/bench_brokers.py throughput --messages 1000000``
     ``.venv/bin/python benchmarks/bench_brokers.py throughput --broker nats --messages 100000 --rows-per-message 10``
     ``.venv/bin/python benchmarks/bench_brokers.py scale --messages 1000000 --daemons 3 --kill-every 5``
     ``.venv/bin/python benchmarks/bench_brokers.py scale --broker nats --messages 1000000 --kill-every 5``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import clickhouse_connect
from brokerharness import (
    PIPELINE,
    Daemon,
    Measured,
    counts,
    fresh_database,
    rows,
    thread_cpu,
    threads_cpu,
    toml,
    tree_cpu,
    wait_rows,
)
from brokerservers import BROKERS, Broker, nats_produce, redis_produce

from chworkers.embedded import EmbeddedClickHouse

# -- throughput -------------------------------------------------------------------------------


def run_file(ch: EmbeddedClickHouse, tmp: Path, total: int, data: Path, r: int) -> Measured:
    db = fresh_database(ch, f"bench_file_{r}")
    pipeline = {"name": "file", "source": "file", "paths": [str(data)], **PIPELINE}
    d = Daemon(
        tmp / f"file-{r}", toml(tmp / f"file-{r}" / "state", f"{ch.url}/{db}", pipeline, None)
    )
    d.start()
    assert d.proc is not None and ch.pid is not None
    daemon, clickhouse = d.proc.pid, ch.pid
    measured = wait_rows(ch, db, total, lambda: (tree_cpu(daemon), tree_cpu(clickhouse)))
    d.stop()
    return measured


def run_source(
    ch: EmbeddedClickHouse,
    tmp: Path,
    broker: Broker,
    total: int,
    r: int,
    profile: str = "",
    spy_too: bool = False,
    extra: dict[str, Any] | None = None,
) -> Measured:
    """``extra``: more of the source's settings (its consumer named apart)."""
    label = "_".join(f"{k}_{v}" for k, v in (extra or {}).items())
    db = fresh_database(
        ch, f"bench_{broker.name}_{label}_{r}" if label else f"bench_{broker.name}_{r}"
    )
    pipeline = {"name": broker.name, "source": broker.name, **PIPELINE}
    work = tmp / f"{broker.name}-{label}-{r}"
    options = broker.source(r)
    if extra:
        options = {**options, **extra, "consumer": f"{options['consumer']}-{label}"}
    config = toml(work / "state", f"{ch.url}/{db}", pipeline, (broker.name, options))
    d = Daemon(work, config)
    d.start()
    assert d.proc is not None and ch.pid is not None
    daemon, server, clickhouse = d.proc.pid, broker.pid, ch.pid
    spies: list[subprocess.Popen[bytes]] = []
    before: dict[str, float] = {}

    if profile:
        # The source's CPU from its first read (its group or consumer made) to the last
        # row, divided by all the rows: counted from the first row in ClickHouse (as the
        # rate is), the batches read ahead before it (up to max_batches) would be left out.
        deadline = time.monotonic() + 120
        while not broker.reading(r, f"-{label}" if label else ""):
            if time.monotonic() > deadline:
                raise SystemExit(f"the {broker.name} source did not start reading")
            time.sleep(0.01)
        before.update(threads_cpu(daemon, server))
        broker.commands(reset=True)

    def spy_from_now() -> None:
        """Steady state begins: py-spy (in this venv) samples the daemon and its workers,
        the threads holding the GIL."""
        spy = Path(sys.executable).parent / "py-spy"
        command = [str(spy), "record", "--pid", str(daemon), "--subprocesses", "--threads"]
        command += ["--gil", "--format", "raw", "--rate", "250"]
        command += ["--output", f"{profile}.{r}.txt"]
        spies.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    measured = wait_rows(
        ch,
        db,
        total,
        lambda: (tree_cpu(daemon, server), tree_cpu(clickhouse)),
        on_first=spy_from_now if profile and spy_too else None,
    )
    if profile:
        used = {k: v - before.get(k, 0.0) for k, v in threads_cpu(daemon, server).items()}
        print(
            "CPU seconds per million rows by process/thread, from the source's first read "
            "to the last row (a worker's start-up included):"
        )
        for name, cpu in sorted(used.items(), key=lambda kv: -kv[1]):
            if cpu > 0:
                print(f"  {name:<40} {cpu / total * 1e6:6.3f}")
        messages = total / broker.per
        commands = broker.commands()
        if commands:
            print(f"{broker.name} commands (wall time in the server, nested calls counted twice):")
        for name, (calls, usec) in sorted(commands.items(), key=lambda kv: -kv[1][1]):
            print(f"  {name:<24} {calls:>7} calls {usec / messages:7.3f} us per message")
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    d.stop()
    return measured


def run_plain(ch: EmbeddedClickHouse, broker: Broker, total: int, r: int) -> Measured:
    """What a user writes by hand: read, insert, acknowledge after the insert (in a
    thread of this process, whose CPU is counted with the broker's)."""
    db = fresh_database(ch, f"bench_plain_{broker.name}_{r}")
    assert ch.pid is not None
    server, clickhouse = broker.pid, ch.pid
    ready = threading.Event()
    loop_thread: list[int] = []
    loop_cpu: list[float] = []  # the loop's CPU seconds, once it ended

    def cpu() -> tuple[float, float]:
        try:
            own = thread_cpu(loop_thread[0])
        except FileNotFoundError:  # the loop ended
            own = loop_cpu[0]
        return tree_cpu(server) + own, tree_cpu(clickhouse)

    def loop() -> None:
        loop_thread.append(threading.get_native_id())
        client = clickhouse_connect.get_client(host=ch.host, port=ch.port, database=db)
        try:
            broker.plain(r, client, total, ready)
        finally:
            client.close()
            loop_cpu.append(time.thread_time())
            ready.set()

    worker = threading.Thread(target=loop)
    worker.start()
    ready.wait()
    measured = wait_rows(ch, db, total, cpu)
    worker.join()
    return measured


def throughput(args: argparse.Namespace, ch: EmbeddedClickHouse, tmp: Path) -> None:
    total = args.messages * args.rows_per_message
    broker = BROKERS[args.broker](tmp / args.broker)
    try:
        t0 = time.monotonic()
        broker.fill(args.messages, args.rows_per_message)
        print(
            f"produced {args.messages:,} messages ({total:,} rows) in {time.monotonic() - t0:.1f} s"
        )
        data = tmp / "rows.json"
        with open(data, "wb") as fh:
            for m in range(0, args.messages, 10_000):
                end = min(args.messages, m + 10_000)
                fh.write(rows(m * args.rows_per_message, end * args.rows_per_message))
        source = f"{broker.name} source"
        paths = {
            "file source": lambda r: run_file(ch, tmp, total, data, r),
            source: lambda r: run_source(ch, tmp, broker, total, r, args.profile, args.py_spy),
            "plain loop": lambda r: run_plain(ch, broker, total, r),
            # The NATS source with ack_policy = "all" (one +ACK per settled prefix).
            "ackall source": lambda r: run_source(
                ch, tmp, broker, total, r, args.profile, args.py_spy, {"ack_policy": "all"}
            ),
        }
        wanted = [p.strip() for p in args.paths.split(",")]
        names = {
            "file": "file source",
            "source": source,
            "ackall": "ackall source",
            "plain": "plain loop",
        }
        results: dict[str, list[Measured]] = {names[w]: [] for w in names if w in wanted}
        for r in range(args.rounds):
            for name in results:
                results[name].append(paths[name](r))
            print(
                f"round {r + 1} (load {os.getloadavg()[0]:.1f}): "
                + ", ".join(
                    f"{k} {v[-1].rate:,.0f} rows/s, {v[-1].reader_per_million:.2f} + "
                    f"{v[-1].cpu_per_million - v[-1].reader_per_million:.2f} cpu-s/M"
                    for k, v in results.items()
                ),
                flush=True,
            )
        rate = {k: statistics.median(m.rate for m in v) for k, v in results.items()}
        reader = {k: statistics.median(m.reader_per_million for m in v) for k, v in results.items()}
        cost = {k: statistics.median(m.cpu_per_million for m in v) for k, v in results.items()}
        print(
            f"\n{total:,} rows, {args.rows_per_message} per message, medians of {args.rounds} "
            "rounds. reader: CPU seconds per million rows of the reader (the daemon and its "
            f"workers, or the plain loop) and {broker.name}; all: with ClickHouse's; 2 cores: "
            "the rate all of them could reach with both cores to themselves (2 / all)"
        )
        print(
            f"{'path':<14} {'rows/s':>10} {'vs file':>8} {'reader':>7} {'all':>6} "
            f"{'2 cores':>10} {'vs file':>8}"
        )
        base = "file source" if "file source" in results else next(iter(results))
        for name in results:
            capacity = 2e6 / cost[name]
            print(
                f"{name:<14} {rate[name]:>10,.0f} {rate[name] / rate[base]:>8.2f} "
                f"{reader[name]:>7.2f} {cost[name]:>6.2f} {capacity:>10,.0f} "
                f"{cost[base] / cost[name]:>8.2f}"
            )
    finally:
        broker.stop()


# -- scale ------------------------------------------------------------------------------------


def scale(args: argparse.Namespace, ch: EmbeddedClickHouse, tmp: Path) -> None:
    total = args.messages * args.rows_per_message
    broker = BROKERS[args.broker](tmp / args.broker)
    rng = random.Random(args.seed)
    db = fresh_database(ch, f"bench_scale_{broker.name}")
    pipeline = {"name": broker.name, "source": broker.name, **PIPELINE, "max_rows": 20_000}
    section = (broker.name, broker.scale_source(args))
    daemons = [
        Daemon(tmp / f"d{i}", toml(tmp / f"d{i}" / "state", f"{ch.url}/{db}", pipeline, section))
        for i in range(args.daemons)
    ]
    watches: list[tuple[float, Any]] = []  # a kill's time, what the killed daemon held
    redelivery: list[float] = []
    kills = 0
    producer = None
    try:
        for d in daemons:
            d.start()
        started = time.monotonic()
        producer = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "produce",
                "--broker",
                broker.name,
                "--url",
                broker.url,
                "--messages",
                str(args.messages),
                "--rows-per-message",
                str(args.rows_per_message),
            ]
        )
        next_kill = started + args.kill_every if args.kill_every else float("inf")
        restarted = not args.broker_restart
        outage_done = not args.clickhouse_outage
        while True:
            now = time.monotonic()
            inserted = counts(ch, db, "ev")[0]
            if inserted >= total and producer.poll() is not None:
                break
            if now - started > 3600:
                raise SystemExit(f"timed out with {inserted:,} of {total:,} rows")
            try:
                if not restarted and inserted > total // 3:
                    print(f"killing the {broker.name} server (-9) and starting it again")
                    broker.restart()
                    restarted = True
                if not outage_done and inserted > total // 2:
                    print(f"ClickHouse down for {args.clickhouse_outage:g} s")
                    ch.kill()
                    time.sleep(args.clickhouse_outage)
                    ch.start()
                    outage_done = True
                    continue
                if now >= next_kill and inserted < total * 0.9:
                    victim = daemons[rng.randrange(len(daemons))]
                    held = broker.held_by(victim)
                    victim.kill9()
                    kills += 1
                    victim.start()
                    if held:
                        watches.append((now, held))
                    next_kill = now + args.kill_every
                for watch in list(watches):
                    if broker.released(watch[1]):
                        redelivery.append(time.monotonic() - watch[0])
                        watches.remove(watch)
            except Exception as exc:  # the broker restarting under us
                print(f"(monitor: {type(exc).__name__}: {exc})")
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        while not broker.settled():
            time.sleep(0.2)
        n, distinct = counts(ch, db, "ev")
        print(
            f"\n{args.daemons} daemons, {args.messages:,} messages ({total:,} rows), "
            f"{kills} kill -9 (every {args.kill_every:g} s), "
            f"{broker.name} server killed and restarted: {'yes' if args.broker_restart else 'no'}, "
            f"ClickHouse down for {args.clickhouse_outage:g} s, load {os.getloadavg()[0]:.1f}"
        )
        verdict = "EXACT" if n == distinct == total else "MISMATCH"
        print(f"rows sent {total:,}, in ClickHouse {n:,}, distinct ids {distinct:,}: {verdict}")
        print(f"{total / elapsed:,.0f} rows/s over {elapsed:.1f} s (kills and restarts included)")
        if redelivery:
            print(
                f"what a killed daemon held all acknowledged after: median "
                f"{statistics.median(redelivery):.1f} s, max {max(redelivery):.1f} s "
                f"({len(redelivery)} of {kills} kills held something; "
                f"{len(watches)} never released)"
            )
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        for d in daemons:
            d.stop()
        broker.stop()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up the servers too
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["throughput", "scale", "produce"])
    parser.add_argument("--broker", choices=sorted(BROKERS), default="redis")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rows-per-message", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=0.0)
    parser.add_argument("--claim-idle", type=float, default=5.0, help="redis: claim_idle")
    parser.add_argument("--ack-wait", type=float, default=5.0, help="nats: ack_wait")
    parser.add_argument(
        "--ack-policy",
        choices=("explicit", "all"),
        default="explicit",
        help="nats scale: ack_policy",
    )
    parser.add_argument(
        "--broker-restart",
        "--redis-restart",
        action="store_true",
        help="kill -9 the broker's server once, a third of the way in",
    )
    parser.add_argument("--clickhouse-outage", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--url", default="", help="produce: the broker's URL")
    parser.add_argument(
        "--paths",
        default="file,source,plain",
        help="throughput: which of file, source, plain, ackall (nats: the source with "
        "ack_policy = all) to run (comma-separated)",
    )
    parser.add_argument(
        "--profile",
        default="",
        metavar="PREFIX",
        help="throughput: print the source's CPU per thread and the server's time per "
        "command at steady state",
    )
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="with --profile: py-spy (in this venv) records the daemon's threads holding the "
        "GIL to PREFIX.<round>.txt (it slows the daemon: not for the figures)",
    )
    args = parser.parse_args()
    if args.mode == "produce":  # the scale run's producer, in a process of its own
        if args.broker == "nats":
            asyncio.run(nats_produce(args.url, args.messages, args.rows_per_message))
        else:
            redis_produce(args.url, args.messages, args.rows_per_message)
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmpdir:
        tmp = Path(tmpdir)
        with EmbeddedClickHouse(tmp / "ch") as ch:
            (throughput if args.mode == "throughput" else scale)(args, ch, tmp)


if __name__ == "__main__":
    main()
