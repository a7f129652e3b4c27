"""Regression tests: what chDB cannot do is answered with ClickHouse's error, not ignored.

Before the fix (issue 10) ``client_protocol_version`` and ``role`` were accepted and
silently ignored: a client asking for protocol-revision Native blocks got revision-0
bytes, and a query asking for a role ran without it.
"""

from __future__ import annotations

from httpcall import call

from chworkers.embedded import EmbeddedClickHouse


def _post(endpoint: EmbeddedClickHouse, target: str, body: bytes) -> tuple[int, str, bytes]:
    status, headers, data = call(endpoint, target, body)
    return status, headers.get("X-ClickHouse-Exception-Code", ""), data


def test_native_for_a_protocol_revision_is_refused(endpoint: EmbeddedClickHouse) -> None:
    status, code, body = _post(
        endpoint, "/?client_protocol_version=54405", b"SELECT 1 AS check FORMAT Native"
    )
    assert (status, code) == (501, "48"), body
    assert b"client_protocol_version" in body
    # Revision 0, other formats and statements without a result are unaffected.
    assert _post(endpoint, "/?client_protocol_version=0", b"SELECT 1 FORMAT Native")[0] == 200
    assert _post(endpoint, "/?client_protocol_version=54405", b"SELECT 1")[::2] == (200, b"1\n")


def test_role_is_refused(endpoint: EmbeddedClickHouse) -> None:
    status, code, body = _post(endpoint, "/?role=analyst", b"SELECT 1")
    assert (status, code) == (404, "511"), body
    assert b"analyst" in body
