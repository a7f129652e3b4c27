"""How a connection pool is sized and behaves (:class:`PoolOptions`), and what it reports
(:class:`PoolStats`).

The options are declared with :mod:`chworkers.settings`, so the Python API, the daemon's
configuration file and the environment parse, check and document them the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from chworkers.clickhouse.retry import RetryPolicy
from chworkers.errors import ConfigError
from chworkers.settings import build, section, setting, validate

__all__ = ["PoolOptions", "PoolStats"]


@dataclass(frozen=True)
class PoolOptions:
    """Pool sizing and behaviour; times in seconds, ``None`` disables a limit."""

    min_connections: int = setting(1, "Connections opened at start and kept open.", minimum=0)
    max_connections: int = setting(
        8,
        "Most connections out at once (across all workers, under a supervisor).",
        minimum=1,
        reload=True,
    )
    acquire_timeout: float = setting(
        10.0, "Longest wait for a free connection.", unit="seconds", minimum=0
    )
    idle_timeout: float | None = setting(
        300.0,
        "Close connections beyond the minimum idle this long (none: never).",
        unit="seconds",
        minimum=0.001,
    )
    max_lifetime: float | None = setting(
        3600.0, "Recycle connections this old (none: never).", unit="seconds", minimum=0.001
    )
    validate_on_acquire: bool = setting(False, "Ping a connection before handing it out.")
    retry: RetryPolicy = section(RetryPolicy, "How failed operations are retried.")
    close_timeout: float = setting(
        10.0, "How long close() waits for connections in use.", unit="seconds", minimum=0
    )
    host_cooldown: float = setting(
        2.0, "How long a failed host is avoided at first.", unit="seconds", minimum=0
    )
    max_host_cooldown: float = setting(
        60.0, "Longest a failing host is avoided.", unit="seconds", minimum=0
    )

    def __post_init__(self) -> None:
        validate(self, source="pool")
        if self.min_connections > self.max_connections:
            raise ConfigError(
                f"pool: min_connections = {self.min_connections} is invalid: expected "
                f"<= max_connections ({self.max_connections})",
                key="min_connections",
                value=self.min_connections,
                expected=f"<= max_connections ({self.max_connections})",
            )
        object.__setattr__(self, "retry", RetryPolicy.coerce(self.retry))

    @classmethod
    def coerce(cls, value: PoolOptions | Mapping[str, object] | None) -> PoolOptions:
        if value is None:
            return cls()
        if isinstance(value, PoolOptions):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"pool options: expected a PoolOptions or a mapping, got {type(value).__name__}",
                key="pool",
                value=value,
                expected="a PoolOptions or a mapping of its fields",
            )
        retry = value.get("retry")
        if isinstance(retry, RetryPolicy):
            fields = dataclasses.asdict(retry)
            for internal in ("history", "started_at"):
                fields.pop(internal, None)
            value = {**value, "retry": fields}
        return build(cls, value, source="pool")


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool (see :meth:`ConnectionPool.stats`)."""

    in_use: int
    idle: int
    waiting: int
    opening: int
    max: int
    min: int
    created: int
    closed: dict[str, int]
    acquired: int
    timeouts: int
    acquire_wait_p50: float
    acquire_wait_p99: float
    acquire_wait_max: float
    errors: dict[str, int]
    retries: dict[str, int]
    hosts: list[dict[str, object]]
    lease_held: int | None
