"""The ``[[pipelines]]`` array: each table built into a
:class:`~chworkers.daemon.pipelines.PipelineSettings` (environment variables address a
pipeline by its name), names unique; and what the pipelines into one table share, their
insert limits."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from chworkers.daemon.pipelines import PipelineSettings
from chworkers.errors import ConfigError
from chworkers.settings import build
from chworkers.workers.options import TableLimit


def build_pipelines(
    items: Sequence[Mapping[str, Any]], *, env: Mapping[str, str], source: str
) -> tuple[PipelineSettings, ...]:
    """``[[pipelines]]`` tables to settings; names must be unique."""
    if not isinstance(items, (list, tuple)):
        raise ConfigError(
            f"{source}: pipelines must be an array of tables ([[pipelines]])",
            key="pipelines",
            value=items,
            expected="[[pipelines]] tables",
        )
    out: list[PipelineSettings] = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ConfigError(
                f"{source}: pipelines[{index}] is not a table",
                key=f"pipelines[{index}]",
                value=item,
                expected="a table",
            )
        # Environment variables address pipelines by name: CHWORKERS_PIPELINE_<NAME>_<KEY>.
        name = str(item.get("name", ""))
        prefix = "CHWORKERS_PIPELINE_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper() + "_"
        scoped = {
            "CHWORKERS_" + k[len(prefix) :]: v for k, v in env.items() if k.startswith(prefix)
        }
        out.append(
            build(PipelineSettings, item, env=scoped, source=f"{source}: pipelines[{index}]")
        )
    names = [p.name for p in out]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                f"{source}: pipeline name {name!r} is used twice; names must be unique",
                key="pipelines.name",
                value=name,
                expected="unique names",
            )
    return tuple(out)


def table_limits(pipelines: Sequence[PipelineSettings]) -> dict[str, TableLimit]:
    """Each table's insert limits from its pipelines' (two pipelines into one table: the
    tighter of each)."""
    limits: dict[str, TableLimit] = {}
    for p in pipelines:
        limit = TableLimit(p.max_concurrent_inserts, p.max_inserts_per_second)
        if limit.limited:
            limits[p.table] = limits[p.table].stricter(limit) if p.table in limits else limit
    return limits
