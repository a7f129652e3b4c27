"""The lease broker binds its Unix socket even when $TMPDIR is a long path.

A Unix socket's path holds at most 107 bytes. The broker made its directory in the
temporary directory and bound ``broker.sock`` there, so with a TMPDIR of ~75 characters
or more (pytest-xdist's per-worker temporary directories were enough) every daemon and
supervisor died at start with ``OSError: AF_UNIX path too long``, and left the lease
directory behind. Now the socket goes to /tmp when the path would be too long, and a
broker that cannot start removes what it made.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from chworkers.clickhouse.lease import LeaseBroker
from chworkers.clickhouse.leasedirs import MAX_SOCKET_PATH


def test_a_long_tmpdir_still_gives_a_working_broker_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with LeaseBroker(1) as broker:
        broker.start()
        assert len(os.fsencode(broker.address)) <= MAX_SOCKET_PATH
        client = broker.client("long-tmpdir")
        client.acquire(10)
        assert broker.stats().in_use == 1
        client.release()
        client.close()
    assert not Path(broker.address).parent.exists()
    assert list(deep.iterdir()) == []
