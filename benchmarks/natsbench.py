"""The NATS half of benchmarks/bench_brokers.py (``--broker nats``): the same runs as for
Redis, on a nats-server of its own (tests/natsserver.py, JetStream on a file store).

* ``throughput``: the same rows (a) from a file through the file source, (b) from the
  stream through the NATS source, (c) through a plain loop (nats-py fetch ->
  clickhouse-connect raw insert -> ack each message); rows/s from the first row in
  ClickHouse to the last, medians of interleaved rounds.
* ``scale``: several daemons on one stream's consumer, one killed -9 every few seconds
  and restarted at once, optionally nats-server killed -9 and restarted, or ClickHouse
  down for a while; rows sent, rows in ClickHouse, distinct ids, and how long after each
  kill the acknowledgement floor passed every batch the killed daemon had written a
  manifest for (its messages redelivered after ack_wait, rebuilt, acknowledged).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import clickhouse_connect
from bench_brokers import (
    PIPELINE,
    STREAM,
    Daemon,
    counts,
    fresh_database,
    rows,
    run_file,
    toml,
    wait_rows,
)
from natsserver import NatsServer

from chworkers.embedded import EmbeddedClickHouse

SUBJECT = f"{STREAM}.data"


def nats_toml(state: Path, url: str, pipeline: dict[str, Any], nats: dict[str, Any]) -> str:
    lines = ["[pipelines.nats]", *(f"{k} = {json.dumps(v)}" for k, v in nats.items())]
    return toml(state, url, pipeline, None) + "\n".join(lines) + "\n"


async def publish(url: str, messages: int, per: int, start: int = 0) -> None:
    """Publish messages ``start..messages`` (each with a message id, so that one published
    again after a server restart is dropped by the stream's duplicate window)."""
    import nats
    import nats.errors

    client = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    js = client.jetstream(timeout=30)
    done = start
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


def make_stream(server: NatsServer) -> None:
    async def work(client: Any) -> None:
        await client.jetstream().add_stream(name=STREAM, subjects=[f"{STREAM}.>"])

    server.run(work)


def run_nats(ch: EmbeddedClickHouse, tmp: Path, server: NatsServer, total: int, r: int) -> float:
    db = fresh_database(ch, f"bench_nats_{r}")
    pipeline = {"name": "nats", "source": "nats", **PIPELINE}
    nats = {"url": server.url, "stream": STREAM, "consumer": f"c{r}", "fetch_count": 10_000}
    work = tmp / f"nats-{r}"
    d = Daemon(work, nats_toml(work / "state", f"{ch.url}/{db}", pipeline, nats))
    d.start()
    rate = wait_rows(ch, db, total).rate
    d.stop()
    return rate


def run_plain(ch: EmbeddedClickHouse, server: NatsServer, total: int, r: int) -> float:
    """What a user writes by hand: pull, insert, acknowledge after the insert."""
    db = fresh_database(ch, f"bench_nplain_{r}")
    client = clickhouse_connect.get_client(host=ch.host, port=ch.port, database=db)
    result: list[float] = []
    watcher = threading.Thread(target=lambda: result.append(wait_rows(ch, db, total).rate))
    watcher.start()

    async def work(nc: Any) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig

        js = nc.jetstream()
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=f"plain{r}", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1
            ),
        )
        pull = await js.pull_subscribe_bind(f"plain{r}", STREAM, pending_msgs_limit=-1)
        inserted = 0
        while inserted < total:
            try:
                messages = await pull.fetch(10_000, timeout=1)
            except TimeoutError:
                continue
            payload = b"".join(m.data for m in messages)
            client.raw_insert("ev", insert_block=payload, fmt="JSONEachRow")
            for m in messages:
                await m.ack()
            inserted += payload.count(b"\n")
        await nc.flush()

    server.run(work)
    watcher.join()
    client.close()
    return result[0]


