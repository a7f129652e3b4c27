"""The Redis client of the Redis Stream source: a connection from the settings (TLS and
credentials passed through), and the small conversions of its replies."""

from __future__ import annotations

import hashlib
import socket
import urllib.parse
from typing import TYPE_CHECKING, Any

from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.tlsfiles import tls_files_context
from chworkers.errors import BrokerError, ConfigError
from chworkers.wording import plural

if TYPE_CHECKING:
    import redis


def default_consumer(state_dir: str) -> str:
    """A consumer name that stays the same across restarts of one daemon: the host name
    and a digest of its state directory."""
    digest = hashlib.sha256(state_dir.encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


def connect(options: RedisSourceSettings, where: str) -> redis.Redis:
    """A redis-py client for the settings (TLS and credentials passed through): a
    ``RedisCluster`` with ``cluster = true`` (typed as a Redis: the commands the source
    sends are the same)."""
    try:
        import redis
    except ImportError as exc:  # an optional extra
        raise ConfigError(
            f"{where}: source = 'redis' needs redis-py: pip install 'chworkers[redis]'",
            key="source",
            value="redis",
            expected="redis-py installed",
        ) from exc
    # RESP2 (redis-py 8 defaults to RESP3): the same reply shapes with every redis-py.
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": 5.0,
        "socket_timeout": 30.0,
        "protocol": 2,
    }
    if options.username is not None:
        kwargs["username"] = options.username
    password = options.secret(where)
    if password is not None:
        kwargs["password"] = password
    if options.url.startswith("rediss://"):
        kwargs["ssl_cert_reqs"] = options.ssl_cert_reqs
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if getattr(options, key) is not None:
                kwargs[key] = getattr(options, key)
    try:
        if options.cluster:
            return _cluster(options.url, kwargs)
        return redis.Redis.from_url(options.url, **kwargs)
    except ValueError as exc:
        raise invalid_url(options, where, exc) from exc


def check_url(options: RedisSourceSettings, where: str) -> None:
    """Raise :class:`ConfigError` now if the URL is not one redis-py takes (a cluster
    client is made only when the source first talks to Redis)."""
    import redis.connection

    try:
        redis.connection.parse_url(options.url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise invalid_url(options, where, exc) from exc


def check_files(options: RedisSourceSettings, where: str) -> None:
    """Raise :class:`ConfigError` now if the password file or a TLS file cannot be used
    (redis-py would read them at each connection attempt, in the background)."""
    options.secret(where)
    if options.url.startswith("rediss://"):
        tls_files_context(
            ca=("redis.ssl_ca_certs", options.ssl_ca_certs),
            cert=("redis.ssl_certfile", options.ssl_certfile),
            key=("redis.ssl_keyfile", options.ssl_keyfile),
            where=where,
        )


def invalid_url(options: RedisSourceSettings, where: str, exc: ValueError) -> ConfigError:
    return ConfigError(
        f"{where}: redis.url = {display_url(options.url)!r} is invalid: {exc}",
        key="redis.url",
        value=display_url(options.url),
        expected="redis://host:port/db or rediss://...",
    )


def failures() -> tuple[type[Exception], ...]:
    """What redis-py raises when Redis fails or refuses: its errors, and a cluster
    client's own (a command it cannot route, a node not in cluster mode)."""
    import redis.exceptions

    return (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)


def _cluster(url: str, kwargs: dict[str, Any]) -> redis.Redis:
    """A ``RedisCluster``: it asks a node for the cluster's slots as it is made, so an
    unreachable cluster (or a Redis not in cluster mode) fails here, as a
    :class:`BrokerError`."""
    import redis.cluster

    try:
        cluster: Any = redis.cluster.RedisCluster.from_url(url, **kwargs)
    except failures() as exc:
        raise BrokerError(f"redis {display_url(url)}: {type(exc).__name__}: {exc}") from exc
    return cluster  # type: ignore[no-any-return]


def key_prefix(options: RedisSourceSettings) -> str:
    """Where the keys beside the stream begin: ``<stream>:chworkers:<group>``. In a
    cluster the scripts' keys must share the stream's hash slot: the stream's name is
    put in braces (a hash tag: the slot of ``{events}:...`` is the slot of ``events``),
    unless it has a hash tag of its own, which the keys then share."""
    stream = options.stream
    if options.cluster and not has_hash_tag(stream):
        stream = "{" + stream + "}"
    return f"{stream}:chworkers:{options.group}"


def has_hash_tag(key: str) -> bool:
    """Whether Redis Cluster hashes ``key`` by a ``{tag}`` (a non-empty one)."""
    start = key.find("{")
    return start >= 0 and key.find("}", start + 1) > start + 1


def display_url(url: str) -> str:
    """The URL without its credentials, for logs and errors."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def raw(response: Any, **options: Any) -> Any:
    """A reply as the parser gave it (a response callback that does nothing)."""
    return response


def text(value: Any) -> str:
    """bytes or str as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sort key (ids do not sort as text)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def describe(options: RedisSourceSettings, where: str) -> str:
    """One line on the stream and its consumer group, for ``chworkers check``; raises
    :class:`BrokerError` when Redis does not answer or refuses."""

    client = connect(options, where)
    stream, group = options.stream, options.group
    try:
        client.ping()
        if not client.exists(stream):
            return f"stream {stream} does not exist yet (`run` creates it with the group)"
        length = client.xlen(stream)
        groups = {text(g["name"]): g for g in client.xinfo_groups(stream)}
        found = groups.get(group)
        if found is None:
            return (
                f"stream {stream}: {length} entries; group {group} not created yet "
                f"(`run` creates it, from {options.start_id!r})"
            )
        line = (
            f"stream {stream}: {length} entries; group {group}: "
            f"{plural(found['consumers'], 'consumer')}, {found['pending']} pending, "
            f"lag {found.get('lag')}"
        )
        return line + unannounced(client, options)
    except failures() as exc:
        raise BrokerError(f"redis {display_url(options.url)}: {type(exc).__name__}: {exc}") from exc
    finally:
        client.close()


def unannounced(client: Any, options: RedisSourceSettings) -> str:
    """What ``check`` says of the group's consumers that did not announce their
    ``claim_idle`` (docs/brokers.md, "The manifest's check"): "" when none."""
    names = {text(c["name"]) for c in client.xinfo_consumers(options.stream, options.group)}
    names -= {text(n) for n in client.hkeys(f"{key_prefix(options)}:consumers")}
    if not names:
        return ""
    shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
    return (
        f"; {plural(len(names), 'consumer')} not announced ({shown}: a daemon of an older version, "
        "or another client): every manifest looks its ids up one by one until they are "
        "gone (XGROUP DELCONSUMER once they hold nothing)"
    )


__all__ = [
    "check_url",
    "connect",
    "default_consumer",
    "describe",
    "display_url",
    "entry_order",
    "failures",
    "has_hash_tag",
    "invalid_url",
    "key_prefix",
    "raw",
    "text",
    "unannounced",
]
