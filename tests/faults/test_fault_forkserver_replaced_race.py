"""How a replaced fork server ended is never lost to a thread asking meanwhile.

``forkserver.ensure_running`` reaps a fork server that died, starts a new one, and only
then wrote how the old one ended into ``_replaced``, outside any lock, while other
threads (the supervisor telling the dead server's workers apart) read it through
``forkserver.ended``. A reader between the reap and the write (the whole start of the
new server, milliseconds) found the server reaped and no record of it: "ended (reaped
elsewhere: its exit status is unknown)" instead of "was killed by SIGKILL" (and two
replacements at once could trim the record twice: a KeyError). The record is now written
under the server lock before it is released, and a reader that finds the server reaped
takes that lock before it looks.

Run in a child interpreter: it kills its own fork server, which this one keeps.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r"""
import os, signal, threading, time
from chworkers.workers import forkserver

forkserver.start_early("forkserver")
seen = {}
for _ in range(3):
    old = forkserver.server_pid()
    os.kill(old, signal.SIGKILL)
    while forkserver.ended(old) is None:
        time.sleep(0.001)
    stop = threading.Event()
    def read():
        while not stop.is_set():
            how = forkserver.ended(old)
            seen[how] = seen.get(how, 0) + 1
    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    time.sleep(0.01)
    restart = forkserver.ensure_running()
    time.sleep(0.01)
    stop.set()
    for t in readers:
        t.join()
    assert restart is not None and restart.ended == "was killed by SIGKILL", restart
    assert forkserver.ended(old) == "was killed by SIGKILL"
print(sorted(seen.items(), key=str))
"""


@pytest.mark.timeout(120)
def test_a_reader_during_the_replacement_sees_how_the_server_ended() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=100
    )
    assert proc.returncode == 0, proc.stderr
    seen = proc.stdout.strip()
    assert "reaped elsewhere" not in seen, seen
    assert "was killed by SIGKILL" in seen, seen
