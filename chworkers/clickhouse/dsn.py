"""Where and how to connect to ClickHouse: :class:`ConnectionConfig`.

A configuration is given as a URL (``http://user:pass@h1:8123,h2:8123/db?compress=lz4``),
as a mapping of the field names, or as the value itself. Several hosts are replicas of
the same data; the pool spreads connections over them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, unquote

from chworkers.clickhouse.cluster import Cluster
from chworkers.clickhouse.hostaddr import Host, parse_host
from chworkers.errors import ConfigError
from chworkers.settings import redact_url, setting, validate

__all__ = ["ConnectionConfig", "Host"]

_SCHEMES = {"http": False, "https": True, "clickhouse": False, "clickhouses": True}
_BOOL = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _fail(key: str, value: Any, expected: str, why: str = "") -> ConfigError:
    if key == "password":
        value = "***"
    elif key == "url" and isinstance(value, str):
        value = redact_url(value)  # an error message is printed and logged
    shown = value if key == "password" else repr(value)
    return ConfigError(
        f"connection option {key}: {shown} is not {expected}{why}",
        key=key,
        value=value,
        expected=expected,
    )


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _BOOL:
        return _BOOL[value.lower()]
    raise _fail(key, value, "a boolean (true/false)")


@dataclass(frozen=True)
class ConnectionConfig:
    """Connection settings shared by every connection of a pool.

    ``compress`` is ``True`` (lz4, or zstd), ``False`` or a codec name (``lz4``, ``zstd``,
    ``gzip``, ``br``). ``settings`` are ClickHouse settings sent with every request.
    """

    # hosts, settings and compress are parsed here; the other fields are declared as
    # settings, so they parse and fail exactly as they do in the config file ("5s").
    hosts: tuple[Host, ...] = (Host("localhost", 8123),)
    username: str = setting("default", "User name.")
    password: str = setting("", "Password.", secret=True)
    database: str | None = setting(None, "Database (none: the user's default database).")
    secure: bool = setting(False, "Connect with HTTPS.")
    verify: bool = setting(True, "Verify the server's TLS certificate (HTTPS).")
    settings: Mapping[str, object] = field(default_factory=dict)
    compress: bool | str = True
    connect_timeout: float = setting(
        10.0, "How long to wait for a connection to ClickHouse.", unit="seconds", minimum=0.001
    )
    send_receive_timeout: float = setting(
        300.0,
        "How long to wait for ClickHouse to take a request or send an answer.",
        unit="seconds",
        minimum=0.001,
    )
    client_name: str = setting("chworkers", "The client name ClickHouse logs in query_log.")
    #: A sharded cluster (docs/sharding.md): then ``hosts`` is every replica, in shard order.
    shards: Cluster | None = None

    def __post_init__(self) -> None:
        validate(self, source="connection")
        hosts: Any = self.hosts
        if isinstance(hosts, Host | str):
            hosts = (hosts,)
        if not hosts:
            raise _fail("hosts", hosts, "at least one host")
        default_port = 8443 if self.secure else 8123
        norm = tuple(h if isinstance(h, Host) else _coerce_host(h, default_port) for h in hosts)
        if self.shards is not None:
            cluster = Cluster.parse(self.shards)
            if cluster.secure is not None and cluster.secure != self.secure:
                raise _fail(
                    "secure",
                    self.secure,
                    "what the shards' URLs say",
                    f" (they use {'https' if cluster.secure else 'http'})",
                )
            object.__setattr__(self, "shards", cluster)
            norm = tuple(r for shard in cluster.shards for r in shard.replicas)
        object.__setattr__(self, "hosts", norm)
        if not isinstance(self.settings, Mapping):
            raise _fail(
                "settings", self.settings, "a mapping of ClickHouse setting names to values"
            )
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        compress = self.compress
        if isinstance(compress, str) and compress.lower() in _BOOL:
            compress = _BOOL[compress.lower()]
        if not isinstance(compress, bool) and compress not in ("lz4", "zstd", "gzip", "br"):
            raise _fail("compress", compress, "true, false, lz4, zstd, gzip or br")
        object.__setattr__(self, "compress", compress)

    @property
    def url(self) -> str:
        """The configuration as a URL, without the password."""
        scheme = "https" if self.secure else "http"
        hosts = ",".join(str(h) for h in self.hosts)
        return f"{scheme}://{self.username}@{hosts}/{self.database or ''}"

    @classmethod
    def coerce(cls, value: ConnectionConfig | str | Mapping[str, object]) -> ConnectionConfig:
        """Accept a configuration, a URL/DSN string or a mapping of field names."""
        if isinstance(value, ConnectionConfig):
            return value
        if isinstance(value, str):
            return cls.from_url(value)
        if isinstance(value, Mapping):
            return cls.from_mapping(value)
        raise ConfigError(
            f"connection options: expected a URL, a mapping or a ConnectionConfig, got {type(value).__name__}",
            key="connection",
            value=value,
            expected="a URL string, a mapping or a ConnectionConfig",
        )

    @classmethod
    def from_url(cls, url: str) -> ConnectionConfig:
        """Parse ``scheme://[user[:password]@]host[:port][,host[:port]...][/database][?options]``.

        Query options named like fields (``compress``, ``connect_timeout``, ``verify``...)
        set them; any other option is a ClickHouse setting.
        """
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in _SCHEMES:
            raise _fail(
                "url",
                url,
                "a URL like http://user:pass@host:8123/db",
                f" (scheme must be one of {', '.join(_SCHEMES)})",
            )
        fields: dict[str, Any] = {"secure": _SCHEMES[scheme.lower()]}
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        if "@" in netloc:
            userinfo, _, netloc = netloc.rpartition("@")
            user, has_pw, password = userinfo.partition(":")
            if user:
                fields["username"] = unquote(user)
            if has_pw:
                fields["password"] = unquote(password)
        if path.strip("/"):
            fields["database"] = unquote(path.strip("/"))
        settings: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)} - {"hosts", "settings", "shards"}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key in names:
                fields[key] = value
            else:
                settings[key] = value
        fields["settings"] = settings
        fields["hosts"] = [h for h in netloc.split(",")]
        return cls.from_mapping(fields)

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> ConnectionConfig:
        """Build from field names; also accepts ``host`` (one or a list), ``port``, ``user``,
        ``url`` (the base, overridden by the other keys) and ``timeouts``
        (``{"connect": s, "send_receive": s}``)."""
        opts: dict[str, Any] = dict(options)
        base: dict[str, Any] = {}
        if "url" in opts:
            url_cfg = cls.from_url(str(opts.pop("url")))
            base = {f.name: getattr(url_cfg, f.name) for f in dataclasses.fields(cls)}
        if "user" in opts:
            opts.setdefault("username", opts.pop("user"))
        timeouts = opts.pop("timeouts", None)
        if timeouts is not None:
            if not isinstance(timeouts, Mapping) or set(timeouts) - {"connect", "send_receive"}:
                raise _fail("timeouts", timeouts, "a mapping with keys connect and send_receive")
            for key, seconds in timeouts.items():
                opts.setdefault(f"{key}_timeout", seconds)
        secure = _bool("secure", opts.get("secure", base.get("secure", False)))
        default_port = 8443 if secure else 8123
        port = opts.pop("port", None)
        if port is not None:
            try:
                default_port = int(port)
            except (TypeError, ValueError):
                raise _fail("port", port, "an integer between 1 and 65535") from None
        hosts = opts.pop("hosts", None)
        host = opts.pop("host", None)
        if hosts is not None and host is not None:
            raise _fail("host", host, "given together with hosts", " (use one of them)")
        shards, weights = opts.pop("shards", None), opts.pop("shard_weights", None)
        if shards is not None:
            if hosts is not None or host is not None:
                raise _fail(
                    "shards",
                    shards,
                    "given together with hosts",
                    " (a cluster's hosts are its replicas)",
                )
            cluster = Cluster.parse(shards, weights)
            opts["shards"] = cluster
            if cluster.secure is not None and "secure" not in opts:
                opts["secure"] = cluster.secure
        elif weights is not None:
            raise _fail("shard_weights", weights, "given with shards")
        given = hosts if hosts is not None else host
        if given is not None:
            items = given.split(",") if isinstance(given, str) else list(given)
            base["hosts"] = tuple(_coerce_host(h, default_port) for h in items)
        elif port is not None:
            base["hosts"] = tuple(
                Host(h.host, default_port) for h in base.get("hosts", (Host("localhost", 8123),))
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(opts) - names)
        if unknown:
            raise ConfigError(
                f"connection option {unknown[0]}: unknown (expected one of {', '.join(sorted(names | {'host', 'port', 'url', 'user', 'timeouts', 'shard_weights'}))})",
                key=unknown[0],
                value=opts[unknown[0]],
                expected="a known connection option",
            )
        base.update(opts)
        return cls(**base)


def _coerce_host(value: Any, default_port: int) -> Host:
    if isinstance(value, Host):
        return value
    if isinstance(value, str):
        return parse_host(value, default_port)
    if isinstance(value, Sequence) and len(value) == 2:
        return parse_host(
            f"{value[0]}:{value[1]}" if ":" not in str(value[0]) else f"[{value[0]}]:{value[1]}",
            default_port,
        )
    raise _fail("host", value, "a host name, 'host:port' or a (host, port) pair")
