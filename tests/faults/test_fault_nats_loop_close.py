"""The NATS source's event loop is closed with the source (natsclient.Loop.close): it
was only stopped, so every source closed (a reload, a stop, ``chworkers check``) left
its selector and the socket pair it wakes up through open until garbage collection,
which warned of them (ResourceWarning: unclosed event loop, unclosed socket)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("nats")

from chworkers.daemon.brokers.natsclient import Loop


def test_a_closed_loop_is_closed_not_only_stopped() -> None:
    loop = Loop("test-loop")
    assert loop.call(asyncio.sleep(0, "ran"), where="test") == "ran"
    loop.close()
    assert not loop.thread.is_alive()
    assert loop.loop.is_closed()
