"""Lease brokers killed with SIGKILL no longer leave their directories behind for good.

A lease broker removes its private directory (socket, slot file) when it closes; one
whose process was killed never did, so every ``kill -9`` of a daemon or a supervisor left
a ``chworkers-lease-*`` directory in the temporary directory (this machine had collected
1,800). Now the first broker of a process removes the directories of dead brokers: old
enough, and nobody listening on their socket. Live brokers' directories, and directories
too young to judge, stay.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chworkers.clickhouse.leasedirs import STALE_AFTER, sweep_stale

_BROKER = """
import sys, time
from chworkers.clickhouse.lease import LeaseBroker
broker = LeaseBroker(1)
broker.start()
print(broker.address, flush=True)
time.sleep(600)
"""


def _start_broker(env: dict[str, str]) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _BROKER], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    assert address, "the broker process printed no address"
    return proc, Path(address).parent


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory short enough for the brokers' sockets (pytest's own can be
    too long: the brokers would then use /tmp, where this test cannot tell its own)."""
    path = Path(tempfile.mkdtemp(prefix="lds-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _age(path: Path) -> None:
    old = time.time() - STALE_AFTER - 60
    os.utime(path, (old, old))


def test_dead_brokers_directories_are_swept_live_and_young_ones_stay(short_tmp: Path) -> None:
    tmp_path = short_tmp
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    dead, dead_dir = _start_broker(env)
    young, young_dir = _start_broker(env)
    live, live_dir = _start_broker(env)
    try:
        for proc in (dead, young):
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert dead_dir.is_dir() and young_dir.is_dir()  # what SIGKILL used to leave
        _age(dead_dir)
        _age(live_dir)
        # A new process's first broker sweeps before it makes its own directory.
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "from chworkers.clickhouse.lease import LeaseBroker\n"
                "with LeaseBroker(1) as b:\n    b.start()\n",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert not dead_dir.exists(), out.stderr
        assert young_dir.is_dir()  # too young: its broker might be starting
        assert live_dir.is_dir()  # someone listens on its socket
        assert sorted(tmp_path.iterdir()) == sorted([young_dir, live_dir])
        live.send_signal(signal.SIGKILL)
        live.wait(10)
        _age(young_dir)
        assert sweep_stale([str(tmp_path)]) == 2
        assert list(tmp_path.iterdir()) == []
    finally:
        for proc in (dead, young, live):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_only_old_directories_of_dead_brokers_are_swept(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "chworkers-lease-notadir"
    not_a_dir.write_text("not a broker's")
    other_name = tmp_path / "someone-elses"
    other_name.mkdir()
    for path in (not_a_dir, other_name):
        _age(path)
    assert sweep_stale([str(tmp_path)]) == 0
    assert not_a_dir.exists() and other_name.exists()
