"""A spool whose ``links/`` is no folder it can read is refused at start with a clear
error, not a traceback.

The start reads ``links/`` to remove the links no batch names; only a missing folder
was expected: a file in its place, or a folder the daemon's user cannot read, raised a
bare OSError out of the spool (outside chworkers' error tree), which ``chworkers run``
printed as a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool
from chworkers.errors import UnusablePathError


def test_a_links_file_in_place_of_the_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "links").write_text("not a folder")
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    with pytest.raises(
        UnusablePathError, match=r"cannot read the spool's links folder .*links: a file is in"
    ):
        spool.recover()
