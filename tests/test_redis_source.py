"""``source = "redis"`` against a real redis-server (tests/redisserver.py) and the
embedded ClickHouse: exact counts with two daemons on one stream, poison entries
dead-lettered and acknowledged, and the manifests' rules (docs/brokers.md)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from brokerfeeds import bodies
from chclients import make_client
from clirun import run_chworkers
from daemonthread import Running, count, daemon_config
from redisserver import RedisServer
from waiting import wait_for

from chworkers.clickhouse.dedup import broker_token
from chworkers.daemon import config
from chworkers.daemon.batcher import BatchLimits
from chworkers.daemon.brokers.assembly import Assembler, Assembly, Message
from chworkers.daemon.brokers.redisclient import display_url
from chworkers.daemon.mapping import FieldMapper
from chworkers.daemon.spool import Spool
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ConfigError

pytestmark = pytest.mark.timeout(300)


def redis_pipeline(server: RedisServer, **redis: Any) -> dict[str, Any]:
    options = {"url": server.url, "stream": "ev", "claim_idle": 1.0, "claim_interval": 0.2}
    return {"source": "redis", "max_rows": 2000, "redis": {**options, **redis}}


def test_two_daemons_share_a_stream_exactly_once(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, redis_server: RedisServer
) -> None:
    url = f"{endpoint.url}/{database}"
    redis_server.add_entries(bodies(0, 10_000, 25))
    daemons = [
        Running(daemon_config(tmp_path / name, url, redis_pipeline(redis_server)))
        for name in ("a", "b")
    ]
    try:
        redis_server.add_entries(bodies(10_000, 20_000, 25))
        wait_for(lambda: count(endpoint, database)[0] >= 20_000, 120, interval=0.2, what="rows")
        wait_for(redis_server.settled, 60, interval=0.2, what="all entries acked")
    finally:
        for d in daemons:
            d.stop()
    assert count(endpoint, database) == (20_000, 20_000)
    consumers = redis_server.client().xinfo_consumers("ev", "chworkers")
    assert len(consumers) == 2  # both daemons took part (each its own consumer name)


def test_poison_entries_are_dead_lettered_and_acked(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    redis_server.add_entries(bodies(0, 100, 10))
    client.xadd("ev", {"other": "no data field"})
    client.xadd("ev", {"data": '{"n":"not a number","s":"bad"}'})  # ClickHouse rejects it
    client.xadd("ev", {"data": '{"n":100,"s":"unterminated'})  # a record ClickHouse rejects
    client.xadd("ev", {"data": ""})  # nothing at all: acked with its batch
    redis_server.add_entries(bodies(101, 200, 10))
    state = tmp_path / "state"
    daemon = Running(
        daemon_config(state, f"{endpoint.url}/{database}", redis_pipeline(redis_server))
    )
    try:
        wait_for(redis_server.settled, 60, interval=0.2, what="all entries acked")
    finally:
        daemon.stop()
    assert count(endpoint, database) == (199, 199)
    letters = [
        json.loads(line)
        for path in (state / "dead-letter").rglob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    reasons = sorted((letter["reason"], letter["record"]) for letter in letters)
    assert reasons == [
        ("poison", ""),  # the entry without a data field
        ("rejected", '{"n":"not a number","s":"bad"}'),
        ("rejected", '{"n":100,"s":"unterminated'),
    ], letters
    assert (
        "no payload field"
        in next(x for x in letters if x["reason"] == "poison")["error"]["message"]
    )


def test_a_claimed_manifest_is_rebuilt_with_its_token(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, redis_server: RedisServer
) -> None:
    """A consumer that wrote a manifest and vanished: the daemon claims its entries and
    inserts exactly that batch, with that token (ClickHouse drops it if it landed)."""
    client = redis_server.client()
    client.xgroup_create("ev", "chworkers", "0", mkstream=True)
    redis_server.add_entries(bodies(0, 300, 100))
    entries = client.xreadgroup("chworkers", "dead", {"ev": ">"}, count=3)[0][1]
    ids = [e[0].decode() for e in entries[:2]]  # the dead consumer's batch: two entries
    token = broker_token("redis", "ev", "chworkers", ids)
    prefix = "ev:chworkers:chworkers"
    client.set(f"{prefix}:manifest:{token}", json.dumps({"token": token, "ids": ids}))
    client.sadd(f"{prefix}:manifests", token)
    # Its batch had landed already: the rebuilt one must be dropped by its token.
    ch = make_client(endpoint, database=database)
    try:
        ch.command(
            "CREATE TABLE ev (n UInt64, s String) ENGINE = MergeTree ORDER BY n "
            "SETTINGS non_replicated_deduplication_window = 1000"
        )
        payload = b"".join(e[1][b"data"] + b"\n" for e in entries[:2])
        ch.raw_insert(
            "ev",
            insert_block=payload,
            fmt="JSONEachRow",
            settings={"insert_deduplication_token": token},
        )
        assert ch.command("SELECT count() FROM ev") == 200
    finally:
        ch.close()
    url = f"{endpoint.url}/{database}"
    daemon = Running(daemon_config(tmp_path / "state", url, redis_pipeline(redis_server)))
    try:
        wait_for(redis_server.settled, 60, interval=0.2, what="all entries acked")
    finally:
        daemon.stop()
    assert count(endpoint, database) == (300, 300)


def test_a_message_is_framed_alike_wherever_it_is_built() -> None:
    assembler = Assembler("JSONEachRow")
    assert assembler.frame(Message("1-0", b'{"a":1}\n{"a":2}')) == (b'{"a":1}\n{"a":2}\n', 2)
    assert assembler.frame(Message("1-1", b"")) == (b"", 0)
    mapped = Assembler("JSONEachRow", transform=FieldMapper.parse(("a=b",), where="test"))
    batch = Assembly()
    assert mapped.add(batch, Message("1-3", b'{"a":1}')) is None
    assert mapped.add(batch, Message("1-4", b'\n{"a":2}\n\n')) is None
    assert (batch.rows, mapped.payload(batch)) == (2, b'{"b":1}\n\n{"b":2}\n\n')
    assert mapped.add(batch, Message("1-5", None)) is not None  # poison: no payload field
    messages = [Message(f"2-{i}", b'{"a":1}') for i in range(5)]
    messages[2] = Message("2-2", None)
    first, second = Assembly(), Assembly()
    plain = Assembler("JSONEachRow")
    assert plain.extend(first, messages, 0, BatchLimits(max_rows=2)) == (2, [])
    stop, poison = plain.extend(second, messages, 2, BatchLimits(max_rows=2))
    assert (stop, [p.message.id for p in poison]) == (5, ["2-2"])
    assert (first.ids, second.ids, second.rows) == (["2-0", "2-1"], ["2-3", "2-4"], 2)
    csv = Assembler("CSV")
    with pytest.raises(Exception, match="ends inside a record"):
        csv.frame(Message("1-2", b'1,"open quote\n'))
    assert broker_token("redis", "s", "g", ["1-0", "1-1"]) == broker_token(
        "redis", "s", "g", ["1-0", "1-1"]
    )
    assert broker_token("redis", "s", "g", ["1-0"]) != broker_token("redis", "s", "h", ["1-0"])


def test_settings_are_checked() -> None:
    def load(redis: dict[str, Any], **pipeline: Any) -> Any:
        item = {"name": "r", "table": "ev", "source": "redis", "redis": redis, **pipeline}
        return config.load(data={"pipelines": [item]}, env={})

    with pytest.raises(ConfigError, match=r"needs redis\.stream"):
        load({})
    with pytest.raises(ConfigError, match="not supported by broker sources"):
        load({"stream": "ev"}, format="CSVWithNames")
    with pytest.raises(ConfigError, match="claim_idle"):
        load({"stream": "ev", "claim_idle": 0})
    loaded = load({"stream": "ev", "claim_idle": "2s", "password": "secret"})
    assert loaded.pipelines[0].redis.claim_idle == 2.0
    assert display_url("redis://user:pw@host:1/0") == "redis://host:1/0"


def test_an_entry_delivered_too_often_is_dead_lettered_and_acked(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    client.xgroup_create("ev", "chworkers", "0", mkstream=True)
    redis_server.add_entries(bodies(0, 30, 10))
    entries = client.xreadgroup("chworkers", "crashing", {"ev": ">"}, count=1)[0][1]
    doomed = entries[0][0]
    # As if daemons had died on it 20 times: delivered 20 times, idle for a minute.
    client.xclaim("ev", "chworkers", "crashing", 0, [doomed], idle=60_000, retrycount=20)
    state = tmp_path / "state"
    pipeline = redis_pipeline(redis_server, max_deliver=10)
    daemon = Running(daemon_config(state, f"{endpoint.url}/{database}", pipeline))
    try:
        wait_for(redis_server.settled, 60, interval=0.2, what="all entries acked")
    finally:
        daemon.stop()
    assert count(endpoint, database) == (20, 20)  # the other two entries
    letters = [
        json.loads(line)
        for path in (state / "dead-letter").rglob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert len(letters) == 1 and letters[0]["reason"] == "poison", letters  # the entry, whole
    assert letters[0]["record"].count("\n") == 9  # its ten records
    assert "delivered 21 times (max_deliver = 10)" in letters[0]["error"]["message"]


def test_a_spooled_batch_completed_elsewhere_is_not_inserted_again(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    redis_server: RedisServer,
) -> None:
    """Broker batches on disk (spooled by a version before the memory tier) are replayed
    at start only while their manifest exists: one whose manifest is gone (another daemon
    completed it, possibly beyond the deduplication window) leaves the spool without an
    insert; one whose manifest is there is inserted and acknowledged."""
    state = tmp_path / "state"
    cfg = daemon_config(state, f"{endpoint.url}/{database}", redis_pipeline(redis_server))
    client = redis_server.client()
    client.xgroup_create("ev", "chworkers", "0", mkstream=True)
    redis_server.add_entries(bodies(0, 30, 10))
    entries = client.xreadgroup("chworkers", "old", {"ev": ">"}, count=2)
    ids = [e[0].decode() for e in entries[0][1]]
    prefix = "ev:chworkers:chworkers"
    spool = Spool(state / "spool")
    for n, (entry_id, fields) in enumerate(entries[0][1]):
        token = f"old-{n}"
        if n == 0:  # this one's manifest is still there: it is inserted
            body = json.dumps({"token": token, "ids": [entry_id.decode()]})
            client.set(f"{prefix}:manifest:{token}", body)
            client.sadd(f"{prefix}:manifests", token)
        else:  # another daemon completed this one: acknowledged, manifest removed
            client.xack("ev", "chworkers", entry_id)
        payload = fields[b"data"]
        meta = {"broker": {"kind": "redis", "token": token, "ids": [entry_id.decode()]}}
        spool.put(
            "ev", payload, format="JSONEachRow", rows=10, pipeline="p", meta=meta, token=token
        )
    assert len(ids) == 2
    daemon = Running(cfg)
    try:
        wait_for(lambda: daemon.daemon.spool.stats()["batches"] == 0, 60, what="an empty spool")
        wait_for(redis_server.settled, 60, interval=0.5, what="all entries acked")
    finally:
        daemon.stop()
    # The old batch with a manifest (rows 0-9) and the entry "old" never read (20-29).
    assert count(endpoint, database) == (20, 20)
    assert not client.exists(f"{prefix}:manifest:old-0")


def test_redis_restarted_mid_ingest_degrades_health_and_loses_nothing(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, redis_server: RedisServer
) -> None:
    url = f"{endpoint.url}/{database}"
    daemon = Running(daemon_config(tmp_path / "state", url, redis_pipeline(redis_server)))

    def redis_problems() -> list[str]:
        report = daemon.daemon.health()
        return [p.reason for p in report.problems if p.component == "source p"]

    try:
        redis_server.add_entries(bodies(0, 5000, 50))
        redis_server.kill()  # SIGKILL: Redis keeps what it fsync'd (appendfsync always)
        wait_for(lambda: bool(redis_problems()), 30, interval=0.2, what="a degraded source")
        assert "redis redis://127.0.0.1" in redis_problems()[0]
        redis_server.start()
        redis_server.add_entries(bodies(5000, 10_000, 50))
        wait_for(redis_server.settled, 60, interval=0.2, what="all entries acked")
        wait_for(lambda: not redis_problems(), 30, interval=0.2, what="the source healthy")
    finally:
        daemon.stop()
    assert count(endpoint, database) == (10_000, 10_000)


def test_check_reaches_redis_and_describes_the_stream(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, redis_server: RedisServer
) -> None:
    def check(url: str) -> subprocess.CompletedProcess[str]:
        conf = tmp_path / "c.toml"
        conf.write_text(
            f'[clickhouse]\nurl = "{endpoint.url}/{database}"\n[[pipelines]]\nname = "r"\n'
            f'source = "redis"\ntable = "ev"\ncreate = "n UInt64"\n[pipelines.redis]\n'
            f'url = "{url}"\nstream = "ev"\n'
        )
        return run_chworkers("check", "-c", str(conf), timeout=180)

    result = check(redis_server.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pipeline r: stream ev does not exist yet" in result.stdout
    redis_server.add_entries(bodies(0, 10, 5))
    result = check(redis_server.url)
    assert "pipeline r: stream ev: 2 entries; group chworkers not created yet" in result.stdout
    result = check("redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert "pipeline r: REDIS FAILS: redis redis://127.0.0.1:1/0: ConnectionError" in result.stdout


def test_a_daemon_holds_at_most_max_batches_of_a_backlog(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    fault_proxy: Any,
    redis_server: RedisServer,
) -> None:
    """While ClickHouse refuses, the daemon reads no more than ``max_batches`` batches of
    the backlog (the rest stays in the stream for other daemons), and takes the rest
    once its batches are acknowledged."""
    redis_server.add_entries(bodies(0, 20_000, 10))
    pipeline = {**redis_pipeline(redis_server, max_batches=2, fetch_count=50), "max_rows": 1000}
    fault_proxy.set("refuse")
    cfg = daemon_config(tmp_path / "state", f"{fault_proxy.url}/{database}", pipeline)
    cfg["clickhouse"]["startup_wait"] = 1.0  # ClickHouse is down: ready after 1 s, not 15
    daemon = Running(cfg)
    client = redis_server.client()
    try:
        wait_for(lambda: len(client.keys("ev:chworkers:chworkers:manifest:*")) >= 2, 30)
        for _ in range(8):  # 2 s: the source waits for room, reads nothing more
            pending = client.xinfo_groups("ev")[0]["pending"]
            # two batches of 100 entries, the batch being put together and one read
            assert pending <= 2 * 100 + 100 + 50, pending
            time.sleep(0.25)
        fault_proxy.set("pass")
        wait_for(redis_server.settled, 120, interval=0.2, what="all entries acked")
    finally:
        fault_proxy.set("pass")
        daemon.stop()
        client.close()
    assert count(endpoint, database) == (20_000, 20_000)
