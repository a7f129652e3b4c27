"""The daemon's configuration: one TOML file, overridable by ``CHWORKERS_*`` variables.

Every key is declared once, in the settings dataclasses below and in the ones they
nest (:class:`~chworkers.daemon.clickhousesettings.ClickHouseSettings`,
:class:`~chworkers.clickhouse.pool.PoolOptions`, :class:`~chworkers.clickhouse.retry.RetryPolicy`,
:class:`~chworkers.daemon.pipelines.PipelineSettings`); parsing, validation, the
environment variable names, ``chworkers config --defaults`` and
``docs/configuration.md`` all come from those declarations. Secrets (the ClickHouse
password, the ingest token) come from the environment or from a file
(``password_file``), never from the command line. What SIGHUP applies of a file read
again is :mod:`chworkers.daemon.reload`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chworkers.daemon.clickhousesettings import ClickHouseSettings
from chworkers.daemon.envnames import unknown_variables
from chworkers.daemon.options import HttpSettings, PartsSettings, SpoolSettings
from chworkers.daemon.pipelinelist import build_pipelines
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.errors import ConfigError
from chworkers.http.limits import HttpLimits
from chworkers.ops.logs import LogSettings
from chworkers.settings import (
    build,
    describe,
    flags,
    render_defaults,
    render_reference,
    section,
    setting,
)
from chworkers.workers.options import SupervisorOptions

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """The Prometheus endpoint (/metrics, /healthz, /readyz)."""

    host: str = setting("127.0.0.1", "Address of the metrics endpoint.")
    port: int | None = setting(
        9363,
        "Port of the metrics endpoint (0: any free port; none: no endpoint).",
        minimum=0,
        maximum=65535,
    )
    limits: HttpLimits = section(
        HttpLimits, "Connections, timeouts and the listen backlog of the metrics endpoint."
    )


@dataclasses.dataclass(frozen=True)
class HealthSettings:
    """How the daemon judges its health (/healthz, the systemd watchdog, STATUS=)."""

    stall: float = setting(
        120.0,
        "No insert confirmed for this long while batches wait turns health 'degraded'.",
        unit="seconds",
        minimum=0.1,
    )


@dataclasses.dataclass(frozen=True)
class DaemonSettings:
    """Everything but the pipelines (which are a list: ``[[pipelines]]``)."""

    state_dir: str = setting(
        "",
        "Spool, dead letters, checkpoints and embedded data live here (default: "
        "$STATE_DIRECTORY under systemd, else ./chworkers-state).",
        flag="--state-dir",
        metavar="DIR",
    )
    clickhouse: ClickHouseSettings = section(ClickHouseSettings, "ClickHouse.")
    supervisor: SupervisorOptions = section(
        SupervisorOptions,
        "The supervisor and its worker processes.",
        # The daemon sets these itself: the connection budget is
        # clickhouse.pool.max_connections, the endpoint is [metrics], and it owns signals.
        exclude=frozenset(
            {"max_connections", "metrics_host", "metrics_port", "metrics_limits", "handle_signals"}
        ),
    )
    metrics: MetricsSettings = section(MetricsSettings, "Metrics.")
    spool: SpoolSettings = section(SpoolSettings, "Spool.")
    http: HttpSettings = section(HttpSettings, "Push endpoint.")
    health: HealthSettings = section(HealthSettings, "Health.")
    parts: PartsSettings = section(
        PartsSettings, "Too many parts: slowing down and growing batches for a table."
    )
    log: LogSettings = section(LogSettings, "Logging.", flags=True)


@dataclasses.dataclass(frozen=True)
class Config:
    """A loaded configuration: the settings and the pipelines."""

    settings: DaemonSettings
    pipelines: tuple[PipelineSettings, ...]
    state_dir: Path
    source: str = "defaults"
    #: Settings the command line gave (``{"log.level": "DEBUG"}``): they win over the
    #: file and the environment, also when SIGHUP loads the file again.
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load ``path`` (TOML) or ``data``, apply ``CHWORKERS_*`` variables and then the
    command line's ``overrides`` (by key: ``{"state_dir": "/srv/x"}``), validate all."""
    env = dict(os.environ if env is None else env)
    source = "defaults"
    base_dir = None
    if path is not None:
        source = str(path)
        base_dir = Path(path).resolve().parent
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(
                f"config file {source} does not exist", key="config", value=source
            ) from None
        except OSError as exc:  # a directory, no permission, an I/O error
            raise ConfigError(
                f"config file {source} cannot be read: {exc.strerror or exc}",
                key="config",
                value=source,
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{source}: not valid TOML: not UTF-8 text (byte {exc.start}: "
                f"{exc.object[exc.start : exc.start + 1]!r})",
                source=source,
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}", source=source) from exc
    data = dict(data or {})
    raw_pipelines = data.pop("pipelines", [])
    overrides = dict(overrides or {})
    known = {info.key for info in describe(DaemonSettings)}
    for key in overrides.keys() - known:
        raise ConfigError(
            f"the command line: unknown setting {key!r}",
            key=key,
            value=overrides[key],
            expected="one of: " + ", ".join(sorted(known)),
            source="the command line",
        )
    settings = build(
        DaemonSettings, data, env=env, source=source, base_dir=base_dir, overrides=overrides
    )
    pipelines = build_pipelines(raw_pipelines, env=env, source=source)
    _check_sharding(settings.clickhouse, pipelines, data.get("clickhouse"), source)
    names = [p.name for p in pipelines]
    for var, hint in unknown_variables(env, DaemonSettings, PipelineSettings, names):
        log.warning("environment variable %s names no setting: ignored (%s)", var, hint)
    # systemd's StateDirectory= sets $STATE_DIRECTORY (colon-separated if several).
    state_dir = Path(
        settings.state_dir or env.get("STATE_DIRECTORY", "").split(":")[0] or "chworkers-state"
    )
    return Config(
        settings=settings,
        pipelines=pipelines,
        state_dir=state_dir,
        source=source,
        overrides=overrides,
    )


def _check_sharding(
    ch: ClickHouseSettings,
    pipelines: tuple[PipelineSettings, ...],
    raw: Any,
    source: str,
) -> None:
    """Across sections: a sharded cluster needs every pipeline to say how it routes rows."""
    if isinstance(raw, Mapping) and "url" in raw and raw.get("shards"):
        raise ConfigError(
            f"{source}: clickhouse.url and clickhouse.shards are both set; they are "
            "exclusive (url: one ClickHouse; shards: a sharded cluster)",
            key="clickhouse.shards",
            value=raw["shards"],
            expected="url or shards, not both",
            source=source,
        )
    if len(ch.shards) < 2:
        return  # one shard (or one url): every row goes there, whatever the key says
    for p in pipelines:
        if p.sharding_key is None:
            raise ConfigError(
                f"{source}: pipeline {p.name!r} has no sharding_key, and clickhouse.shards "
                f"has {len(ch.shards)} shards: set sharding_key to an expression over the "
                "record's fields ('sipHash64(user_id)', 'user_id') or to 'random'",
                key=f"pipelines.{p.name}.sharding_key",
                expected="an expression or 'random'",
                source=source,
            )


def ignored_sharding_keys(cfg: Config) -> list[str]:
    """What to warn about a ``sharding_key`` with no sharded cluster to route to: a
    single ``url``, or ``shards`` with one shard. The key is ignored, every row goes to
    the one ClickHouse (or shard). Accepted (a config may be shared with a sharded
    deployment), but said at start and by ``chworkers check``, so a forgotten ``shards``
    (or a shard left out of it) is noticed."""
    shards = cfg.settings.clickhouse.shards
    if len(shards) >= 2:
        return []
    if shards:
        where = (
            "clickhouse.shards has one shard: the key is ignored and every row goes to "
            "that shard (list the cluster's other shards in clickhouse.shards to route "
            "rows by the key, or drop sharding_key)"
        )
    else:
        where = (
            "[clickhouse] has a single url and no shards: the key is ignored and every "
            "row goes to that one ClickHouse (set clickhouse.shards to route rows by the "
            "key, or drop sharding_key)"
        )
    return [
        f"pipeline {p.name!r} has sharding_key = {p.sharding_key!r}, but {where}"
        for p in cfg.pipelines
        if p.sharding_key is not None
    ]


HEADER = """\
# chworkers configuration: every setting with its default.
# Each key can be overridden by the environment variable named under it.
# Pipelines are [[pipelines]] tables; see docs/configuration.md.
"""

PIPELINE_EXAMPLE = """\
# [[pipelines]]
# name = "events"
# source = "http"          # stdin | file | http | generator | redis | nats
# table = "events"
# format = "JSONEachRow"
"""

PIPELINE_KEYS = """\
# Every key a pipeline takes, with its default: uncomment a [[pipelines]] table and the
# keys you need ('# key = ...'; '## ' lines explain them). [pipelines.redis] and
# [pipelines.nats] belong to the [[pipelines]] table above them.
"""


def defaults_toml() -> str:
    """What ``chworkers config --defaults`` prints: the daemon's settings, an example
    pipeline, and every pipeline key commented out (it is a list of tables: a default
    pipeline would be one)."""
    keys = render_defaults(
        PipelineSettings,
        table="pipelines",
        env_for=lambda key: "CHWORKERS_PIPELINE_<NAME>_" + key.upper().replace(".", "_"),
        commented=True,
    )
    return (
        render_defaults(DaemonSettings, header=HEADER)
        + "\n"
        + PIPELINE_EXAMPLE
        + "\n"
        + PIPELINE_KEYS
        + keys
        + "\n"
    )


def reference_markdown() -> str:
    """The configuration reference in ``docs/configuration.md`` (checked by a test)."""
    return (
        "# Configuration reference\n\n"
        "Generated from the settings declarations by `chworkers config --reference`; "
        "do not edit by hand.\n\n"
        "Every key below can be set in the TOML file given to `chworkers run -c FILE` and "
        "overridden by its environment variable. Secrets can also be read from a file "
        "(`<key>_file`).\n\n"
        "## Daemon\n\n" + render_reference(DaemonSettings) + "\n"
        "## Command-line flags\n\n"
        "`chworkers run`, `check` and `config` take these flags (`--log-level` and "
        "`--log-format` also before the command, for every command). A flag wins over the "
        "file and the environment, also when SIGHUP reads the file again.\n\n"
        + flags.render_flags(DaemonSettings, config_file=True)
        + "\n"
        "## Pipelines (`[[pipelines]]`)\n\n"
        "Environment variables address a pipeline by its name: "
        "`CHWORKERS_PIPELINE_<NAME>_<KEY>` (name upper-cased, other characters as `_`).\n\n"
        + render_reference(
            PipelineSettings,
            env_for=lambda key: "CHWORKERS_PIPELINE_<NAME>_" + key.upper().replace(".", "_"),
        )
    )
