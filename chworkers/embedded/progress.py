"""A query that fails after ClickHouse sent progress headers: a 200 with the error in
the body.

With ``send_progress_in_http_headers=1`` ClickHouse sends an ``X-ClickHouse-Progress``
header every ``http_headers_progress_interval_ms`` (100 by default) while the query
runs, and the first one sends the status line, 200, with it. A query that fails after
that can no longer change the status: the server writes the exception into the body
(ClickHouse issues #33205, #45381), since 25.11 in its tagged ``__exception__`` block
(the tag in ``X-ClickHouse-Exception-Tag``, sent with the first headers). The endpoint
answers a failed INSERT so when the client asked for progress headers and the insert
ran past the interval, as such a server would.
"""

from __future__ import annotations

import secrets
import time

from chworkers.embedded import summary
from chworkers.embedded.exceptions import exception_block, response_body
from chworkers.embedded.protocol import Response
from chworkers.embedded.request import QueryRequest
from chworkers.errors import ServerError

#: ClickHouse's default ``http_headers_progress_interval_ms``.
DEFAULT_INTERVAL_MS = 100


def headers_went_out(qr: QueryRequest, started: float) -> bool:
    """Whether a server would have sent a progress header (so the 200 status) by now for
    a query of ``qr`` started at ``started`` (``time.monotonic()``)."""
    if qr.settings.get("send_progress_in_http_headers", "0").lower() not in ("1", "true"):
        return False
    try:
        interval = int(qr.settings.get("http_headers_progress_interval_ms", DEFAULT_INTERVAL_MS))
    except ValueError:
        interval = DEFAULT_INTERVAL_MS
    return (time.monotonic() - started) * 1000 >= interval


def answer_failure(version: str, resp: Response, err: ServerError, stats: summary.Stats) -> None:
    """Answer ``err`` as a server whose progress headers went out already: 200, the
    progress so far, the exception in the body. The connection is closed after it (the
    rest of the request's body is not read)."""
    tag = secrets.token_hex(8)  # 16 alphanumeric characters, as ClickHouse's
    resp.status = 200
    resp.failed = True
    resp.keep_alive = False
    resp.set_header("X-ClickHouse-Progress", stats.summary())
    resp.set_header("X-ClickHouse-Exception-Tag", tag)
    resp.set_header("Content-Type", "text/plain; charset=UTF-8")
    resp.send_whole(exception_block(response_body(err, version), tag))
