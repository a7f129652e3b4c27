"""The ``[clickhouse]`` section of the daemon's configuration: where the data goes (one
ClickHouse by URL, a sharded cluster by its shards, or the embedded endpoint the daemon
runs itself) and the connection options, pool and embedded endpoint that go with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chworkers.clickhouse.cluster import Cluster, Shard
from chworkers.clickhouse.dsn import ConnectionConfig
from chworkers.clickhouse.pooloptions import PoolOptions
from chworkers.errors import ConfigError
from chworkers.http.limits import HttpLimits
from chworkers.settings import redact_url, same_as, section, setting

if TYPE_CHECKING:
    from chworkers.embedded import EmbeddedClickHouse

EMBEDDED = "embedded"


@dataclasses.dataclass(frozen=True)
class EmbeddedSettings:
    """The embedded ClickHouse endpoint the daemon starts when ``url = "embedded"``."""

    host: str = setting("127.0.0.1", "Address the embedded endpoint listens on.")
    port: int = setting(
        0,
        "Its port (0: a free port outside the kernel's range for outgoing connections, kept "
        "across restarts of the child).",
        minimum=0,
        maximum=65535,
    )
    limits: HttpLimits = section(
        HttpLimits, "Connections, timeouts and the listen backlog of the embedded endpoint."
    )


@dataclasses.dataclass(frozen=True)
class ClickHouseSettings:
    """Where the data goes."""

    url: str = setting(
        EMBEDDED,
        "ClickHouse HTTP URL(s): 'http://host:8123/db', replicas as 'http://h1:8123,h2:8123/db', "
        "or 'embedded' to run chworkers' embedded ClickHouse under the state directory.",
    )
    shards: tuple[tuple[str, ...], ...] = setting(
        (),
        "A sharded cluster instead of url: one list of replica URLs per shard "
        "([['http://a1:8123', 'http://a2:8123'], ['http://b1:8123']]; in the environment "
        "'a1:8123,a2:8123;b1:8123'). A shard's replicas fail over as url's hosts do; each "
        "pipeline routes its rows by its sharding_key (docs/sharding.md).",
    )
    shard_weights: tuple[int, ...] = setting(
        (),
        "Each shard's weight, as <weight> in ClickHouse's remote_servers (none: 1 each): "
        "a shard gets weight/total of the rows, in the slots a Distributed table gives it.",
    )
    username: str | None = setting(None, "User name (overrides one in the URL).")
    password: str | None = setting(None, "Password (overrides one in the URL).", secret=True)
    database: str | None = setting(None, "Database (overrides one in the URL).")
    connect_timeout: float | None = same_as(
        ConnectionConfig, "connect_timeout", unless="the URL's connect_timeout"
    )
    send_receive_timeout: float | None = same_as(
        ConnectionConfig, "send_receive_timeout", unless="the URL's send_receive_timeout"
    )
    startup_wait: float = setting(
        15.0,
        "How long start-up waits for the pipelines' tables (and the embedded ClickHouse) "
        "before it reports ready (READY=1) all the same; the intake is open meanwhile, and "
        "tables not made by then are created once ClickHouse answers.",
        unit="seconds",
        minimum=0,
    )
    pool: PoolOptions = section(PoolOptions, "The connection pool shared by all workers.")
    embedded: EmbeddedSettings = section(EmbeddedSettings, "The embedded endpoint.")

    def __post_init__(self) -> None:
        if self.shards:
            self._check_shards()
        elif self.shard_weights:
            raise ConfigError(
                "clickhouse.shard_weights is set but clickhouse.shards is not: weights are "
                "given per shard of a sharded cluster",
                key="shard_weights",
                value=self.shard_weights,
                expected="clickhouse.shards too, or no weights",
            )
        if self.url != EMBEDDED:  # a bad URL fails when the file is read, not at first use
            try:
                self.connection()
            except ConfigError as exc:
                raise ConfigError(  # build() prefixes the key with the section's
                    f"clickhouse.url: {exc}",
                    key="url",
                    value=exc.value,
                    expected=exc.expected,
                ) from None

    def _check_shards(self) -> None:
        if self.url != EMBEDDED:
            raise ConfigError(
                f"clickhouse: url = {redact_url(self.url)!r} and shards are both set; they are "
                "exclusive: url is one ClickHouse (its hosts replicas of one another), "
                "shards a sharded cluster (each shard's replicas in its own list)",
                key="shards",
                value=self.shards,
                expected="url or shards, not both",
            )
        try:
            self.cluster()
        except ConfigError as exc:
            message = str(exc)  # the cluster's "weights" are this section's shard_weights
            for given in ("shard weights", "weights"):
                if message.startswith(given):
                    message = "shard_weights" + message[len(given) :]
                    break
            raise ConfigError(  # build() prefixes the key with the section's
                f"clickhouse.{message}",
                key=message.partition(":")[0].partition("[")[0],
                value=exc.value,
                expected=exc.expected,
            ) from None

    def cluster(self, url: str | None = None) -> Cluster:
        """The cluster ``shards`` and ``shard_weights`` describe; without shards, ``url``
        (or the given one: the embedded endpoint's) as one shard of its hosts."""
        if not self.shards:
            return Cluster((Shard(tuple(self.connection(url).hosts)),))
        return Cluster.parse(self.shards, weights=self.shard_weights or None)

    def connection(self, url: str | None = None) -> ConnectionConfig:
        """The connection options for ``url`` (the embedded endpoint's, when running it)."""
        # Of a sharded cluster, the options every shard's connections share (the
        # cluster gives the hosts, shard by shard).
        target = url or (self.shards[0][0] if self.shards else self.url)
        if self.shards and "://" not in target:  # a replica as 'a1:8123' (as Cluster takes it)
            target = f"http://{target}"
        cfg = ConnectionConfig.coerce(target)
        changes: dict[str, Any] = {
            k: v
            for k, v in (
                ("username", self.username),
                ("password", self.password),
                ("database", self.database),
                ("connect_timeout", self.connect_timeout),
                ("send_receive_timeout", self.send_receive_timeout),
            )
            if v is not None
        }
        return dataclasses.replace(cfg, **changes) if changes else cfg

    def embedded_endpoint(
        self,
        path: Path,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        log_level: str = "INFO",
        log_format: str = "text",
    ) -> EmbeddedClickHouse:
        """The embedded endpoint for ``url = "embedded"`` (not started), requiring the
        configured user and password when one is set (passed in its environment, never
        in its arguments), logging at the daemon's level and in its format."""
        from chworkers.embedded import EmbeddedClickHouse

        secured = self.username is not None or self.password is not None
        return EmbeddedClickHouse(
            path,
            host=self.embedded.host,
            port=self.embedded.port if port is None else port,
            user=(self.username or "default") if secured else None,
            password=(self.password or "") if secured else None,
            log_path=log_path,
            log_level=log_level,
            log_format=log_format,
            limits=self.embedded.limits,
        )
