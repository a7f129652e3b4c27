"""``source = "nats"`` against a real nats-server with JetStream (tests/natsserver.py)
and the embedded ClickHouse: exact counts with two daemons on one stream, poison
dead-lettered and terminated, the manifests' rules (docs/brokers.md), credentials and
``chworkers check``."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from brokerfeeds import bodies
from chclients import make_client
from clirun import run_chworkers
from daemonthread import Running, count, daemon_config
from natsserver import NatsServer, NatsUnavailable, make_certificates
from waiting import wait_for

from chworkers.clickhouse.dedup import broker_token
from chworkers.daemon import config
from chworkers.daemon.brokers.natsclient import describe, display_url
from chworkers.daemon.brokers.natsmanifests import Manifest, Registry, to_ranges
from chworkers.daemon.brokers.natsstream import delivery
from chworkers.daemon.brokers.options import NatsSourceSettings
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import BrokerError, ConfigError

pytestmark = pytest.mark.timeout(300)


def nats_pipeline(server: NatsServer, **nats: Any) -> dict[str, Any]:
    options = {"url": server.url, "stream": "ev", "ack_wait": 2.0}
    return {"source": "nats", "max_rows": 2000, "max_delay": 0.2, "nats": {**options, **nats}}


def dead_letters(state: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in (state / "dead-letter").rglob("*.jsonl")
        for line in path.read_text().splitlines()
    ]


def test_two_daemons_share_a_stream_exactly_once(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, nats_server: NatsServer
) -> None:
    url = f"{endpoint.url}/{database}"
    nats_server.make_stream()
    nats_server.publish(bodies(0, 10_000, 25))
    daemons = [
        Running(daemon_config(tmp_path / name, url, nats_pipeline(nats_server)))
        for name in ("a", "b")
    ]
    try:
        nats_server.publish(bodies(10_000, 20_000, 25))
        wait_for(lambda: count(endpoint, database)[0] >= 20_000, 120, interval=0.2, what="rows")
        wait_for(nats_server.settled, 60, interval=0.2, what="all messages acked")
        taken = [d.daemon.intake.brokers["p"].rows for d in daemons]
    finally:
        for d in daemons:
            d.stop()
    assert count(endpoint, database) == (20_000, 20_000)
    # Which daemon pulls what is the server's choice: one may take all when the other
    # starts late under load (CI saw [20000, 0]); the count above is what must hold.
    assert sum(taken) == 20_000, taken


def test_poison_is_dead_lettered_and_terminated(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, nats_server: NatsServer
) -> None:
    nats_server.make_stream()
    nats_server.publish(bodies(0, 100, 10))
    nats_server.publish(
        [
            b'{"n":"not a number","s":"bad"}',  # ClickHouse rejects it
            b"",  # nothing at all: acknowledged with its batch
        ]
    )
    nats_server.publish(bodies(101, 200, 10))
    state = tmp_path / "state"
    daemon = Running(daemon_config(state, f"{endpoint.url}/{database}", nats_pipeline(nats_server)))
    try:
        wait_for(nats_server.settled, 60, interval=0.2, what="all messages acked")
    finally:
        daemon.stop()
    assert count(endpoint, database) == (199, 199)
    reasons = sorted((x["reason"], x["record"]) for x in dead_letters(state))
    assert reasons == [("rejected", '{"n":"not a number","s":"bad"}')], reasons


def test_a_record_over_the_limit_is_poison_terminated_at_once(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, nats_server: NatsServer
) -> None:
    nats_server.make_stream()
    nats_server.publish([b'1,"an unclosed quote\n', b"2,fine\n"])
    state = tmp_path / "state"
    pipeline = nats_pipeline(nats_server)
    pipeline.update(format="CSV", create="n UInt64, s String", table="csvt")
    daemon = Running(daemon_config(state, f"{endpoint.url}/{database}", pipeline))
    try:
        wait_for(nats_server.settled, 60, interval=0.2, what="all messages acked")
        redelivered = daemon.daemon.metrics.broker_redeliveries.labels(pipeline="p")._value.get()
    finally:
        daemon.stop()
    letters = dead_letters(state)
    assert [x["reason"] for x in letters] == ["poison"], letters
    assert "ends inside a record" in letters[0]["error"]["message"]
    assert redelivered == 0  # terminated: JetStream never offered it again


@pytest.mark.parametrize("policy", ["explicit", "all"])
def test_a_message_delivered_too_often_is_dead_lettered_and_terminated(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    nats_server: NatsServer,
    policy: str,
) -> None:
    """(With ack_policy = "all": dead-lettered and settled, acknowledged with the
    prefix.)"""
    nats_server.make_stream()
    nats_server.publish(bodies(0, 10, 10))  # the doomed message, alone in the stream for now

    async def crashing(client: Any) -> None:
        """As if daemons had died on the first message 20 times."""
        from nats.js.api import AckPolicy, ConsumerConfig

        js = client.jetstream()
        acks = AckPolicy.ALL if policy == "all" else AckPolicy.EXPLICIT
        config = ConsumerConfig(durable_name="chworkers", ack_policy=acks)
        await js.add_consumer("ev", config)
        pull = await js.pull_subscribe_bind("chworkers", "ev")
        for _ in range(20):
            message = (await pull.fetch(1, timeout=5))[0]
            assert delivery(message.reply)[0] == 1
            await message.nak()

    nats_server.run(crashing)
    nats_server.publish(bodies(10, 30, 10))
    state = tmp_path / "state"
    pipeline = nats_pipeline(nats_server, max_deliver=10, ack_policy=policy)
    daemon = Running(daemon_config(state, f"{endpoint.url}/{database}", pipeline))
    try:
        wait_for(nats_server.settled, 60, interval=0.2, what="all messages acked")
    finally:
        daemon.stop()
    assert count(endpoint, database) == (20, 20)  # the other two messages
    letters = dead_letters(state)
    assert len(letters) == 1 and letters[0]["reason"] == "poison", letters  # the message, whole
    assert letters[0]["record"].count("\n") == 9  # its ten records
    assert "delivered 21 times (max_deliver = 10)" in letters[0]["error"]["message"]


def test_a_manifest_left_by_a_dead_daemon_is_rebuilt_with_its_token(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, nats_server: NatsServer
) -> None:
    """A daemon pulled messages, wrote their manifest, inserted, and died before its
    acknowledgements: the messages are redelivered to the next daemon, which inserts
    exactly that batch with that token (ClickHouse drops it) and acknowledges them."""
    nats_server.make_stream()
    nats_server.publish(bodies(0, 300, 100))

    async def dead_daemon(client: Any) -> list[tuple[int, bytes]]:
        from nats.js.api import AckPolicy, ConsumerConfig

        js = client.jetstream()
        await js.add_consumer(
            "ev",
            ConsumerConfig(durable_name="chworkers", ack_policy=AckPolicy.EXPLICIT, ack_wait=1.0),
        )
        pull = await js.pull_subscribe_bind("chworkers", "ev")
        messages = (await pull.fetch(2, timeout=5))[:2]
        taken = [(delivery(m.reply)[0], m.data) for m in messages]
        seqs = [seq for seq, _ in taken]
        token = broker_token("nats", "ev", "chworkers", [str(s) for s in seqs])
        registry = Registry(
            {token: Manifest(token, to_ranges(seqs), created=1e10, by="dead")}, revision=0
        )
        kv = await js.create_key_value(bucket="chworkers", history=1)
        await kv.create("ev.chworkers", registry.encode())
        return taken

    taken = nats_server.run(dead_daemon)
    seqs = [seq for seq, _ in taken]
    token = broker_token("nats", "ev", "chworkers", [str(s) for s in seqs])
    ch = make_client(endpoint, database=database)
    try:
        ch.command(
            "CREATE TABLE ev (n UInt64, s String) ENGINE = MergeTree ORDER BY n "
            "SETTINGS non_replicated_deduplication_window = 1000"
        )
        ch.raw_insert(
            "ev",
            insert_block=b"".join(data for _, data in taken),
            fmt="JSONEachRow",
            settings={"insert_deduplication_token": token},
        )
        assert ch.command("SELECT count() FROM ev") == 200
    finally:
        ch.close()
    url = f"{endpoint.url}/{database}"
    daemon = Running(daemon_config(tmp_path / "state", url, nats_pipeline(nats_server)))
    try:
        wait_for(nats_server.settled, 60, interval=0.2, what="all messages acked")
    finally:
        daemon.stop()
    assert count(endpoint, database) == (300, 300)


@pytest.mark.parametrize("policy", ["explicit", "all"])
def test_nats_restarted_mid_ingest_degrades_health_and_loses_nothing(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    nats_server: NatsServer,
    policy: str,
) -> None:
    nats_server.make_stream()
    url = f"{endpoint.url}/{database}"
    pipeline = nats_pipeline(nats_server, ack_policy=policy)
    daemon = Running(daemon_config(tmp_path / "state", url, pipeline))

    def nats_problems() -> list[str]:
        report = daemon.daemon.health()
        return [p.reason for p in report.problems if p.component == "source p"]

    try:
        nats_server.publish(bodies(0, 5000, 50))
        nats_server.kill()  # SIGKILL mid-ingest: JetStream keeps what it had written
        wait_for(lambda: bool(nats_problems()), 30, interval=0.2, what="a degraded source")
        assert "nats nats://127.0.0.1" in nats_problems()[0]
        nats_server.start()
        nats_server.publish(bodies(5000, 10_000, 50))
        wait_for(nats_server.settled, 90, interval=0.2, what="all messages acked")
        wait_for(lambda: not nats_problems(), 30, interval=0.2, what="the source healthy")
    finally:
        daemon.stop()
    assert count(endpoint, database) == (10_000, 10_000)


@pytest.mark.parametrize("policy", ["explicit", "all"])
def test_a_live_daemon_keeps_its_messages_while_clickhouse_is_down(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    fault_proxy: Any,
    nats_server: NatsServer,
    policy: str,
) -> None:
    """In-progress notes every ack_wait / 4: JetStream redelivers nothing of a daemon that
    waits for ClickHouse, however long (no delivery counted towards max_deliver).

    ack_wait is 2 s, held for twice that: a note comes 0.25-0.33 s after the last at
    ack_wait 1 s and load 13, so a daemon whose threads stalled 0.7 s (load 25-30, the
    daemon in the test's process) had messages redelivered; 1.4 s now."""
    nats_server.make_stream()
    url = f"{fault_proxy.url}/{database}"
    pipeline = nats_pipeline(nats_server, ack_wait=2.0, ack_policy=policy)
    daemon = Running(daemon_config(tmp_path / "state", url, pipeline))
    try:
        fault_proxy.set("refuse")
        nats_server.publish(bodies(0, 1000, 10))
        wait_for(lambda: nats_server.consumer_state()[:2] == (0, 100), 30, what="all in flight")
        time.sleep(4)  # twice ack_wait: without notes, every message redelivered
        redelivered = daemon.daemon.metrics.broker_redeliveries.labels(pipeline="p")._value.get()
        fault_proxy.set("pass")
        wait_for(nats_server.settled, 60, interval=0.2, what="all messages acked")
    finally:
        daemon.stop()
    assert redelivered == 0
    assert count(endpoint, database) == (1000, 1000)


class Batches:
    """A batcher that keeps what it is given (the source alone, without a daemon)."""

    def __init__(self) -> None:
        self.added: list[tuple[str, int, bool]] = []  # token, rows, rebuilt

    def add(self, table: str, payload: bytes, rows: int, **kw: Any) -> None:
        broker = kw["meta"]["broker"]
        assert broker["token"] == kw["token"] and payload.count(b"\n") == rows
        self.added.append((broker["token"], rows, broker["rebuilt"]))


def test_a_message_in_a_manifest_written_meanwhile_goes_with_that_batch(
    nats_server: NatsServer,
) -> None:
    """A daemon that held a message before this one and wrote its manifest late: this
    daemon's write is refused for that message, which goes with the late batch (rebuilt
    with its token); the rest of this daemon's batch is written without it."""
    from chworkers.daemon.brokers.natsstream import NatsSource

    nats_server.make_stream()
    nats_server.publish(bodies(0, 30, 10))
    batches = Batches()
    source = NatsSource(
        name="p",
        table="ev",
        format="JSONEachRow",
        batcher=batches,  # type: ignore[arg-type]
        options=NatsSourceSettings(url=nats_server.url, stream="ev", ack_wait=10.0),
        consumer="us",
        dead_letter=lambda records, token: None,
    )
    try:
        source.link.connect()

        async def other_daemon(client: Any) -> None:
            pull = await client.jetstream().pull_subscribe_bind("chworkers", "ev")
            message = (await pull.fetch(1, timeout=5))[0]
            assert delivery(message.reply) == (1, 1)
            await message.nak()  # delivered to us next, as if it had died

        nats_server.run(other_daemon)

        def pulled_all() -> bool:  # the nak'd message may come back a moment later
            source._fetch()
            return len(source._assembly.ids) == 3

        wait_for(pulled_all, 30, what="the three messages pulled")
        assert sorted(source._assembly.ids) == ["1", "2", "3"] and not batches.added
        late = Manifest("late-token", [[1, 1]], created=time.time(), by="other")
        assert source.link.call(source.link.manifests().register(late, 0)) == {}
        source._submit_all([source._cut()])
    finally:
        source.close()
    ours = broker_token("nats", "ev", "chworkers", ["2", "3"])
    assert sorted(batches.added) == sorted([("late-token", 10, True), (ours, 20, False)])


def test_a_batch_ready_after_its_deadline_is_not_written(nats_server: NatsServer) -> None:
    """Past ack_wait since its pull (less the margin), a message may be another daemon's
    already: the batch is neither written nor inserted nor acknowledged (redelivered)."""
    from chworkers.daemon.brokers.natsstream import NatsSource

    nats_server.make_stream()
    nats_server.publish(bodies(0, 30, 10))
    batches = Batches()
    source = NatsSource(
        name="p",
        table="ev",
        format="JSONEachRow",
        batcher=batches,  # type: ignore[arg-type]
        options=NatsSourceSettings(url=nats_server.url, stream="ev", ack_wait=10.0),
        consumer="us",
        dead_letter=lambda records, token: None,
    )
    try:
        source.link.connect()

        def pulled_all() -> bool:
            source._fetch()
            return len(source._assembly.ids) == 3

        wait_for(pulled_all, 30, what="the three messages pulled")
        source._held.deadline = time.monotonic() + 1.0  # under ack_wait / 8 left
        source._submit_all([source._cut()])
        registry = source.link.call(source.link.manifests().load())
    finally:
        source.close()
    assert batches.added == [] and registry.manifests == {}
    assert nats_server.consumer_state()[:2] == (0, 3)  # delivered, not acknowledged


def test_the_manifests_registry_refuses_a_message_in_two_batches() -> None:
    assert to_ranges([5, 1, 2, 3, 7, 8]) == [[1, 3], [5, 5], [7, 8]]
    registry = Registry()
    registry.manifests["a"] = Manifest("a", [[1, 3], [7, 8]], created=100.0)
    registry.manifests["b"] = Manifest("b", [[10, 20]], created=100.0)
    owners = registry.owners([0, 2, 4, 8, 15, 21])
    assert {seq: m.token for seq, m in owners.items()} == {2: "a", 8: "a", 15: "b"}
    again = Registry.decode(registry.encode(), 7)
    assert again.revision == 7 and again.manifests["a"].seqs() == [1, 2, 3, 7, 8]
    assert again.prune(floor=8, now=150.0, ttl=100.0) == ["a"]  # all acknowledged
    assert again.prune(floor=8, now=250.0, ttl=100.0) == ["b"]  # too old
    assert delivery("$JS.ACK.ev.c.3.41.57.1796154889291426936.9") == (41, 3)
    assert delivery("$JS.ACK.dom.acchash.ev.c.2.41.57.1796154889291426936.9.rand") == (41, 2)


def test_manifests_are_written_by_compare_and_set(nats_server: NatsServer) -> None:
    """Daemons writing manifests at once into the one key: none holds a sequence another
    holds (a refused write says which manifest has it), a rebuilt batch's manifest is
    there already, done is kept, and acknowledged batches are removed by the next write."""
    import asyncio

    from chworkers.daemon.brokers.natsmanifests import ManifestStore

    async def work(client: Any) -> None:
        js = client.jetstream()
        kv = await js.create_key_value(bucket="chworkers", history=1)
        stores = [ManifestStore(kv, "ev.c", ttl=3600, where="test") for _ in range(8)]

        def manifest(token: str, first: int, last: int) -> Manifest:
            return Manifest(token, to_ranges(range(first, last + 1)), created=time.time())

        assert await stores[0].register(manifest("a", 1, 10), floor=0) == {}
        refused = await stores[1].register(manifest("b", 8, 12), floor=0)
        assert {seq: m.token for seq, m in refused.items()} == {8: "a", 9: "a", 10: "a"}
        assert await stores[2].register(manifest("a", 1, 10), floor=0) == {}  # rebuilt
        # Eight daemons at once, overlapping batches: each sequence in one manifest at most.
        results = await asyncio.gather(
            *(
                store.register(manifest(f"t{i}", 100 + 5 * i, 110 + 5 * i), floor=0)
                for i, store in enumerate(stores)
            )
        )
        registry = await stores[0].load()
        held = [seq for m in registry.manifests.values() for seq in m.seqs()]
        assert len(held) == len(set(held))
        written = {f"t{i}" for i, refused in enumerate(results) if not refused}
        assert written and written <= set(registry.manifests)
        await stores[3].mark_done("a", floor=0)
        assert (await stores[0].load()).manifests["a"].done
        # The acknowledgement floor passed "a": the next write removes it.
        assert await stores[4].register(manifest("z", 500, 501), floor=10) == {}
        assert "a" not in (await stores[0].load()).manifests
        # A store starts a change from what it wrote last; others wrote since: its
        # write is refused and made on what they wrote (their manifests kept, a batch
        # that overlaps one of them refused).
        assert await stores[5].register(manifest("s", 600, 605), floor=10) == {}
        assert await stores[6].register(manifest("v", 700, 701), floor=10) == {}
        refused = await stores[5].register(manifest("u", 700, 703), floor=10)
        assert {seq: m.token for seq, m in refused.items()} == {700: "v", 701: "v"}
        assert await stores[5].register(manifest("w", 800, 801), floor=10) == {}
        assert {"s", "v", "w", "z"} <= set((await stores[0].load()).manifests)
        # A change found not needed on what a store wrote last is checked on the key:
        # "q" is not in what store 5 wrote last, another store wrote it since.
        assert await stores[7].register(manifest("q", 900, 901), floor=10) == {}
        await stores[5].mark_done("q", floor=10)
        await stores[6].mark_done("s", floor=10)
        await stores[5].mark_done("s", floor=10)  # done already: nothing written
        final = (await stores[0].load()).manifests
        assert final["q"].done and final["s"].done and not final["w"].done

    nats_server.run(work)


def test_settings_are_checked() -> None:
    def load(nats: dict[str, Any], **pipeline: Any) -> Any:
        item = {"name": "q", "table": "ev", "source": "nats", "nats": nats, **pipeline}
        return config.load(data={"pipelines": [item]}, env={})

    with pytest.raises(ConfigError, match=r"needs nats\.stream"):
        load({})
    with pytest.raises(ConfigError, match="not supported by broker sources"):
        load({"stream": "ev"}, format="CSVWithNames")
    with pytest.raises(ConfigError, match="letters, digits"):
        load({"stream": "ev.x"})
    with pytest.raises(ConfigError, match=r"under half of nats\.ack_wait"):
        load({"stream": "ev", "ack_wait": "1s"}, max_delay="2s")
    loaded = load({"stream": "ev", "ack_wait": "2m", "password": "secret"})
    assert loaded.pipelines[0].nats.ack_wait == 120.0
    assert "secret" not in repr(loaded.pipelines[0].nats)
    assert display_url("nats://u:pw@a:1,tls://b:2") == "nats://a:1,tls://b:2"


def test_credentials_from_the_environment_and_a_file(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    server = NatsServer(tmp_path / "nats", auth=("ingest", "s3cret"))
    server.start()
    try:
        server.make_stream()
        server.publish(bodies(0, 100, 10))
        url = f"{endpoint.url}/{database}"
        pipeline = nats_pipeline(server, user="ingest")
        pipeline["name"] = "events"
        env = {"CHWORKERS_PIPELINE_EVENTS_NATS_PASSWORD": "s3cret"}
        cfg = config.load(data=daemon_config(tmp_path / "a", url, pipeline), env=env)
        daemon = Running(cfg)
        try:
            wait_for(lambda: count(endpoint, database)[0] >= 100, 60, what="rows")
        finally:
            daemon.stop()
        secret = tmp_path / "nats-password"
        secret.write_text("s3cret\n")
        os.chmod(secret, 0o600)
        pipeline["nats"]["password_file"] = str(secret)
        server.publish(bodies(100, 200, 10))
        daemon = Running(daemon_config(tmp_path / "b", url, pipeline))
        try:
            wait_for(server.settled, 60, interval=0.2, what="all acked")
        finally:
            daemon.stop()
        assert count(endpoint, database) == (200, 200)
    finally:
        server.stop()


def test_tls_with_the_servers_ca(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    try:
        ca, cert, key = make_certificates(tmp_path / "certs")
    except NatsUnavailable as exc:
        pytest.skip(str(exc))
    server = NatsServer(tmp_path / "nats", tls=(ca, cert, key))
    server.start()
    try:
        server.make_stream()
        server.publish(bodies(0, 100, 10))
        pipeline = nats_pipeline(server, tls_ca_file=str(ca))
        assert pipeline["nats"]["url"].startswith("tls://")
        daemon = Running(daemon_config(tmp_path / "a", f"{endpoint.url}/{database}", pipeline))
        try:
            wait_for(server.settled, 60, interval=0.2, what="all acked")
        finally:
            daemon.stop()
        assert count(endpoint, database) == (100, 100)
        untrusted = NatsSourceSettings(url=server.url, stream="ev")  # the system's CAs only
        with pytest.raises(BrokerError, match="CERTIFICATE_VERIFY_FAILED"):
            describe(untrusted, "pipeline 'q'")
    finally:
        server.stop()


def test_check_reaches_nats_and_describes_the_stream(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, nats_server: NatsServer
) -> None:
    def check(url: str) -> subprocess.CompletedProcess[str]:
        conf = tmp_path / "c.toml"
        conf.write_text(
            f'[clickhouse]\nurl = "{endpoint.url}/{database}"\n[[pipelines]]\nname = "q"\n'
            f'source = "nats"\ntable = "ev"\ncreate = "n UInt64"\n[pipelines.nats]\n'
            f'url = "{url}"\nstream = "ev"\n'
        )
        return run_chworkers("check", "-c", str(conf), timeout=180)

    result = check(nats_server.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pipeline q: stream ev does not exist (create it" in result.stdout
    nats_server.make_stream()
    nats_server.publish(bodies(0, 10, 5))
    result = check(nats_server.url)
    assert "pipeline q: stream ev: 2 messages; consumer chworkers not created yet" in result.stdout
    result = check("nats://127.0.0.1:1")
    assert result.returncode == 1
    assert "pipeline q: NATS FAILS: " in result.stdout and "cannot connect" in result.stdout


def test_a_daemon_holds_at_most_max_batches_of_a_backlog(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    fault_proxy: Any,
    nats_server: NatsServer,
) -> None:
    """While ClickHouse refuses, the daemon pulls no more than ``max_batches`` batches of
    the backlog (the rest stays in the stream for other daemons, and few messages need
    in-progress notes), and takes the rest once its batches are acknowledged."""
    nats_server.make_stream()
    nats_server.publish(bodies(0, 20_000, 10))
    pipeline = {**nats_pipeline(nats_server, max_batches=2, fetch_count=50), "max_rows": 1000}
    fault_proxy.set("refuse")
    cfg = daemon_config(tmp_path / "state", f"{fault_proxy.url}/{database}", pipeline)
    cfg["clickhouse"]["startup_wait"] = 1.0  # ClickHouse is down: ready after 1 s, not 15
    daemon = Running(cfg)
    try:
        wait_for(lambda: nats_server.consumer_state()[2] >= 2, 30, what="two manifests")
        for _ in range(8):  # 2 s: the source waits for room, pulls nothing more
            lag, pending, _live = nats_server.consumer_state()
            # two batches of 100 messages, the batch being put together and a pull or two
            assert pending <= 2 * 100 + 100 + 2 * 50, pending
            assert lag >= 2000 - 400, lag
            time.sleep(0.25)
        fault_proxy.set("pass")
        wait_for(nats_server.settled, 120, interval=0.2, what="all messages acked")
    finally:
        fault_proxy.set("pass")
        daemon.stop()
    assert count(endpoint, database) == (20_000, 20_000)
