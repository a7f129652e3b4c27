"""The server a benchmark runs against, and the one database it may touch.

Without a URL the embedded endpoint is started in a temporary directory and stopped
afterwards. With one, the benchmark creates its own database there (marked by a comment)
and drops it at the end; it refuses a database that exists without that mark, and a URL
that names a database of its own, so that nothing else on the server is touched.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from chworkers.clickhouse.dsn import ConnectionConfig
from chworkers.errors import BenchError, ConfigError
from chworkers.settings import redact_url

#: The comment a database created by the benchmark carries; only such a database is
#: ever dropped (a run killed half-way leaves one, and the next run takes it over).
MARK = "created by chworkers bench; dropped when it ends"
DEFAULT_DATABASE = "chworkers_bench"
log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: What every benchmark table is created with: chworkers' recommended engine for
#: inserts retried by deduplication token, so that every path pays the same dedup check.
#: A kept-alive connection idle this long is replaced before use: servers close idle
#: ones (ClickHouse after keep_alive_timeout, the embedded endpoint after 30 s).
_STALE = 2.0
ENGINE = "MergeTree ORDER BY id SETTINGS non_replicated_deduplication_window = 1000"


@dataclass(frozen=True)
class Target:
    """A reachable server and the benchmark's database on it."""

    config: ConnectionConfig  # with ``database`` set to the benchmark's
    embedded: bool
    version: str
    #: the embedded endpoint's process (its CPU can be read); None for a server's URL
    pid: int | None = None

    @property
    def url(self) -> str:
        """The URL to hand to chworkers (credentials included; never print it)."""
        cfg = self.config
        scheme = "https" if cfg.secure else "http"
        auth = urllib.parse.quote(cfg.username, safe="")
        if cfg.password:
            auth += ":" + urllib.parse.quote(cfg.password, safe="")
        hosts = ",".join(str(h) for h in cfg.hosts)
        return f"{scheme}://{auth}@{hosts}/{cfg.database}"

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)

    @property
    def database(self) -> str:
        assert self.config.database is not None
        return self.config.database

    def client(self, **kwargs: Any) -> Any:
        """A plain clickhouse-connect client on the benchmark's database (the baseline
        paths use these, exactly as a user without chworkers would)."""
        import clickhouse_connect  # here: ``chworkers run`` builds this command's parser

        cfg = self.config
        host = cfg.hosts[0]
        return clickhouse_connect.get_client(
            host=host.host,
            port=host.port,
            username=cfg.username,
            password=cfg.password,
            database=cfg.database,
            secure=cfg.secure,
            verify=cfg.verify,
            **kwargs,
        )

    def http(self) -> RawHttp:
        return RawHttp(self.config)

    def create_table(self, client: Any, name: str, columns: str) -> None:
        self.drop_table(client, name)
        client.command(f"CREATE TABLE {name} ({columns}) ENGINE = {ENGINE}")

    def drop_table(self, client: Any, name: str) -> None:
        """Drop table ``name`` of the benchmark's database, and with it any merge of its
        parts still running."""
        client.command(f"DROP TABLE IF EXISTS {name} SYNC")


class RawHttp:
    """POSTs straight to the HTTP interface over one kept-alive connection: the ceiling
    a client library can approach for a given request shape."""

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        host = config.hosts[0]
        if config.secure:
            context = ssl.create_default_context()
            if not config.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host.host, host.port, timeout=600, context=context
            )
        else:
            self._conn = http.client.HTTPConnection(host.host, host.port, timeout=600)
        self._last_used = time.monotonic()

    def post(self, query: str, body: bytes, settings: Mapping[str, object] | None = None) -> None:
        """``query`` with ``body`` as its data and ``settings`` (ClickHouse settings, in
        the URL as clickhouse-connect sends them); raises :class:`BenchError` unless 200."""
        params = {"query": query, "database": self.config.database or "default"}
        params.update({k: str(v) for k, v in (settings or {}).items()})
        headers = {
            "Content-Type": "application/octet-stream",
            "X-ClickHouse-User": self.config.username,
            "X-ClickHouse-Key": self.config.password,
        }
        target = "/?" + urllib.parse.urlencode(params)
        if time.monotonic() - self._last_used > _STALE:
            self._conn.close()  # the server may have closed it meanwhile: a fresh one
        try:
            self._conn.request("POST", target, body, headers)
        except (BrokenPipeError, ConnectionResetError):
            # Closed by the server while sending: it took no complete request, and
            # sending it again on a new connection is safe.
            self._conn.close()
            self._conn.request("POST", target, body, headers)
        response = self._conn.getresponse()
        self._last_used = time.monotonic()
        text = response.read()
        if response.status != 200:
            raise BenchError(
                f"raw POST of {query!r} ({len(body):,} bytes): HTTP {response.status}: "
                f"{text[:300].decode(errors='replace')}"
            )

    def close(self) -> None:
        self._conn.close()


