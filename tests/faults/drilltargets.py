"""A drill's ClickHouse: the session's endpoint behind a fault proxy, in a database of
the drill's own (:class:`ProxiedClickHouse`), or the daemon's own embedded child
(:class:`OwnClickHouse`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import clickhouse_connect
from drillbase import TABLE, DrillError
from faultproxy import FaultProxy

if TYPE_CHECKING:
    from drilldaemon import DaemonUnderTest


class ProxiedClickHouse:
    """The session's endpoint, reached by the daemon through a fault proxy, in a
    database of the drill's own; checked directly (never through the proxy)."""

    def __init__(self, endpoint: Any, database: str, proxy: FaultProxy) -> None:
        self.endpoint = endpoint
        self.database = database
        self.proxy = proxy
        self.faults = 0

    @property
    def daemon_url(self) -> str:
        return f"{self.proxy.url}/{self.database}"

    def client(self, daemon: DaemonUnderTest | None = None) -> Any:
        return clickhouse_connect.get_client(
            host=self.endpoint.host, port=self.endpoint.port, database=self.database
        )

    def rows_and_ids(self) -> tuple[int, int]:
        """Rows in the drill's table and distinct ids among them (equal: exactly once)."""
        client = self.client()
        try:
            rows, distinct = client.query(
                f"SELECT count(), uniqExact(id) FROM {TABLE}"
            ).result_rows[0]
        finally:
            client.close()
        return int(rows), int(distinct)

    def down(self) -> None:
        """ClickHouse is unreachable: connections refused, open ones cut."""
        self.faults += 1
        self.proxy.set("refuse")

    def slow(self, delay: float) -> None:
        self.faults += 1
        self.proxy.set("delay", delay=delay)

    def up(self) -> None:
        self.proxy.set("pass")


class OwnClickHouse:
    """The daemon's own embedded ClickHouse child (``url = "embedded"``)."""

    daemon_url = "embedded"

    def client(self, daemon: DaemonUnderTest | None = None) -> Any:
        if daemon is None or daemon.embedded_url is None:
            raise DrillError("the daemon's embedded ClickHouse URL is not known yet")
        host, port = daemon.embedded_url.removeprefix("http://").rsplit(":", 1)
        return clickhouse_connect.get_client(host=host, port=int(port))


Target = ProxiedClickHouse | OwnClickHouse
