"""What nats-server itself costs per message on the NATS source's road, by setting
(docs/brokers.md, "What nats-server costs"): the stream's storage (file or memory), the
consumer's acknowledgement policy (explicit, as the source needs; none, for
comparison), and the producer's message-id header.

For each variant: a fresh nats-server (JetStream, its store in a temporary
directory), ``--messages`` messages of ``--rows-per-message`` JSON lines published,
then read through a durable pull consumer by the source's own wire
(:class:`~chworkers.daemon.brokers.natsconsumer.Consumer`: pulls of ``--pull``
messages, one acknowledgement each on a second connection, as the daemon sends
them). Printed: nats-server's CPU microseconds per message while the messages are read
(the publishing left out), and the reader's, medians of ``--rounds`` interleaved rounds.

Run: ``.venv/bin/python benchmarks/bench_nats_server.py --messages 100000``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from brokerharness import rows, tree_cpu
from debpackages import free_port
from goprofile import top
from natsserver import NatsServer

from chworkers.daemon.brokers.natsclient import connect
from chworkers.daemon.brokers.natsconsumer import Consumer
from chworkers.daemon.brokers.natslink import ACK
from chworkers.daemon.brokers.options import NatsSourceSettings

#: (name, stream storage, acknowledgements: explicit, memory (explicit, the consumer's
#: state in memory), none, all (AckAll: the last message of each pull acknowledged,
#: which acknowledges every message before it) or empty (explicit, each acknowledgement
#: an empty message instead of ``+ACK``), the producer's Nats-Msg-Id header)
VARIANTS = [
    ("file store, explicit acks, msg-id header (the benchmark's)", "file", "explicit", True),
    ("file store, explicit acks, no header", "file", "explicit", False),
    ("memory store, explicit acks, msg-id header", "memory", "explicit", True),
    (
        "file store, explicit acks, consumer state in memory (lost on restart)",
        "file",
        "memory",
        True,
    ),
    ("file store, no acks (AckNone: loses what a crash held)", "file", "none", True),
    ("file store, AckAll: one ack per pull (unsafe with several daemons)", "file", "all", True),
    ("file store, explicit acks with an empty payload", "file", "empty", True),
]


async def publish(url: str, messages: int, per: int, header: bool) -> None:
    import nats

    client = await nats.connect(url)
    js = client.jetstream(timeout=30)
    for start in range(0, messages, 1000):
        await asyncio.gather(
            *(
                js.publish(
                    "bench.data",
                    rows(m * per, (m + 1) * per),
                    headers={"Nats-Msg-Id": str(m)} if header else None,
                )
                for m in range(start, min(messages, start + 1000))
            )
        )
    await client.close()


async def read(
    url: str, messages: int, policy: str, pull: int, pid: int, profile: tuple[int, float]
) -> tuple[float, float]:
    """Read every message (acknowledging each, unless ``policy`` is none; ``memory``:
    the consumer keeps its state in memory; ``all``: only each pull's last message,
    with AckAll; ``empty``: each with an empty payload): nats-server's and this thread's
    CPU seconds meanwhile."""
    from nats.js.api import AckPolicy, ConsumerConfig

    options = NatsSourceSettings(url=url, stream="bench")
    client = await connect(options, "bench", name="bench")
    acks = await connect(options, "bench", name="bench acks")
    js = client.jetstream()
    ack = policy != "none"
    kind = {"none": AckPolicy.NONE, "all": AckPolicy.ALL}.get(policy, AckPolicy.EXPLICIT)
    config = ConsumerConfig(
        durable_name="c",
        ack_policy=kind,
        max_ack_pending=-1,
        mem_storage=True if policy == "memory" else None,
    )
    await js.add_consumer("bench", config)
    consumer = Consumer(client, js, "bench", "c", 30.0, acks)
    await consumer.start()
    server, own = tree_cpu(pid), time.thread_time()
    profiling = threading.Thread(target=print_profile, args=profile, daemon=True)
    if profile[0]:  # nats-server's own profile of the reading (printed once it ends)
        profiling.start()
    got = 0
    while got < messages:
        runs = await consumer.pull(pull, 1.0)
        for replies, _payloads, _sent, _seqs in runs:
            got += len(replies)
            if policy == "all":
                continue
            if ack:
                await consumer.send(replies, b"" if policy == "empty" else ACK)
        if policy == "all" and runs:
            await consumer.send([runs[-1][0][-1]], ACK)
    await acks.flush()
    used = tree_cpu(pid) - server, time.thread_time() - own
    if profile[0]:
        profiling.join()
    await consumer.close()
    return used


def print_profile(port: int, seconds: float) -> None:
    url = f"http://127.0.0.1:{port}/debug/pprof/profile?seconds={seconds:g}"
    with urllib.request.urlopen(url, timeout=seconds + 30) as answer:
        report = top(answer.read())
    print(f"nats-server's profile of {seconds:g} s of the reading:\n{report}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rows-per-message", type=int, default=10)
    parser.add_argument("--pull", type=int, default=5000, help="messages per pull")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--gogc",
        default="",
        help="nats-server's GOGC (Go's garbage collector: collect when the heap grew by "
        "this percentage; 100 by default), for every variant",
    )
    parser.add_argument(
        "--variants", default="", help="which variants, by number from 1 (default: all)"
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="print nats-server's CPU profile of the first SECONDS of each reading "
        "(its --profile port; give it messages enough to last that long)",
    )
    args = parser.parse_args()
    if args.gogc:
        os.environ["GOGC"] = args.gogc  # the servers' processes inherit it
    wanted = {int(v) for v in args.variants.split(",") if v.strip()}
    variants = [v for n, v in enumerate(VARIANTS, 1) if not wanted or n in wanted]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in variants}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for r in range(args.rounds):
            for name, storage, policy, header in variants:
                port = free_port() if args.profile else 0
                server = NatsServer(
                    Path(tmp) / f"{r}-{storage}-{policy}-{header}",
                    options=("--profile", str(port)) if port else (),
                )
                server.start()
                try:

                    async def make(client: object, storage: str = storage) -> None:
                        from nats.js.api import StorageType

                        kind = StorageType.FILE if storage == "file" else StorageType.MEMORY
                        js = client.jetstream()  # type: ignore[attr-defined]
                        await js.add_stream(name="bench", subjects=["bench.>"], storage=kind)

                    server.run(make)
                    asyncio.run(publish(server.url, args.messages, args.rows_per_message, header))
                    assert server.proc is not None
                    used = asyncio.run(
                        read(
                            server.url,
                            args.messages,
                            policy,
                            args.pull,
                            server.proc.pid,
                            (port, args.profile),
                        )
                    )
                finally:
                    server.stop()
                results[name].append(used)
                print(
                    f"round {r + 1} (load {os.getloadavg()[0]:.1f}) {name}: nats-server "
                    f"{used[0] / args.messages * 1e6:.2f} us/message, reader "
                    f"{used[1] / args.messages * 1e6:.2f}",
                    flush=True,
                )
    print(
        f"\n{args.messages:,} messages of {args.rows_per_message} rows, pulls of {args.pull}, "
        f"medians of {args.rounds} rounds: CPU microseconds per message while reading"
    )
    print(f"{'variant':<72} {'nats-server':>11} {'reader':>7}")
    for name, used in results.items():
        server_us = statistics.median(u[0] for u in used) / args.messages * 1e6
        reader_us = statistics.median(u[1] for u in used) / args.messages * 1e6
        print(f"{name:<72} {server_us:>11.2f} {reader_us:>7.2f}")


if __name__ == "__main__":
    main()
