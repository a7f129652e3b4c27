"""The brokers of benchmarks/bench_brokers.py: what a benchmark needs of each (a server of
its own, the stream filled, the daemon's source section, a plain consumer loop, what a
killed daemon held), one class per broker, and the scale run's producers."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from brokerharness import STREAM, SUBJECT, Daemon, plain_count, rows
from natsserver import NatsServer
from redisserver import RedisServer


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

    def reading(self, r: int, suffix: str = "") -> bool:
        """Whether the source of throughput round ``r`` began reading (its group or
        consumer is there; ``suffix``: after the consumer's name, for a source with
        other settings)."""
        raise NotImplementedError

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

    def reading(self, r: int, suffix: str = "") -> bool:
        if not self.client.exists(STREAM):
            return False
        names = {f"g{r}", f"g{r}".encode()}
        return any(g["name"] in names for g in self.client.xinfo_groups(STREAM))

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

    def reading(self, r: int, suffix: str = "") -> bool:
        async def work(client: Any) -> bool:
            import nats.js.errors

            try:
                await client.jetstream().consumer_info(STREAM, f"c{r}{suffix}")
            except nats.js.errors.NotFoundError:
                return False
            return True

        return self.server.run(work)

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
        return {
            "url": self.url,
            "stream": STREAM,
            "fetch_count": 5000,
            "ack_wait": args.ack_wait,
            "ack_policy": args.ack_policy,
        }

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
