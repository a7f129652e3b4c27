"""The settings of the broker sources, declared once (a pipeline's ``[pipelines.redis]``
and ``[pipelines.nats]``).

See docs/brokers.md for what each does to the delivery guarantee.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

from chworkers.errors import ConfigError
from chworkers.settings import setting, validate

DAY = 24 * 3600.0


@dataclasses.dataclass(frozen=True)
class RedisSourceSettings:
    """``source = "redis"``: a Redis Stream read through a consumer group."""

    url: str = setting(
        "redis://127.0.0.1:6379/0",
        "The Redis server: redis://host:port/db, or rediss:// for TLS.",
    )
    stream: str = setting("", "The stream's key.")
    cluster: bool = setting(
        False,
        "The URL is a node of a Redis Cluster (redis-py's RedisCluster finds the others); "
        "the keys beside the stream then carry its hash tag, so they sit in its slot.",
    )
    group: str = setting("chworkers", "The consumer group the daemons share.")
    consumer: str = setting(
        "",
        "This daemon's consumer name; keep it across restarts so that a restarted daemon "
        "finishes its own pending entries (empty: the host name and the state directory).",
    )
    start_id: str = setting(
        "0",
        "Where a newly created group starts: '0' (the whole stream) or '$' (new entries).",
    )
    field: str = setting("data", "The entry field that holds the records.")
    username: str | None = setting(None, "Redis user (ACL), when the URL has none.")
    password: str | None = setting(
        None, "Redis password (or password_file, or the URL's).", secret=True
    )
    password_file: str | None = setting(
        None, "Read the Redis password from the first line of this file."
    )
    ssl_ca_certs: str | None = setting(None, "TLS: the CA bundle that signed the server.")
    ssl_certfile: str | None = setting(None, "TLS: this client's certificate.")
    ssl_keyfile: str | None = setting(None, "TLS: this client's private key.")
    ssl_cert_reqs: Literal["required", "optional", "none"] = setting(
        "required", "TLS: whether the server's certificate must verify."
    )
    fetch_count: int = setting(1000, "Entries asked for per XREADGROUP.", minimum=1)
    max_batches: int = setting(
        0,
        "Batches this daemon holds from the stream at once, read and not yet acknowledged "
        "(0: the spool's max_in_flight and 4 more: 2 whose manifests are on their way, 2 "
        "whose acknowledgements are); it reads no more until one is "
        "acknowledged, so a backlog stays in the stream for the other daemons and the "
        "entries in flight stay few (fewer to refresh, to scan for claims, to rebuild).",
        minimum=0,
    )
    claim_idle: float = setting(
        30.0,
        "Entries pending this long with another consumer (it died or hangs) are claimed "
        "(XAUTOCLAIM); a live daemon refreshes its own in-flight entries meanwhile.",
        unit="seconds",
        minimum=0.01,
    )
    claim_interval: float = setting(
        5.0, "How often to look for entries to claim.", unit="seconds", minimum=0.01
    )
    max_deliver: int = setting(
        10,
        "An entry delivered more often than this (daemons keep dying on its batch) is "
        "dead-lettered and acknowledged when claimed (0: never).",
        minimum=0,
    )
    manifest_ttl: float = setting(
        7 * DAY,
        "How long a batch's manifest is kept in Redis once no daemon holds its batch (a "
        "live daemon refreshes the manifests of the batches it holds, however long "
        "ClickHouse is down); after it, its entries are batched anew, with a new token "
        "(at least once: an attempt that failed may have landed).",
        unit="seconds",
        minimum=1,
    )
    wait_replicas: int = setting(
        0,
        "A batch is inserted only once its manifest reached this many replicas of the "
        "stream's Redis (WAIT), so a failover to one of them keeps exactly once (0: do "
        "not wait; replication is asynchronous and a failover can lose the last writes).",
        minimum=0,
    )
    wait_timeout: float = setting(
        1.0,
        "How long one WAIT for wait_replicas lasts; a manifest not replicated by then "
        "makes the source degraded and is written and waited for again.",
        unit="seconds",
        minimum=0.001,
    )

    def __post_init__(self) -> None:
        validate(self, source="redis")

    def secret(self, where: str) -> str | None:
        """The password: the setting, else the first line of ``password_file``."""
        if self.password is not None or self.password_file is None:
            return self.password
        try:
            lines = Path(self.password_file).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot read the Redis password file {self.password_file}: "
                f"{exc.strerror}",
                key="redis.password_file",
                value=self.password_file,
                expected="a readable file",
            ) from exc
        return lines[0] if lines else ""


#: Stream and consumer names the manifests' key can carry (a KV key's alphabet).
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclasses.dataclass(frozen=True)
class NatsSourceSettings:
    """``source = "nats"``: a JetStream stream read through a durable pull consumer."""

    url: str = setting(
        "nats://127.0.0.1:4222",
        "The NATS servers: nats://host:port, or tls://host:port; several separated by commas.",
    )
    stream: str = setting("", "The JetStream stream.")
    subjects: tuple[str, ...] = setting(
        (),
        "When the stream does not exist, `run` creates it with these subjects (file storage); "
        "empty: the stream must exist.",
    )
    consumer: str = setting(
        "chworkers", "The durable pull consumer that every daemon of the pipeline shares."
    )
    filter_subject: str = setting(
        "", "Only the stream's messages on this subject (wildcards allowed; empty: all)."
    )
    deliver_policy: Literal["all", "new"] = setting(
        "all", "Where a newly created consumer starts: the whole stream, or new messages."
    )
    ack_wait: float = setting(
        30.0,
        "A message not acknowledged for this long is redelivered (its daemon died or hangs); "
        "a live daemon keeps its in-flight messages with in-progress acks.",
        unit="seconds",
        minimum=0.1,
    )
    max_deliver: int = setting(
        10,
        "A message delivered more often than this (daemons keep dying on its batch) is "
        "dead-lettered and terminated (0: never).",
        minimum=0,
    )
    ack_policy: Literal["explicit", "all"] = setting(
        "explicit",
        "How messages are acknowledged: one +ACK each (explicit), or one +ACK for every "
        "message up to a sequence once all of them are inserted (all: JetStream's AckAll, "
        "about half of nats-server's CPU per message; a consumer made with one policy "
        "cannot change to the other; see docs/brokers.md for where it fails: a floor held "
        "back long, with many small batches, fills the manifests' key).",
    )
    max_ack_pending: int = setting(
        1_000_000,
        "The consumer's bound on messages delivered and not acknowledged, over all daemons: "
        "above what every daemon's spool and batch in the making hold.",
        minimum=1,
    )
    fetch_count: int = setting(1000, "Messages asked for per pull (fetch batch size).", minimum=1)
    max_batches: int = setting(
        0,
        "Batches this daemon holds from the stream at once, pulled and not yet acknowledged "
        "(0: twice the spool's max_in_flight and 4 more); it pulls no more until one is "
        "acknowledged, so a backlog stays in the stream for the other daemons and the "
        "messages in flight stay few (fewer in-progress notes, fewer to redeliver).",
        minimum=0,
    )
    bucket: str = setting(
        "chworkers",
        "The key-value bucket of the manifests (`run` creates it when missing, one replica, "
        "reads from the leader).",
    )
    manifest_ttl: float = setting(
        7 * DAY,
        "How long a batch's manifest is kept once no daemon holds its batch (a live "
        "daemon writes again the manifest of a batch it held longer, ClickHouse down); "
        "after it, its messages are batched anew, with a new token (at least once: an "
        "attempt that failed may have landed).",
        unit="seconds",
        minimum=1,
    )
    user: str | None = setting(None, "NATS user, when the URL has none.")
    password: str | None = setting(None, "NATS password (or password_file).", secret=True)
    token: str | None = setting(None, "NATS authentication token (or token_file).", secret=True)
    creds_file: str | None = setting(
        None, "A NATS credentials file (JWT and NKey seed, as `nsc` writes them)."
    )
    tls_ca_file: str | None = setting(None, "TLS: the CA bundle that signed the server.")
    tls_cert_file: str | None = setting(None, "TLS: this client's certificate.")
    tls_key_file: str | None = setting(None, "TLS: this client's private key.")
    tls_hostname: str | None = setting(
        None, "TLS: the name to verify the server's certificate against (default: the URL's)."
    )

    def __post_init__(self) -> None:
        validate(self, source="nats")
        for key in ("stream", "consumer", "bucket"):
            value = getattr(self, key)
            if value and not _NAME.match(value):
                raise ConfigError(
                    f"nats.{key} = {value!r} is invalid: letters, digits, '-' and '_' only",
                    key=f"nats.{key}",
                    value=value,
                    expected="a name of letters, digits, '-' and '_'",
                )


__all__ = ["NatsSourceSettings", "RedisSourceSettings"]
