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
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import clickhouse_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from natsserver import NatsServer
from redisserver import RedisServer

from chworkers.embedded import EmbeddedClickHouse

SCHEMA = "id UInt64, s String"
STREAM = "bench"
SUBJECT = f"{STREAM}.data"  # NATS: the stream takes bench.>


def rows(start: int, stop: int) -> bytes:
    return b"".join(b'{"id":%d,"s":"row %d"}\n' % (i, i) for i in range(start, stop))


def toml(
    state: Path, url: str, pipeline: dict[str, Any], section: tuple[str, dict[str, Any]] | None
) -> str:
    """A daemon's configuration; ``section``: the broker's ``[pipelines.<name>]``."""

    def value(v: Any) -> str:
        return (
            json.dumps(v)
            if isinstance(v, str | list)
            else repr(v).lower()
            if isinstance(v, bool)
            else repr(v)
        )

    lines = [
        f"state_dir = {json.dumps(str(state))}",
        "[clickhouse]",
        f"url = {json.dumps(url)}",
        "[supervisor]",
        "workers = 1",
        "[metrics]",
        "port = 0",
        "[http]",
        "port = 0",
        "[spool]",
        "retry_backoff_max = 1.0",
        "[[pipelines]]",
        *(f"{k} = {value(v)}" for k, v in pipeline.items()),
    ]
    if section is not None:
        name, options = section
        lines += [f"[pipelines.{name}]", *(f"{k} = {value(v)}" for k, v in options.items())]
    return "\n".join(lines) + "\n"


