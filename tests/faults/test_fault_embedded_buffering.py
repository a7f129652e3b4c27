"""Regression tests: the first ``buffer_size`` bytes of a result are held, as in ClickHouse.

Before the fix (issue 10) the endpoint sent the response head with chDB's first block,
so a query failing a few blocks in (well within ClickHouse's 1 MiB response buffer)
came back as HTTP 200 with an ``__exception__`` trailer where ClickHouse answers with
the error's own status; ``buffer_size`` was ignored; ``wait_end_of_query=1`` held
32 MiB of every result in memory where ClickHouse holds ``buffer_size`` (1 MiB).
"""

from __future__ import annotations

from httpcall import call

from chworkers.embedded import EmbeddedClickHouse

FAIL_AT = "SELECT throwIf(number = {n}, 'stop here') AS x, repeat('y', 100) AS pad FROM numbers({total}) SETTINGS max_block_size=1000"


def _post(
    endpoint: EmbeddedClickHouse, target: str, body: str
) -> tuple[int, dict[str, str], bytes]:
    status, headers, data = call(endpoint, target, body.encode(), timeout=60)
    return status, dict(headers), data


def test_error_within_the_first_mebibyte_gets_its_status(endpoint: EmbeddedClickHouse) -> None:
    # ~100 KB of rows before the failing block: all within the held 1 MiB.
    status, headers, body = _post(endpoint, "/", FAIL_AT.format(n=1000 * 5 + 10, total=20000))
    assert status == 500, body[-300:]
    assert headers["X-ClickHouse-Exception-Code"] == "395"
    assert body.startswith(b"Code: 395.")


def test_error_after_the_buffer_is_a_tagged_trailer(endpoint: EmbeddedClickHouse) -> None:
    # ~3 MB of rows before the failing block: the head went out with the first MiB.
    status, headers, body = _post(endpoint, "/", FAIL_AT.format(n=30_000, total=40_000))
    assert status == 200
    tag = headers["X-ClickHouse-Exception-Tag"]
    assert body.endswith(f"{tag}\r\n__exception__\r\n".encode())
    assert b"Code: 395." in body[-1000:]


def test_buffer_size_holds_more(endpoint: EmbeddedClickHouse) -> None:
    status, headers, _ = _post(
        endpoint, f"/?buffer_size={8 << 20}", FAIL_AT.format(n=30_000, total=40_000)
    )
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (500, "395")
    status, _, body = _post(endpoint, "/?buffer_size=lots", "SELECT 1")
    assert status == 400 and b"buffer_size" in body
