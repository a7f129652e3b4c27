"""What SIGHUP applies to a running daemon and what waits for a restart: the keys two
configurations differ in, and the configuration a daemon runs with once a reload applied
what it can."""

from __future__ import annotations

import dataclasses
from typing import Any

from chworkers.daemon.config import Config
from chworkers.workers.options import SupervisorOptions

#: What SIGHUP applies to a running daemon (Daemon._reload): the supervisor's reloadable
#: settings, the connection budget, the retry policy and the log level.
_RELOADED_PREFIXES = ("clickhouse.pool.max_connections", "clickhouse.pool.retry", "log.level")


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The keys that differ between ``old`` and ``new`` but take effect only when the
    daemon starts (everything SIGHUP does not apply), e.g. ``["clickhouse.shard_weights",
    "pipelines.events"]``."""
    reloaded = {f"supervisor.{name}" for name in SupervisorOptions.reloadable()}
    changed = [
        key
        for key in _differences(old.settings, new.settings, "")
        if key not in reloaded
        and not any(key == p or key.startswith(p + ".") for p in _RELOADED_PREFIXES)
    ]
    before = {p.name: p for p in old.pipelines}
    after = {p.name: p for p in new.pipelines}
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) != after.get(name):
            changed.append(f"pipelines.{name}")
    return changed


def reloaded_config(running: Config, new: Config) -> Config:
    """The configuration a daemon runs with once SIGHUP applied ``new``: ``running`` with
    only what SIGHUP applies taken from ``new`` (the supervisor's reloadable settings,
    the connection budget, the retry policy, the log level), everything that waits for
    a restart as it was, so that what the daemon reports is what it runs with."""
    keys = [f"supervisor.{name}" for name in SupervisorOptions.reloadable()]
    keys += _RELOADED_PREFIXES
    settings = running.settings
    for key in keys:
        settings = _with(settings, key.split("."), _get(new.settings, key.split(".")))
    return dataclasses.replace(running, settings=settings)


def _get(value: Any, path: list[str]) -> Any:
    for name in path:
        value = getattr(value, name)
    return value


def _with(value: Any, path: list[str], leaf: Any) -> Any:
    """``value`` (nested frozen dataclasses) with the field at ``path`` set to ``leaf``."""
    if not path:
        return leaf
    inner = getattr(value, path[0])
    changed = _with(inner, path[1:], leaf)
    if changed is inner or changed == inner:
        return value
    return dataclasses.replace(value, **{path[0]: changed})


def _differences(a: Any, b: Any, prefix: str) -> list[str]:
    if a == b:
        return []
    if not (dataclasses.is_dataclass(a) and type(a) is type(b)):
        return [prefix]
    keys: list[str] = []
    for f in dataclasses.fields(a):
        key = f"{prefix}.{f.name}" if prefix else f.name
        keys += _differences(getattr(a, f.name), getattr(b, f.name), key)
    return keys
