"""A batch sent from its memory file whose request failed: the file is not refilled
while the server may still read that request.

A worker sends a large batch (a memory file of the supervisor's) with ``socket.sendfile``,
which hands the kernel the file's pages, not a copy of them. A request that times out
with its last bytes still unread (in the worker's socket or the server's) goes on to the
server after the worker gave up, read from those pages as they are *then*. The
supervisor kept a done task's file for the next batch whatever became of its request, so
the next batch's bytes went out under the failed request's token: rows of the second
batch inserted as the first, and the first, sent again under its token, dropped by
ClickHouse as a repeat: lost. A file a send left in doubt is closed instead of kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from chworkers.embedded import EmbeddedClickHouse
from chworkers.workers import sharedbuf

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sharedbuf.usable(), reason="no memory files on this system"),
]

ROWS = 200_000  # 1.6 MB of UInt64: through shared memory (1 MiB or more)
HELD = 64 << 10  # the last bytes of the first request, left unread until released


class HoldingProxy:
    """Forwards TCP connections to ``target``. Of the first request whose head holds
    ``marker``, the last :data:`HELD` bytes are left unread in the kernel (the client's
    send completes, then it waits for an answer that does not come) until ``released``
    is set; then that request goes on to the server, and its answer is kept in
    ``held_answer``."""

    def __init__(self, target: tuple[str, int], marker: bytes) -> None:
        self.target = target
        self.marker = marker
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.released = threading.Event()
        self.answered = threading.Event()
        self.held_answer = b""
        self._held: socket.socket | None = None  # the connection to the server it went on
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(client, server), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        """Client to server, holding the marked request's tail."""
        with contextlib.suppress(OSError):
            pending = b""
            while data := client.recv(1 << 16):
                pending += data
                at = -1 if self._held is not None else pending.find(self.marker)
                if at < 0 or b"\r\n\r\n" not in pending[at:]:
                    if at < 0:
                        server.sendall(pending)
                        pending = b""
                    continue  # the marked request's head, not whole yet
                self._held = server
                head_end = pending.index(b"\r\n\r\n", at) + 4
                found = re.search(rb"(?i)content-length:\s*(\d+)", pending[at:head_end])
                assert found is not None, pending[:head_end]
                left = head_end + int(found.group(1)) - HELD  # forwarded before the hold
                while len(pending) < left and (data := client.recv(1 << 16)):
                    pending += data
                server.sendall(pending[:left])
                pending = pending[left:]
                self.released.wait(60)  # the rest is read from the pages as they are now
                server.sendall(pending)
                pending = b""
            server.shutdown(socket.SHUT_WR)

    def _down(self, client: socket.socket, server: socket.socket) -> None:
        """Server to client; the held request's answer kept once it is released."""
        with contextlib.suppress(OSError), client, server:
            while data := server.recv(1 << 16):
                if server is self._held and self.released.is_set() and not self.answered.is_set():
                    self.held_answer = data
                    self.answered.set()
                with contextlib.suppress(OSError):
                    client.sendall(data)

    def close(self) -> None:
        self.released.set()
        self.listener.close()


@pytest.fixture
def holding_proxy(endpoint: EmbeddedClickHouse) -> Iterator[HoldingProxy]:
    proxy = HoldingProxy((endpoint.host, endpoint.port), b"insert_deduplication_token=batch-1")
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_batch_whose_request_failed_mid_flight_is_not_overwritten_by_the_next(
    holding_proxy: HoldingProxy, database: str, ch_client: Any, make_sup: Any
) -> None:
    ch_client.command(
        "CREATE TABLE t (n UInt64) ENGINE = MergeTree ORDER BY n "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    first = ch_client.raw_query(f"SELECT number AS n FROM numbers({ROWS})", fmt="Native")
    second = ch_client.raw_query(f"SELECT number + {ROWS} AS n FROM numbers({ROWS})", fmt="Native")
    assert len(first) == len(second) >= sharedbuf.THRESHOLD
    sharedbuf.sweep(0.0)  # no file kept by an earlier test: the second takes the first's
    url = f"http://default:@127.0.0.1:{holding_proxy.port}/{database}?send_receive_timeout=1s"
    sup = make_sup(clickhouse=url, workers=1, retry={"max_attempts": 1})

    failed = sup.insert_raw("t", first, "Native", deduplication_token="batch-1")
    with pytest.raises(Exception, match=r"(?i)time"):
        failed.result(60)
    # Sent from its file (the worker marked it) and left in doubt: closed, not kept.
    assert sharedbuf.kept_bytes() == 0
    # The caller goes on with its next batch while the first request is still on its
    # way (its last bytes unread), and will send the first again.
    assert sup.insert_raw("t", second, "Native", deduplication_token="batch-2").result(60)
    holding_proxy.released.set()
    assert holding_proxy.answered.wait(60)
    assert b" 200 " in holding_proxy.held_answer.split(b"\r\n", 1)[0]  # it did land
    sup.insert_raw("t", first, "Native", deduplication_token="batch-1").result(60)

    rows = [r[0] for r in ch_client.query("SELECT n FROM t ORDER BY n").result_rows]
    assert rows == list(range(2 * ROWS))  # each batch's own rows, each once


def _kept_after(send: Any) -> bool:
    """Whether a buffer's file is kept for the next batch once ``send(view)`` ran on the
    worker's view of it and its task is done."""
    pool = sharedbuf._Pool()
    saved, sharedbuf._POOL = sharedbuf._POOL, pool
    try:
        buf = sharedbuf.SharedBuffer(b"x" * sharedbuf.THRESHOLD)
        send(buf.ref)
        buf.close()
        return len(pool) == 1
    finally:
        sharedbuf._POOL = saved
        pool.sweep(0.0)


def test_only_a_file_every_send_of_which_was_answered_is_kept() -> None:
    def answered(ref: sharedbuf.SharedRef) -> None:
        view = ref.open().obj
        assert isinstance(view, sharedbuf.SharedView)
        assert view.sending()
        view.sent(True)

    def failed_then_answered(ref: sharedbuf.SharedRef) -> None:
        view = ref.open().obj
        assert isinstance(view, sharedbuf.SharedView)
        assert view.sending()
        view.sent(False)  # a timeout: retried by the same worker ...
        assert view.sending()
        view.sent(True)  # ... and answered: the first request may still be on its way

    def killed_then_answered(ref: sharedbuf.SharedRef) -> None:
        pid = os.fork()
        if pid == 0:  # a worker killed while it sends the file
            view = ref.open().obj
            os._exit(0 if isinstance(view, sharedbuf.SharedView) and view.sending() else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        answered(ref)  # sent again by another worker

    assert _kept_after(lambda ref: None)  # never sent from its file
    assert _kept_after(answered)
    assert not _kept_after(failed_then_answered)
    assert not _kept_after(killed_then_answered)