class Daemon:
    def __init__(self, workdir: Path, config: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config = workdir / "chworkers.toml"
        self.config.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def label(self) -> str:
        """Its consumer name (Redis) or its name in the manifests it writes (NATS)."""
        from chworkers.daemon.brokers.redisclient import default_consumer

        return default_consumer(str((self.workdir / "state").resolve()))

    def start(self) -> None:
        self.starts += 1
        log = open(self.workdir / f"daemon-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chworkers", "run", "-c", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        time.sleep(0.3)  # its workers see their parent gone and exit

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


def counts(ch: EmbeddedClickHouse, database: str, table: str) -> tuple[int, int]:
    client = clickhouse_connect.get_client(host=ch.host, port=ch.port, database=database)
    try:
        if not client.command(f"EXISTS TABLE {table}"):
            return 0, 0
        row = client.query(f"SELECT count(), uniqExact(id) FROM {table}").result_rows[0]
        return int(row[0]), int(row[1])
    finally:
        client.close()


def fresh_database(ch: EmbeddedClickHouse, name: str) -> str:
    client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
    client.command(f"DROP DATABASE IF EXISTS {name} SYNC")
    client.command(f"CREATE DATABASE {name}")
    client.command(
        f"CREATE TABLE {name}.ev ({SCHEMA}) ENGINE = MergeTree ORDER BY id "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    client.close()
    return name


def _proc_cpu() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


def tree_cpu(*roots: int) -> float:
    """CPU seconds used so far by the processes ``roots`` and everything below them."""
    table = _proc_cpu()
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table.get(pid, (0, 0.0))[1]
        todo += [child for child, (parent, _) in table.items() if parent == pid]
    return total


def threads_cpu(*roots: int) -> dict[str, float]:
    """CPU seconds so far of each thread of ``roots`` and their children, summed by
    ``pid/thread name``."""
    table = _proc_cpu()
    pids, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in pids:
            pids.add(pid)
            todo += [child for child, (parent, _) in table.items() if parent == pid]
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            name, rest = stat.split("(", 1)[1].rsplit(")", 1)
            fields = rest.split()
            key = f"{pid}/{name}"
            out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def thread_cpu(tid: int) -> float:
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Measured:
    """Rows/s from the first row in ClickHouse to the last (start-up, a second or more
    for a daemon, left out for every path alike), and the CPU seconds the path's
    processes used meanwhile: the reader's (the daemon and its workers, or the plain
    loop's thread) with the broker's, and ClickHouse's apart (its background merges come
    and go with timing). On a shared machine the wall-clock rate moves with everybody
    else's load; the CPU a row costs much less."""

    def __init__(self, rate: float, cpu: tuple[float, float], rows: int) -> None:
        self.rate, self.rows = rate, rows
        self.reader_cpu, self.clickhouse_cpu = cpu

    @property
    def reader_per_million(self) -> float:
        return self.reader_cpu / self.rows * 1e6

    @property
    def cpu_per_million(self) -> float:
        return (self.reader_cpu + self.clickhouse_cpu) / self.rows * 1e6


def wait_rows(
    ch: EmbeddedClickHouse,
    database: str,
    total: int,
    cpu: Any = None,
    timeout: float = 1800,
    on_first: Any = None,
) -> Measured:
    deadline = time.monotonic() + timeout
    first: float | None = None
    first_rows, first_cpu = 0, (0.0, 0.0)
    while (n := counts(ch, database, "ev")[0]) < total:
        if first is None and n > 0:
            first, first_rows = time.monotonic(), n
            first_cpu = cpu() if cpu is not None else (0.0, 0.0)
            if on_first is not None:
                on_first()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {counts(ch, database, 'ev')} of {total}")
        time.sleep(0.05)
    done = time.monotonic()
    last_cpu = cpu() if cpu is not None else (0.0, 0.0)
    used = (last_cpu[0] - first_cpu[0], last_cpu[1] - first_cpu[1])
    if first is None:  # all of it in one go
        return Measured(float("nan"), (float("nan"), float("nan")), total)
    return Measured((total - first_rows) / (done - first), used, total - first_rows)


PIPELINE: dict[str, Any] = {
    "table": "ev",
    "format": "JSONEachRow",
    "max_rows": 50_000,
    "max_delay": "500ms",
}


def plain_count(per: int) -> int:
    """Messages per read of a plain loop: one insert of ``max_rows``, as the daemons'."""
    return max(1, PIPELINE["max_rows"] // per)


# -- the brokers ------------------------------------------------------------------------------


class Broker:
    """What a benchmark needs of a broker; one subclass per broker."""

    name = ""
    pid: int  # the server's process, whose CPU counts with the reader's
    per = 1  # rows per message, set by fill()

    def stop(self) -> None: ...
    def restart(self) -> None:
        """kill -9 the server and start it again."""

    def fill(self, messages: int, per: int) -> None:
        """Put the messages in the stream before a throughput run."""

    def source(self, r: int) -> dict[str, Any]:
        """The daemon's ``[pipelines.<broker>]`` for throughput round ``r``."""
        raise NotImplementedError

    def plain(self, r: int, client: Any, total: int, ready: threading.Event) -> None:
        """The plain loop of round ``r``: read, insert with ``client``, acknowledge after
        the insert, until ``total`` rows are in; ``ready`` once it is set up."""

    def scale_source(self, args: argparse.Namespace) -> dict[str, Any]:
        raise NotImplementedError

    def held_by(self, daemon: Daemon) -> Any:
        """What the daemon holds not acknowledged (None or empty: nothing), read before
        it is killed."""

    def released(self, held: Any) -> bool:
        """Whether all of ``held`` is acknowledged now."""
        raise NotImplementedError

    def settled(self) -> bool:
        """Everything delivered and acknowledged."""
        raise NotImplementedError

    def commands(self, reset: bool = False) -> dict[str, tuple[int, float]]:
        """The server's calls and microseconds by command since the last reset (only
        Redis says)."""
        return {}


class Redis(Broker):
    name = "redis"

    def __init__(self, directory: Path) -> None:
        self.server = RedisServer(directory)
        self.server.start()
        self.client = self.server.client()
        assert self.server.proc is not None
        self.pid = self.server.proc.pid
        self.url = self.server.url

    def stop(self) -> None:
        self.client.close()
        self.server.stop()

    def restart(self) -> None:
        self.server.kill()
        time.sleep(1)
        self.server.start()
        self.client = self.server.client()

    def commands(self, reset: bool = False) -> dict[str, tuple[int, float]]:
        if reset:
            self.client.config_resetstat()
            return {}
        stats = self.client.info("commandstats")
        return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in stats.items()}

    def fill(self, messages: int, per: int) -> None:
        self.per = per
        pipe = self.client.pipeline(transaction=False)
        for m in range(messages):
            pipe.xadd(STREAM, {"data": rows(m * per, (m + 1) * per)})
            if len(pipe) >= 5000:
                pipe.execute()
        pipe.execute()

    def source(self, r: int) -> dict[str, Any]:
        return {"url": self.url, "stream": STREAM, "group": f"g{r}", "fetch_count": 10_000}

    def plain(self, r: int, client: Any, total: int, ready: threading.Event) -> None:
        redis = self.server.client()
        group = f"plain{r}"
        redis.xgroup_create(STREAM, group, "0")
        ready.set()
        inserted = 0
        while inserted < total:
            reply = redis.xreadgroup(
                group, "plain", {STREAM: ">"}, count=plain_count(self.per), block=1000
            )
            if not reply:
                continue
            entries = reply[0][1]
            payload = b"".join(fields[b"data"] for _id, fields in entries)
            client.raw_insert("ev", insert_block=payload, fmt="JSONEachRow")
            redis.xack(STREAM, group, *[entry_id for entry_id, _f in entries])
            inserted += payload.count(b"\n")
        redis.close()

    def scale_source(self, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "url": self.url,
            "stream": STREAM,
            "fetch_count": 5000,
            "claim_idle": args.claim_idle,
            "claim_interval": 1.0,
        }

    def held_by(self, daemon: Daemon) -> set[bytes]:
        entries = self.client.xpending_range(
            STREAM, "chworkers", "-", "+", count=1_000_000, consumername=daemon.label
        )
        return {e["message_id"] for e in entries}

    def released(self, held: set[bytes]) -> bool:
        def key(entry_id: bytes) -> tuple[int, int]:
            ms, _, seq = entry_id.partition(b"-")
            return int(ms), int(seq or 0)

        lo, hi = min(held, key=key), max(held, key=key)
        entries = self.client.xpending_range(
            STREAM, "chworkers", lo, hi, count=len(held) * 4 + 10_000
        )
        return not held & {e["message_id"] for e in entries}

    def settled(self) -> bool:
        """Nothing pending, and the last entry delivered (Redis's own lag can stay wrong
        after a restart: docs/brokers.md, "Measured")."""
        group = self.client.xinfo_groups(STREAM)[0]
        last = self.client.xinfo_stream(STREAM)["last-generated-id"]
        return bool(group["pending"] == 0 and group["last-delivered-id"] == last)


def redis_produce(url: str, messages: int, per: int) -> None:
    """The scale run's producer (a process of its own): explicit ids, so an XADD sent
    again after a Redis restart is refused, never doubled."""
    import redis as redis_py

    client = redis_py.Redis.from_url(url)
    done = 0
    while done < messages:
        chunk = range(done, min(messages, done + 2000))
        pipe = client.pipeline(transaction=False)
        for m in chunk:
            pipe.xadd(STREAM, {"data": rows(m * per, (m + 1) * per)}, id=f"{m + 1}-1")
        try:
            for reply in pipe.execute(raise_on_error=False):
                if isinstance(reply, Exception) and "equal or smaller" not in str(reply):
                    raise reply
            done = chunk.stop
        except redis_py.ConnectionError:
            time.sleep(0.5)  # redis-server restarting


class Nats(Broker):
    name = "nats"

    def __init__(self, directory: Path) -> None:
        self.server = NatsServer(directory)
        self.server.start()
        self.server.make_stream(STREAM)
        assert self.server.proc is not None
        self.pid = self.server.proc.pid
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.server.kill()
        time.sleep(1)
        self.server.start()

    def fill(self, messages: int, per: int) -> None:
        self.per = per
        asyncio.run(nats_produce(self.url, messages, per))

    def source(self, r: int) -> dict[str, Any]:
        return {"url": self.url, "stream": STREAM, "consumer": f"c{r}", "fetch_count": 10_000}

    def plain(self, r: int, client: Any, total: int, ready: threading.Event) -> None:
        async def work(nc: Any) -> None:
            from nats.js.api import AckPolicy, ConsumerConfig

            js = nc.jetstream()
            config = ConsumerConfig(
                durable_name=f"plain{r}", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1
            )
            await js.add_consumer(STREAM, config)
            pull = await js.pull_subscribe_bind(f"plain{r}", STREAM, pending_msgs_limit=-1)
            ready.set()
            inserted = 0
            while inserted < total:
                try:
                    messages = await pull.fetch(plain_count(self.per), timeout=1)
                except TimeoutError:
                    continue
                payload = b"".join(m.data for m in messages)
                client.raw_insert("ev", insert_block=payload, fmt="JSONEachRow")
                for m in messages:
                    await m.ack()
                inserted += payload.count(b"\n")
            await nc.flush()

        self.server.run(work)

    def scale_source(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"url": self.url, "stream": STREAM, "fetch_count": 5000, "ack_wait": args.ack_wait}

    def held_by(self, daemon: Daemon) -> int:
        """The highest stream sequence of the batches the daemon wrote manifests for whose
        messages are not all acknowledged yet (0: none): manifests of batches it had
        completed (the floor passed them) are not counted."""
        label = daemon.label

        async def work(client: Any) -> int:
            js = client.jetstream()
            floor = (await js.consumer_info(STREAM, "chworkers")).ack_floor.stream_seq
            entry = await (await js.key_value("chworkers")).get(f"{STREAM}.chworkers")
            batches = json.loads(entry.value)["batches"].values()
            ends = [b["seqs"][-1][1] for b in batches if b["by"] == label]
            return max((end for end in ends if end > floor), default=0)

        return self.server.run(work)

    def released(self, held: int) -> bool:
        async def work(client: Any) -> int:
            info = await client.jetstream().consumer_info(STREAM, "chworkers")
            return int(info.ack_floor.stream_seq)

        return self.server.run(work) >= held

    def settled(self) -> bool:
        return self.server.settled(STREAM)


async def nats_produce(url: str, messages: int, per: int) -> None:
    """Publish the messages through JetStream (each with a message id, so one published
    again after a server restart is dropped by the stream's duplicate window)."""
    import nats
    import nats.errors

    client = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    js = client.jetstream(timeout=30)
    done = 0
    while done < messages:
        chunk = range(done, min(messages, done + 1000))
        acks = [
            js.publish(SUBJECT, rows(m * per, (m + 1) * per), headers={"Nats-Msg-Id": str(m)})
            for m in chunk
        ]
        try:
            await asyncio.gather(*acks)
            done = chunk.stop
        except (nats.errors.Error, TimeoutError):
            await asyncio.sleep(0.5)  # nats-server restarting: publish the chunk again
    await client.close()


BROKERS: dict[str, Callable[[Path], Broker]] = {"redis": Redis, "nats": Nats}


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
    ch: EmbeddedClickHouse, tmp: Path, broker: Broker, total: int, r: int, profile: str = ""
) -> Measured:
    db = fresh_database(ch, f"bench_{broker.name}_{r}")
    pipeline = {"name": broker.name, "source": broker.name, **PIPELINE}
    work = tmp / f"{broker.name}-{r}"
    config = toml(work / "state", f"{ch.url}/{db}", pipeline, (broker.name, broker.source(r)))
    d = Daemon(work, config)
    d.start()
    assert d.proc is not None and ch.pid is not None
    daemon, server, clickhouse = d.proc.pid, broker.pid, ch.pid
    spies: list[subprocess.Popen[bytes]] = []
    before: dict[str, float] = {}

    def profile_from_now() -> None:
        """Steady state begins: per-thread CPU and the server's command times from now,
        and py-spy (in this venv, when installed) samples the daemon and its workers."""
        before.update(threads_cpu(daemon, server))
        broker.commands(reset=True)
        spy = Path(sys.executable).parent / "py-spy"
        if spy.exists():
            command = [str(spy), "record", "--pid", str(daemon), "--subprocesses", "--threads"]
            command += ["--format", "raw", "--rate", "250", "--output", f"{profile}.{r}.txt"]
            spies.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )

    measured = wait_rows(
        ch,
        db,
        total,
        lambda: (tree_cpu(daemon, server), tree_cpu(clickhouse)),
        on_first=profile_from_now if profile else None,
    )
    if profile:
        used = {k: v - before.get(k, 0.0) for k, v in threads_cpu(daemon, server).items()}
        print("CPU seconds per million rows by process/thread, from the first row to the last:")
        for name, cpu in sorted(used.items(), key=lambda kv: -kv[1]):
            if cpu > 0:
                print(f"  {name:<40} {cpu / measured.rows * 1e6:6.3f}")
        messages = measured.rows / broker.per
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
            source: lambda r: run_source(ch, tmp, broker, total, r, args.profile),
            "plain loop": lambda r: run_plain(ch, broker, total, r),
        }
        wanted = [p.strip() for p in args.paths.split(",")]
        names = {"file": "file source", "source": source, "plain": "plain loop"}
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
        help="throughput: which of file, source, plain to run (comma-separated)",
    )
    parser.add_argument(
        "--profile",
        default="",
        metavar="PREFIX",
        help="throughput: print the source's CPU per thread and the server's time per "
        "command at steady state; py-spy (if in this venv) records to PREFIX.<round>.txt",
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
