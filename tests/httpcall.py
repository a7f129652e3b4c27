"""One raw HTTP request to an embedded endpoint, for tests that look at what goes over
the wire (status, headers, body as sent) rather than through clickhouse-connect."""

from __future__ import annotations

import http.client
from typing import Any

from chworkers.embedded import EmbeddedClickHouse


def call(
    endpoint: EmbeddedClickHouse,
    target: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    conn: http.client.HTTPConnection | None = None,
    *,
    timeout: float = 30.0,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """``(status, headers, body)`` of one request; on ``conn`` (kept open) if given,
    else on a connection of its own."""
    own = conn is None
    c = conn or http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
    try:
        c.request(method, target, body=body, headers=headers or {}, encode_chunked=False)
        resp = c.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        if own:
            c.close()
