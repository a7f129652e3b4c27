"""The supervisor's settings, declared once.

Each field of :class:`SupervisorOptions` carries its help text and its check in the
field's metadata; the constructor, validation, ``reloadable`` and documentation all read
them from here (the daemon's configuration can too). Invalid values raise
:class:`ConfigError` naming the key, the value and what is expected.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chworkers.errors import ConfigError

START_METHODS = ("fork", "spawn", "forkserver")


def _setting(
    default: Any, help: str, check: Callable[[Any], bool], expected: str, *, reload: bool = False
) -> Any:
    meta = {"help": help, "check": check, "expected": expected, "reloadable": reload}
    return field(default=default, metadata=meta)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _optional_positive_int(v: Any) -> bool:
    return v is None or _positive_int(v)


def _non_negative_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _positive_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v > 0


def _port(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535)


@dataclass(frozen=True)
class SupervisorOptions:
    """Supervisor settings; fields marked reloadable may change at runtime (SIGHUP)."""

    workers: int = _setting(
        os.cpu_count() or 1, "Worker processes.", _positive_int, "an integer >= 1", reload=True
    )
    max_connections: int | None = _setting(
        None,
        "ClickHouse requests in flight across all workers (default: workers).",
        _optional_positive_int,
        "an integer >= 1 or None",
        reload=True,
    )
    start_method: str = _setting(
        "forkserver",
        "How worker processes start: fork, spawn or forkserver.",
        lambda v: v in START_METHODS,
        "one of " + ", ".join(START_METHODS),
    )
    queue_size: int = _setting(
        1000,
        "Tasks the queue holds before producers block.",
        _positive_int,
        "an integer >= 1",
        reload=True,
    )
    queue_max_bytes: int | None = _setting(
        256 * 1024 * 1024,
        "Bytes of encoded tasks the queue holds before producers block.",
        _optional_positive_int,
        "an integer >= 1 or None",
    )
    queue_timeout: float | None = _setting(
        None,
        "Seconds insert/submit/call wait on a full queue before QueueFullError (None: no limit).",
        lambda v: v is None or _positive_number(v),
        "a number > 0 or None",
        reload=True,
    )
    native_encoding: bool = _setting(
        True,
        "Encode rows to ClickHouse Native in the producer's thread (else pickle them).",
        lambda v: isinstance(v, bool),
        "true or false",
    )
    prefetch: int = _setting(
        64,
        "Most tasks a worker holds at once (fewer when tasks are slow).",
        _positive_int,
        "an integer >= 1",
    )
    prefetch_bytes: int = _setting(
        16 * 1024 * 1024,
        "Most bytes of tasks sent ahead to one worker.",
        _positive_int,
        "an integer >= 1",
    )
    graceful_timeout: float = _setting(
        30.0,
        "Seconds a graceful stop waits for queued and running tasks.",
        _positive_number,
        "a number > 0",
        reload=True,
    )
    hung_timeout: float = _setting(
        60.0,
        "Seconds without a heartbeat, while running a task, before a worker is killed.",
        _positive_number,
        "a number > 0",
        reload=True,
    )
    heartbeat_interval: float = _setting(
        1.0, "Seconds between an idle worker's heartbeats.", _positive_number, "a number > 0"
    )
    max_tasks_per_worker: int | None = _setting(
        None,
        "Tasks after which a worker is replaced (None: never).",
        _optional_positive_int,
        "an integer >= 1 or None",
        reload=True,
    )
    max_tasks_jitter: int = _setting(
        0,
        "Random extra tasks (0..jitter) per worker, so workers do not recycle together.",
        _non_negative_int,
        "an integer >= 0",
        reload=True,
    )
    max_task_crashes: int = _setting(
        2,
        "Times a task may take its worker down (crash or hang) before it fails.",
        _positive_int,
        "an integer >= 1",
        reload=True,
    )
    restart_backoff: float = _setting(
        0.1,
        "First delay before replacing a worker that died young; doubles each time.",
        _positive_number,
        "a number > 0",
    )
    restart_backoff_max: float = _setting(
        10.0, "Longest delay before replacing a worker.", _positive_number, "a number > 0"
    )
    max_boot_failures: int = _setting(
        5,
        "Consecutive workers dying at boot before the supervisor gives up.",
        _positive_int,
        "an integer >= 1",
    )
    boot_timeout: float = _setting(
        60.0, "Seconds start() waits for the first workers.", _positive_number, "a number > 0"
    )
    metrics_host: str = _setting(
        "127.0.0.1",
        "Address of the /metrics, /healthz and /readyz endpoint.",
        lambda v: isinstance(v, str) and bool(v),
        "a host name or address",
    )
    metrics_port: int | None = _setting(
        None,
        "Port of that endpoint (0: any free port, None: no endpoint).",
        _port,
        "a port number 0-65535 or None",
    )
    handle_signals: bool = _setting(
        False,
        "Own the process's signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads.",
        lambda v: isinstance(v, bool),
        "true or false",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.metadata["check"](value):
                raise ConfigError(
                    f"supervisor setting {f.name}={value!r}: expected {f.metadata['expected']}",
                    key=f.name,
                    value=value,
                    expected=f.metadata["expected"],
                )

    @property
    def connections(self) -> int:
        return self.max_connections if self.max_connections is not None else self.workers

    @classmethod
    def reloadable(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata["reloadable"])

    @classmethod
    def build(
        cls, values: Mapping[str, Any], base: SupervisorOptions | None = None
    ) -> SupervisorOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"unknown supervisor setting {key!r}",
                    key=key,
                    value=values[key],
                    expected="one of " + ", ".join(sorted(known)),
                )
        if base is None:
            return cls(**values)
        return dataclasses.replace(base, **values)
