"""What chworkers/clickhouse/driver.py takes from clickhouse-connect's private transport
is still there, on the version installed, or this fails.

driver.py installs its two hooks only where the transport has the attribute it expects
(``hasattr``): on a clickhouse-connect that renamed one, connections went on without it
and nothing said so. Without the request hook, clickhouse-connect repeats an insert once
on a reset connection, token or not (rows twice in a table that does not deduplicate);
without the error-handler hook, an HTTP status is lost and the retry policy classifies
less. pyproject.toml bounds clickhouse-connect to the versions this passes with.
"""

from __future__ import annotations

import inspect

import clickhouse_connect

from chworkers.clickhouse.connection import Connection
from chworkers.embedded import EmbeddedClickHouse


def test_the_transport_hooks_are_installed(endpoint: EmbeddedClickHouse) -> None:
    version = clickhouse_connect.__version__
    conn = Connection(endpoint.url)
    try:
        backend = getattr(conn.client, "_backend", None)
        assert backend is not None, f"clickhouse-connect {version} has no _backend"
        request = backend.request
        original = getattr(request, "__wrapped__", None)
        assert original is not None, f"clickhouse-connect {version}: request hook missing"
        assert "retryable" in inspect.signature(original).parameters, (
            f"clickhouse-connect {version}: request() takes no retryable= any more"
        )
        handler = backend.error_handler
        assert getattr(handler, "__wrapped__", None) is not None, (
            f"clickhouse-connect {version}: error_handler hook missing"
        )
        assert conn.command("SELECT 1") == 1  # and it still talks through them
    finally:
        conn.close()
