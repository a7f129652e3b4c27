"""A dead-letter key index that can be read but not rewritten at start is said so.

At start the daemon reads ``dead-letter/@letter-keys``, checks it against the letter
files, then rewrites it with the verified keys (through ``@letter-keys.tmp``). When the
rewrite failed the error said the daemon could not READ the dead-letter directory, which
sent the operator after the wrong file and the wrong permission.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chworkers.daemon.deadletter import DeadLetters
from chworkers.daemon.letterkeys import INDEX_NAME
from chworkers.errors import UnusablePathError


def test_a_failed_rewrite_of_the_key_index_says_rewrite_and_where(tmp_path: Path) -> None:
    directory = tmp_path / "dead-letter"
    directory.mkdir()
    index = directory / INDEX_NAME
    index.write_text(json.dumps({"keys": ["src:1:0"]}) + "\n")
    blocker = directory / (INDEX_NAME + ".tmp")
    blocker.mkdir()  # the rewrite's temporary file cannot be created: a directory is there

    with pytest.raises(UnusablePathError) as caught:
        DeadLetters(directory).ready()
    message = str(caught.value)
    assert "cannot rewrite the dead letters' key index" in message, message
    assert str(index) in message and str(blocker) in message, message
    assert "cannot read" not in message, message


def test_an_unreadable_key_index_still_says_read(tmp_path: Path) -> None:
    directory = tmp_path / "dead-letter"
    directory.mkdir()
    (directory / INDEX_NAME).mkdir()  # read_bytes of a directory fails

    with pytest.raises(UnusablePathError) as caught:
        DeadLetters(directory).ready()
    assert "cannot read the dead letters' key index" in str(caught.value)