@contextlib.contextmanager
def open_target(url: str | None, database: str = DEFAULT_DATABASE) -> Iterator[Target]:
    """The server at ``url`` (or a fresh embedded endpoint) with ``database`` created for
    the benchmark; the database is dropped (and the endpoint stopped) on exit."""
    if not _NAME.match(database):
        raise ConfigError(
            f"--database {database!r}: not a plain identifier",
            key="database",
            value=database,
            expected="letters, digits and underscores, not starting with a digit",
        )
    with contextlib.ExitStack() as stack:
        if url is None:
            from chworkers.embedded import EmbeddedClickHouse

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chworkers-bench-")))
            endpoint = EmbeddedClickHouse(tmp / "data", log_path=tmp / "clickhouse.log")
            stack.enter_context(endpoint)
            config, embedded = ConnectionConfig.from_url(endpoint.url), True
            pid = endpoint.pid
        else:
            config, embedded, pid = ConnectionConfig.from_url(url), False, None
            if config.database is not None:
                raise ConfigError(
                    f"--url names the database {config.database!r}: the benchmark creates "
                    f"and drops its own ({database!r}, --database to choose another) and "
                    "touches nothing else; give the URL without a database",
                    key="url",
                    value=redact_url(url),
                    expected="http(s)://user:password@host:port with no /database",
                )
        admin = _admin_client(config)
        stack.callback(admin.close)
        version = str(admin.command("SELECT version()"))
        _claim(admin, database, config)
        stack.callback(_drop_at_exit, admin, database, embedded)
        yield Target(replace(config, database=database), embedded, version, pid)


def _admin_client(config: ConnectionConfig) -> Any:
    import clickhouse_connect

    host = config.hosts[0]
    try:
        return clickhouse_connect.get_client(
            host=host.host,
            port=host.port,
            username=config.username,
            password=config.password,
            secure=config.secure,
            verify=config.verify,
        )
    except Exception as exc:
        raise BenchError(f"cannot use ClickHouse at {host}: {exc}") from exc


def _claim(admin: Any, database: str, config: ConnectionConfig) -> None:
    rows = admin.query(
        "SELECT comment FROM system.databases WHERE name = {db:String}",
        parameters={"db": database},
    ).result_rows
    if rows and rows[0][0] != MARK:
        raise BenchError(
            f"database {database!r} already exists on {config.hosts[0]} and was not created "
            "by chworkers bench: refusing to touch it (choose another with --database)"
        )
    if rows:  # left by a run that was killed: ours to take over
        _drop(admin, database)
    admin.command(f"CREATE DATABASE {database} COMMENT '{MARK}'")


def _drop(admin: Any, database: str) -> None:
    rows = admin.query(
        "SELECT comment FROM system.databases WHERE name = {db:String}",
        parameters={"db": database},
    ).result_rows
    if rows and rows[0][0] == MARK:
        admin.command(f"DROP DATABASE {database} SYNC")


def _drop_at_exit(admin: Any, database: str, embedded: bool) -> None:
    """Drop the benchmark's database at the end; a failure (the server gone, e.g. the
    embedded one stopped by the same Ctrl-C) is said, not raised over the results."""
    try:
        _drop(admin, database)
    except Exception as exc:
        if not embedded:  # the embedded one's data goes with its temporary directory
            log.warning(
                "could not drop database %s (%s): drop it yourself, or the next run takes it over",
                database,
                exc,
            )
