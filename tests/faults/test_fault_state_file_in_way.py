"""A file where a state folder belongs: the message says what to do about a file.

``state_dir/spool`` (or ``dead-letter``, ``positions``) being a file stopped the start
with "a file is in the way", then the advice for a folder the daemon's user cannot use:
"fix its owner or mode, e.g. chown -R". No owner or mode makes a file a folder; the
operator has to move or remove it (or point state_dir elsewhere).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chworkers.daemon.statepaths import writable_dir
from chworkers.errors import UnusablePathError


@pytest.mark.parametrize("where", ["spool", "spool/links"])
def test_a_file_in_the_way_is_to_be_moved_not_chowned(tmp_path: Path, where: str) -> None:
    (tmp_path / "spool").write_text("not a folder")
    with pytest.raises(UnusablePathError) as info:
        writable_dir(tmp_path / where, "spool directory")
    said = str(info.value)
    assert "move or remove that file" in said, said
    assert "chown" not in said, said
    assert str(tmp_path / "spool") in said
