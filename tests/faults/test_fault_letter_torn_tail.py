"""A dead letter appended after a line torn by a crash starts a line of its own.

A crash or power loss mid-append can leave a letters file ending in part of a line. The
next letters were appended right after it, the first of them glued to the torn bytes:
a line no reader can parse, and, keyed (a broker's poison, written once by its key
across restarts), counted as written, so the message's letter was never readable.
"""

from __future__ import annotations

import json
from pathlib import Path

from chworkers.daemon.deadletter import DeadLetters
from chworkers.errors import PoisonMessageError


def test_a_letter_after_a_torn_line_is_a_line_of_its_own(tmp_path: Path) -> None:
    letters = DeadLetters(tmp_path)
    letters.ready()
    first = letters.write_errors("ev", [(b"a", PoisonMessageError("bad a"))], reason="poison")
    assert first is not None
    whole = first.read_bytes()
    first.write_bytes(whole + whole[: len(whole) // 2])  # a second letter, torn
    restarted = DeadLetters(tmp_path)
    restarted.ready()
    error = PoisonMessageError("bad b")
    path = restarted.write_errors("ev", [(b"b", error)], reason="poison", keys=["p:2:0"])
    assert path == first
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and lines[1] == whole[: len(whole) // 2]
    assert json.loads(lines[2])["record"] == "b"
    # Its key counts at the next start: verified where its line is.
    again = DeadLetters(tmp_path)
    again.ready()
    assert again.write_errors("ev", [(b"b", error)], reason="poison", keys=["p:2:0"]) is None
