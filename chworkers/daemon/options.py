"""The settings of the daemon's spool and push endpoint, declared once.

:class:`~chworkers.daemon.spool.Spool` and :class:`~chworkers.daemon.dispatch.Dispatcher`
take a :class:`SpoolSettings`, :class:`~chworkers.daemon.ingest.IngestServer` an
:class:`HttpSettings`, :class:`~chworkers.daemon.partspressure.PartsPressure` a
:class:`PartsSettings`, and the daemon's configuration (``[spool]``, ``[http]``,
``[parts]``) nests them:
a constructor and the config file cannot disagree on a default, and a new setting reaches
its component without the daemon copying it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from chworkers.errors import ConfigError
from chworkers.http.limits import HttpLimits
from chworkers.settings import section, setting, validate


@dataclasses.dataclass(frozen=True)
class SpoolSettings:
    """The on-disk spool every accepted batch is written to before it is acknowledged
    (broker pipelines' batches are kept in memory instead: docs/brokers.md)."""

    max_bytes: int = setting(1024**3, "Most bytes the spool may hold.", unit="bytes", minimum=1024)
    policy: Literal["block", "reject", "drop_oldest"] = setting(
        "block",
        "When full: block producers, reject (HTTP 503), or drop the oldest batches (counted).",
    )
    fsync: bool = setting(True, "fsync every batch (turn off only for throwaway data).")
    memory_max_bytes: int = setting(
        256 * 1024**2,
        "Most bytes of broker pipelines' batches (source = 'redis' or 'nats') kept in memory "
        "instead of on disk (the broker holds them durably); beyond it such a source stops "
        "fetching until ClickHouse takes batches.",
        unit="bytes",
        minimum=1024,
    )
    max_in_flight: int = setting(
        0,
        "Batches read back from the spool and queued for the workers at once "
        "(0: twice the workers, or max_workers when autoscaling); the rest wait on disk.",
        minimum=0,
    )
    retry_backoff_max: float = setting(
        60.0,
        "Longest wait before a failed batch is tried again (it is never dropped).",
        unit="seconds",
        minimum=0.1,
    )
    permanent_error_backoff: float = setting(
        300.0,
        "Wait before a batch that failed with a permanent error (unknown table, failed "
        "authentication: errors the retry policy does not retry) is tried again; it stays "
        "spooled, health reports it, and SIGHUP retries it at once.",
        unit="seconds",
        minimum=0.1,
    )

    def __post_init__(self) -> None:
        validate(self, source="spool")


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    """The push endpoint, POST /ingest/<table>, for pipelines with source = "http"."""

    host: str = setting("127.0.0.1", "Address the push endpoint listens on.")
    port: int = setting(8124, "Its port (0: any free port).", minimum=0, maximum=65535)
    token: str | None = setting(
        None, "Bearer token clients must send (none: no authentication).", secret=True
    )
    max_body_bytes: int = setting(
        64 * 1024 * 1024, "Largest request body, after decompression.", unit="bytes", minimum=1
    )
    max_buffered_bytes: int = setting(
        256 * 1024 * 1024,
        "Most request body bytes (as received, and inflated) all push requests together "
        "hold in memory; a request beyond it is answered 503 with Retry-After (one request "
        "alone is always let in).",
        unit="bytes",
        minimum=1,
    )
    spool_timeout: float = setting(
        30.0,
        "How long a request may wait for spool space before a 503.",
        unit="seconds",
        minimum=0,
    )
    limits: HttpLimits = section(
        HttpLimits, "Connections, timeouts and the listen backlog of the push endpoint."
    )

    def __post_init__(self) -> None:
        validate(self, source="http")


@dataclasses.dataclass(frozen=True)
class PartsSettings:
    """``[parts]``: how the daemon reacts when a table's merges fall behind its inserts."""

    check_interval: float = setting(
        5.0,
        "How often each table's active parts per partition are read from system.parts "
        "(0: never; refused inserts still slow the table down).",
        unit="seconds",
        minimum=0,
    )
    slow_down_at: float = setting(
        0.5,
        "Slow down (and grow batches) when a partition's active parts reach this fraction "
        "of the table's parts_to_delay_insert.",
        minimum=0.01,
        maximum=1.0,
    )
    recover_at: float = setting(
        0.25,
        "Step back towards normal once the parts stay below this fraction of "
        "parts_to_delay_insert for the cooldown (below slow_down_at: hysteresis).",
        minimum=0.0,
        maximum=1.0,
    )
    cooldown: float = setting(
        30.0,
        "How long the parts must stay below recover_at, with no TOO_MANY_PARTS, before each "
        "step back.",
        unit="seconds",
        minimum=0,
    )
    max_factor: int = setting(
        8,
        "Most a slowed table's batches grow: max_rows and max_delay times this, doubling "
        "at each sign of pressure (1: never grow or slow down).",
        minimum=1,
        maximum=1024,
    )
    min_interval: float = setting(
        1.0,
        "While slowed, a table's inserts go one at a time and at least factor / 2 times "
        "this apart.",
        unit="seconds",
        minimum=0,
    )

    def __post_init__(self) -> None:
        validate(self, source="parts")
        if self.recover_at >= self.slow_down_at:
            raise ConfigError(
                f"parts: recover_at = {self.recover_at} must be below slow_down_at = "
                f"{self.slow_down_at} (hysteresis)",
                key="recover_at",
                value=self.recover_at,
                expected=f"a value below slow_down_at ({self.slow_down_at})",
            )


__all__ = ["HttpSettings", "PartsSettings", "SpoolSettings"]
