"""``ack_policy = "all"`` (natsprefix.py): one ``+ACK`` for a settled prefix of the
stream, against a real nats-server and the embedded ClickHouse: exact counts with two
daemons, poison and empty messages settled (never terminated: a ``+TERM`` would
acknowledge every message before it), sequences never delivered (deleted, outside the
filter) passed over; and the prefix itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from brokerfeeds import bodies
from daemonthread import Running, count, daemon_config
from natsserver import NatsServer
from test_nats_source import dead_letters, nats_pipeline
from waiting import wait_for

from chworkers.daemon.brokers.natsclient import consumer_ready
from chworkers.daemon.brokers.natsmanifests import Manifest, Registry
from chworkers.daemon.brokers.natsprefix import settled_prefix
from chworkers.daemon.brokers.options import NatsSourceSettings
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import BrokerError

pytestmark = pytest.mark.timeout(300)


def registry(*manifests: tuple[list[list[int]], bool, list[str]]) -> Registry:
    return Registry(
        {
            str(n): Manifest(str(n), ranges, done=done, acks=acks)
            for n, (ranges, done, acks) in enumerate(manifests)
        },
        1,
    )


def test_the_prefix_stops_at_the_first_message_not_settled() -> None:
    value = registry(
        ([[1, 10]], True, ["a10"]),
        ([[11, 20]], False, ["a20"]),  # in flight: not settled
        ([[21, 30]], True, ["a30"]),
    )
    prefix = settled_prefix(value, 0, [], {})
    assert (prefix.top, prefix.seq, prefix.reply, prefix.gap) == (10, 10, "a10", 0)
    value.manifests["1"].done = True
    prefix = settled_prefix(value, 0, [], {})
    assert (prefix.top, prefix.seq, prefix.reply) == (30, 30, "a30")
    # Under the floor: acknowledged already; nothing to send past it.
    assert settled_prefix(value, 30, [], {}).seq == 0


def test_a_gap_is_reported_and_skips_close_it() -> None:
    value = registry(([[1, 10]], True, ["a10"]), ([[15, 20]], True, ["a20"]))
    prefix = settled_prefix(value, 0, [], {})
    assert (prefix.top, prefix.gap, prefix.gap_end) == (10, 11, 14)
    prefix = settled_prefix(value, 0, [[11, 14]], {})
    assert (prefix.top, prefix.seq, prefix.reply, prefix.gap) == (20, 20, "a20", 0)


def test_an_end_without_a_subject_falls_back_to_a_lower_one_or_a_fresh_one() -> None:
    value = registry(([[1, 10]], True, ["a10"]), ([[11, 20]], True, [""]))
    prefix = settled_prefix(value, 0, [], {})
    assert (prefix.top, prefix.seq, prefix.reply) == (20, 10, "a10")
    prefix = settled_prefix(value, 0, [], {17: "fresh17", 25: "beyond"})
    assert (prefix.seq, prefix.reply) == (17, "fresh17")
    # A redelivered message's subject is preferred at the same sequence (newer delivery).
    assert settled_prefix(value, 0, [], {10: "fresh10"}).reply in ("fresh10", "a10")


def all_pipeline(server: NatsServer, **nats: Any) -> dict[str, Any]:
    return nats_pipeline(server, ack_policy="all", **nats)


def test_two_daemons_acknowledge_a_settled_prefix_exactly_once(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, nats_server: NatsServer
) -> None:
    url = f"{endpoint.url}/{database}"
    nats_server.make_stream()
    nats_server.publish(bodies(0, 10_000, 25))
    daemons = [Running(daemon_config(tmp_path / n, url, all_pipeline(nats_server))) for n in "ab"]
    try:
        nats_server.publish(bodies(10_000, 20_000, 25))
        wait_for(lambda: count(endpoint, database)[0] >= 20_000, 120, interval=0.2, what="rows")
        wait_for(nats_server.settled, 60, interval=0.2, what="all messages acked")
        taken = [d.daemon.intake.brokers["p"].rows for d in daemons]
    finally:
        for d in daemons:
            d.stop()
    assert count(endpoint, database) == (20_000, 20_000)
    assert all(taken), taken


def test_poison_and_empty_messages_are_settled_not_terminated(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, nats_server: NatsServer
) -> None:
    nats_server.make_stream()
    nats_server.publish(bodies(0, 100, 10))
    nats_server.publish([b'{"n":"not a number","s":"bad"}', b""])
    nats_server.publish(bodies(101, 200, 10))
    state = tmp_path / "state"
    daemon = Running(daemon_config(state, f"{endpoint.url}/{database}", all_pipeline(nats_server)))
    try:
        wait_for(nats_server.settled, 60, interval=0.2, what="all messages acked")
    finally:
        daemon.stop()
    assert count(endpoint, database) == (199, 199)
    reasons = sorted((x["reason"], x["record"]) for x in dead_letters(state))
    assert reasons == [("rejected", '{"n":"not a number","s":"bad"}')], reasons


def test_sequences_never_delivered_are_passed_over(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, nats_server: NatsServer
) -> None:
    """Messages deleted from the stream, and others outside the consumer's filter, leave
    gaps in the sequences no manifest covers: asked of the stream, not waited for."""
    nats_server.make_stream()
    nats_server.publish(bodies(0, 50, 10))
    nats_server.publish(bodies(1000, 1030, 10), subject="ev.other")  # outside the filter
    nats_server.publish(bodies(50, 100, 10))

    async def delete(client: Any) -> None:
        await client.jetstream().delete_msg("ev", 3)  # an interior delete

    nats_server.run(delete)
    state = tmp_path / "state"
    pipeline = all_pipeline(nats_server, filter_subject="ev.data")
    daemon = Running(daemon_config(state, f"{endpoint.url}/{database}", pipeline))
    try:
        wait_for(nats_server.settled, 60, interval=0.2, what="all messages acked")
    finally:
        daemon.stop()
    assert count(endpoint, database) == (90, 90)  # 10 messages of 10 rows, less the deleted


def test_a_consumer_made_with_the_other_policy_is_a_clear_error(nats_server: NatsServer) -> None:
    nats_server.make_stream()

    async def work(client: Any) -> None:
        js = client.jetstream()
        await consumer_ready(js, NatsSourceSettings(url=nats_server.url, stream="ev"), "p")
        changed = NatsSourceSettings(url=nats_server.url, stream="ev", ack_policy="all")
        with pytest.raises(BrokerError, match=r"another acknowledgement policy.*new consumer"):
            await consumer_ready(js, changed, "p")

    nats_server.run(work)