def throughput(args: argparse.Namespace, ch: EmbeddedClickHouse, tmp: Path) -> None:
    total = args.messages * args.rows_per_message
    server = NatsServer(tmp / "nats")
    server.start()
    try:
        make_stream(server)
        t0 = time.monotonic()
        asyncio.run(publish(server.url, args.messages, args.rows_per_message))
        print(
            f"produced {args.messages:,} messages ({total:,} rows) in {time.monotonic() - t0:.1f} s"
        )
        data = tmp / "rows.json"
        with open(data, "wb") as fh:
            for m in range(0, args.messages, 10_000):
                end = min(args.messages, m + 10_000)
                fh.write(rows(m * args.rows_per_message, end * args.rows_per_message))
        results: dict[str, list[float]] = {"file source": [], "nats source": [], "plain loop": []}
        for r in range(args.rounds):
            results["file source"].append(run_file(ch, tmp, total, data, r).rate)
            results["nats source"].append(run_nats(ch, tmp, server, total, r))
            results["plain loop"].append(run_plain(ch, server, total, r))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in results.items()))
        base = statistics.median(results["file source"])
        print(
            f"\n{total:,} rows, {args.rows_per_message} per message, medians of {args.rounds} rounds"
        )
        print(f"{'path':<14} {'rows/s':>10} {'vs file':>8}")
        for name, values in results.items():
            med = statistics.median(values)
            print(f"{name:<14} {med:>10,.0f} {med / base:>8.2f}")
    finally:
        server.stop()


def manifests_by(server: NatsServer, label: str) -> int:
    """The highest stream sequence of the batches ``label`` wrote manifests for and whose
    messages are not all acknowledged yet (0: none); the consumer's acknowledgement floor
    is read against it."""

    async def work(client: Any) -> int:
        js = client.jetstream()
        floor = (await js.consumer_info(STREAM, "chworkers")).ack_floor.stream_seq
        entry = await (await js.key_value("chworkers")).get(f"{STREAM}.chworkers")
        batches = json.loads(entry.value)["batches"].values()
        ends = [b["seqs"][-1][1] for b in batches if b["by"] == label]
        return max((end for end in ends if end > floor), default=0)

    return server.run(work)


def ack_floor(server: NatsServer) -> int:
    async def work(client: Any) -> int:
        info = await client.jetstream().consumer_info(STREAM, "chworkers")
        return int(info.ack_floor.stream_seq)

    return server.run(work)


def scale(args: argparse.Namespace, ch: EmbeddedClickHouse, tmp: Path) -> None:
    from chworkers.daemon.brokers.redisclient import default_consumer

    total = args.messages * args.rows_per_message
    server = NatsServer(tmp / "nats")
    server.start()
    make_stream(server)
    rng = random.Random(args.seed)
    db = fresh_database(ch, "bench_nscale")
    pipeline = {"name": "nats", "source": "nats", **PIPELINE, "max_rows": 20_000}
    nats = {"url": server.url, "stream": STREAM, "fetch_count": 5000, "ack_wait": args.ack_wait}
    daemons = [
        Daemon(tmp / f"d{i}", nats_toml(tmp / f"d{i}" / "state", f"{ch.url}/{db}", pipeline, nats))
        for i in range(args.daemons)
    ]
    watches: list[tuple[float, int]] = []  # a kill's time, the highest sequence it held
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
                str(Path(__file__).resolve().parent / "bench_brokers.py"),
                "produce",
                "--broker",
                "nats",
                "--url",
                server.url,
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
                    print("killing nats-server (-9) and starting it again")
                    server.kill()
                    time.sleep(1)
                    server.start()
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
                    label = default_consumer(str((victim.workdir / "state").resolve()))
                    held = manifests_by(server, label)
                    victim.kill9()
                    kills += 1
                    victim.start()
                    if held:
                        watches.append((now, held))
                    next_kill = now + args.kill_every
                floor = ack_floor(server) if watches else 0
                for watch in list(watches):
                    if floor >= watch[1]:
                        redelivery.append(time.monotonic() - watch[0])
                        watches.remove(watch)
            except Exception as exc:  # nats-server restarting under us
                print(f"(monitor: {type(exc).__name__}: {exc})")
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        while not server.settled(STREAM):
            time.sleep(0.2)
        n, distinct = counts(ch, db, "ev")
        print(
            f"\n{args.daemons} daemons, {args.messages:,} messages ({total:,} rows), "
            f"{kills} kill -9 (every {args.kill_every:g} s), ack_wait {args.ack_wait:g} s, "
            f"nats-server killed and restarted: {'yes' if args.broker_restart else 'no'}, "
            f"ClickHouse down for {args.clickhouse_outage:g} s"
        )
        verdict = "EXACT" if n == distinct == total else "MISMATCH"
        print(f"rows sent {total:,}, in ClickHouse {n:,}, distinct ids {distinct:,}: {verdict}")
        print(f"{total / elapsed:,.0f} rows/s over {elapsed:.1f} s (kills and restarts included)")
        if redelivery:
            print(
                f"a killed daemon's written batches all acknowledged after: median "
                f"{statistics.median(redelivery):.1f} s, max {max(redelivery):.1f} s "
                f"({len(redelivery)} kills that held batches)"
            )
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        for d in daemons:
            d.stop()
        server.stop()
