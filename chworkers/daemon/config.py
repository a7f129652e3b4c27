"""The daemon's configuration: one TOML file, overridable by ``CHWORKERS_*`` variables.

Every key is declared once, in the settings dataclasses below and in the ones they
nest (:class:`~chworkers.clickhouse.pool.PoolOptions`, :class:`~chworkers.clickhouse.retry.RetryPolicy`,
:class:`~chworkers.daemon.pipelines.PipelineSettings`); parsing, validation, the
environment variable names, ``chworkers config --defaults`` and
``docs/configuration.md`` all come from those declarations. Secrets (the ClickHouse
password, the ingest token) come from the environment or from a file
(``password_file``), never from the command line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chworkers.clickhouse.cluster import Cluster, Shard
from chworkers.clickhouse.dsn import ConnectionConfig
from chworkers.clickhouse.pooloptions import PoolOptions
from chworkers.daemon.envnames import unknown_variables
from chworkers.daemon.options import HttpSettings, PartsSettings, SpoolSettings
from chworkers.daemon.pipelines import PipelineSettings, build_pipelines
from chworkers.errors import ConfigError
from chworkers.http.limits import HttpLimits
from chworkers.ops.logs import LogSettings
from chworkers.settings import (
    build,
    describe,
    flags,
    render_defaults,
    render_reference,
    same_as,
    section,
    setting,
)
from chworkers.workers.options import SupervisorOptions

if TYPE_CHECKING:
    from chworkers.embedded import EmbeddedClickHouse

EMBEDDED = "embedded"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EmbeddedSettings:
    """The embedded ClickHouse endpoint the daemon starts when ``url = "embedded"``."""

    host: str = setting("127.0.0.1", "Address the embedded endpoint listens on.")
    port: int = setting(0, "Its port (0: any free port).", minimum=0, maximum=65535)
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
                f"clickhouse: url = {self.url!r} and shards are both set; they are "
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
        if p.sharding_key is None and p.source in ("redis", "nats"):
            raise ConfigError(
                f"{source}: pipeline {p.name!r} reads a {p.source} broker, and clickhouse."
                f"shards has {len(ch.shards)} shards: broker pipelines cannot feed a sharded "
                "cluster yet (their batches are not split by shard; docs/sharding.md)",
                key=f"pipelines.{p.name}.source",
                value=p.source,
                expected="one shard, or a file, stdin, http or generator source",
                source=source,
            )
        if p.sharding_key is None:
            raise ConfigError(
                f"{source}: pipeline {p.name!r} has no sharding_key, and clickhouse.shards "
                f"has {len(ch.shards)} shards: set sharding_key to an expression over the "
                "record's fields ('sipHash64(user_id)', 'user_id') or to 'random'",
                key=f"pipelines.{p.name}.sharding_key",
                expected="an expression or 'random'",
                source=source,
            )


HEADER = """\
# chworkers configuration: every setting with its default.
# Each key can be overridden by the environment variable named under it.
# Pipelines are [[pipelines]] tables; see docs/configuration.md.
"""

PIPELINE_EXAMPLE = """\
# [[pipelines]]
# name = "events"
# source = "http"          # stdin | file | http | generator
# table = "events"
# format = "JSONEachRow"
"""


def defaults_toml() -> str:
    """What ``chworkers config --defaults`` prints."""
    return render_defaults(DaemonSettings, header=HEADER) + "\n" + PIPELINE_EXAMPLE


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
