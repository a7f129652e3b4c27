"""The limits of chworkers' HTTP endpoints (:class:`HttpLimits`) and why a client is refused.

The push, metrics and embedded endpoints each have their own (``[http.limits]``,
``[metrics.limits]``, ``[clickhouse.embedded.limits]``; ``chworkers embedded``'s flags).
:mod:`chworkers.http.server` and the embedded endpoint keep to them; settings and metrics
import them from here without importing an HTTP server.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from chworkers.errors import ConfigError
from chworkers.settings import parse_value, setting, validate


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """How many clients an HTTP endpoint serves at once and how long it waits for them."""

    backlog: int = setting(
        1024,
        "Connections the kernel queues before they are accepted (capped by net.core.somaxconn).",
        minimum=1,
    )
    max_connections: int = setting(
        256,
        "Connections served at once (one thread each); beyond them a client is answered "
        "503 with Retry-After.",
        minimum=1,
    )
    idle_timeout: float = setting(
        30.0,
        "How long a keep-alive connection may wait for its next request.",
        unit="seconds",
        minimum=0.01,
    )
    header_timeout: float = setting(
        10.0,
        "How long a client may take to send a request's line and headers once it started "
        "(a slower client is answered 408).",
        unit="seconds",
        minimum=0.01,
    )
    body_timeout: float = setting(
        60.0,
        "How long a client may take to send each MiB of a request body (a slower client is "
        "answered 408).",
        unit="seconds",
        minimum=0.01,
    )
    retry_after: int = setting(
        1, "Seconds a client is told to wait (Retry-After) when the endpoint is busy.", minimum=0
    )

    def __post_init__(self) -> None:
        validate(self)

    # Command-line flags (``chworkers embedded``), derived from the declarations above.

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--backlog``, ``--max-connections``, ... with their defaults and help."""
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            flags = [f"--{f.name.replace('_', '-')}"]
            if f.name == "idle_timeout":
                flags.append("--keep-alive-timeout")  # ClickHouse's name for it
            unit = f" ({f.metadata['unit']})" if f.metadata.get("unit") else ""
            parser.add_argument(
                *flags,
                dest=f.name,
                type=_flag_parser(hints[f.name], f, flags[0]),
                default=f.default,
                metavar="N",
                help=f"{f.metadata['help']}{unit} (default: {f.default:g})",
            )

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> HttpLimits:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def arguments(self) -> list[str]:
        """The flags that give these limits to a ``chworkers embedded`` child."""
        out: list[str] = []
        for f in dataclasses.fields(self):
            out += [f"--{f.name.replace('_', '-')}", repr(getattr(self, f.name))]
        return out


def _flag_parser(tp: Any, f: dataclasses.Field[Any], flag: str) -> Callable[[str], Any]:
    """A flag's value parsed as the setting's is in a config file ("90s", "250ms")."""

    def parse(raw: str) -> Any:
        try:
            return parse_value(tp, f.metadata, raw, f.name, flag)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(
                f"{raw!r} is invalid: expected {exc.expected}"
            ) from None

    return parse


#: Why an endpoint refused a client, for logs and ``chworkers_http_refused_total``.
REFUSAL_REASONS = ("busy", "memory", "slow", "too_large", "malformed")


__all__ = ["REFUSAL_REASONS", "HttpLimits"]
