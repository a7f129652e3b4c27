"""Clients and names for tests that talk to the embedded endpoint (importable by any test;
conftest.py is not: two of them exist, and which one `import conftest` finds depends on
the collection order)."""

from __future__ import annotations

import uuid
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from chworkers import EmbeddedClickHouse


def make_client(endpoint: EmbeddedClickHouse, **kwargs: Any) -> Client:
    """A clickhouse-connect HTTP client for ``endpoint`` (keyword arguments as get_client)."""
    kwargs.setdefault("host", endpoint.host)
    kwargs.setdefault("port", endpoint.port)
    return clickhouse_connect.get_client(**kwargs)


def unique_name(prefix: str = "t") -> str:
    """A name no other test uses (for databases, tables, sessions)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
