"""The limits of chworkers' HTTP endpoints (:class:`HttpLimits`) and why a client is refused.

The push, metrics and embedded endpoints each have their own (``[http.limits]``,
``[metrics.limits]``, ``[clickhouse.embedded.limits]``; ``chworkers embedded``'s flags,
declared here with each setting).
:mod:`chworkers.http.server` and the embedded endpoint keep to them; settings and metrics
import them from here without importing an HTTP server.
"""

from __future__ import annotations

import dataclasses

from chworkers.settings import setting, validate


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """How many clients an HTTP endpoint serves at once and how long it waits for them."""

    backlog: int = setting(
        1024,
        "Connections the kernel queues before they are accepted (capped by net.core.somaxconn).",
        minimum=1,
        flag="--backlog",
    )
    max_connections: int = setting(
        256,
        "Connections served at once (one thread each); beyond them a client is answered "
        "503 with Retry-After.",
        minimum=1,
        flag="--max-connections",
    )
    idle_timeout: float = setting(
        30.0,
        "How long a keep-alive connection may wait for its next request.",
        unit="seconds",
        minimum=0.01,
        flag=("--idle-timeout", "--keep-alive-timeout"),  # ClickHouse's name for it
    )
    header_timeout: float = setting(
        10.0,
        "How long a client may take to send a request's line and headers once it started "
        "(a slower client is answered 408).",
        unit="seconds",
        minimum=0.01,
        flag="--header-timeout",
    )
    body_timeout: float = setting(
        60.0,
        "How long a client may take to send each MiB of a request body (a slower client is "
        "answered 408).",
        unit="seconds",
        minimum=0.01,
        flag="--body-timeout",
    )
    retry_after: int = setting(
        1,
        "Seconds a client is told to wait (Retry-After) when the endpoint is busy.",
        minimum=0,
        flag="--retry-after",
    )

    def __post_init__(self) -> None:
        validate(self)


#: Why an endpoint refused a client, for logs and ``chworkers_http_refused_total``.
REFUSAL_REASONS = ("busy", "memory", "slow", "too_large", "malformed")


__all__ = ["REFUSAL_REASONS", "HttpLimits"]
