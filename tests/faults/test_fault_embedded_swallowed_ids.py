"""Regression test: the swallowed-errors check tells its insert's error by query id.

chDB's streaming insert swallows what the table's insert chain throws (a ``MATERIALIZED``
``throwIf``, code 395); the endpoint finds it in ``system.errors`` after the insert. The
check took only a few codes for an insert's own (any other code's error, the insert's
included, was dropped as "another query's"), and of those codes any error of the same
second: an insert whose column expression threw was answered 200 with its rows lost,
and one that landed was failed for another insert's error. It now goes by the query id
each error names (chDB's connection keeps its insert's for the next queries): its own
error of any code is found, another query's alone is not taken for it, and its own
hidden behind a later one of the same code is answered (the safe side), saying so. On a
chDB that would not keep the id (the probe says so), every error of the insert's time is
taken for its own.

Real chDB in a child process (chDB starts threads a later ``fork()`` of the test process
should not inherit), driven through the endpoint's own ``Engine`` and check, with a
second connection raising errors between the insert and its check: a moment no HTTP
client can hit on purpose.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from chworkers.embedded import swallowed
    from chworkers.embedded.engine import Engine

    engine = Engine(Path(sys.argv[1]))
    mine, other = engine.connect(), engine.connect()
    mine.query(
        b"CREATE TABLE m (x UInt32, v UInt8 MATERIALIZED throwIf(x > 5, 'mine')) "
        b"ENGINE = Memory", "TSV",
    )

    def case(body, meanwhile):
        since, before = int(time.time()), swallowed.error_counts(mine)
        handle = mine.send_insert(b"INSERT INTO m", "TSV")
        mine.insert_append(handle, body)
        mine.insert_done(handle)  # returns as if written, whatever the table threw
        for sql in meanwhile:  # another query's errors, before the insert's check
            try:
                other.query(sql.encode(), "TSV")
            except RuntimeError:
                pass
        err = swallowed.swallowed_error(mine, before, since)
        return None if err is None else [err.code, err.message]

    other_395 = "SELECT throwIf(1, 'other')"
    print(json.dumps({
        "ids": swallowed.insert_ids_known(),
        "ours": case(b"1\\n7\\n", []),
        "ours, then another code": case(b"7\\n", ["SELECT 1 +"]),
        "fine, another query's error": case(b"1\\n", [other_395]),
        "fine, two of them": case(b"1\\n", [other_395, other_395]),
        "ours hidden by another's": case(b"7\\n", [other_395]),
        "fine, syntax errors": case(b"1\\n", ["SELECT 1 +", "SELECT 1 +"]),
        "rows": mine.query(b"SELECT count() FROM m", "TSV").bytes().decode().strip(),
    }))
    # A chDB that would not keep the insert's query id (as the probe would find): the
    # check cannot tell, and takes every error of the insert's time for its own.
    swallowed.probe_with(lambda: False)
    print(json.dumps({
        "ids": swallowed.insert_ids_known(),
        "ours": case(b"7\\n", []),
        "fine, another query's error": case(b"1\\n", [other_395]),
        "fine, syntax errors": case(b"1\\n", ["SELECT 1 +"]),
    }))
    """
)


def test_an_inserts_error_is_told_by_its_query_id(tmp_path: Path) -> None:
    script = tmp_path / "check.py"
    script.write_text(_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got, unknown = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert got["ids"] is True  # this chDB keeps its insert's query id
    # Its own error, whatever its code, with its own message.
    assert got["ours"][0] == 395 and "mine" in got["ours"][1], got
    assert got["ours, then another code"][0] == 395, got
    assert "mine" in got["ours, then another code"][1], got
    # Another query's error alone is not the insert's; neither are syntax errors.
    assert got["fine, another query's error"] is None, got
    assert got["fine, syntax errors"] is None, got
    # Unsure: the code rose twice and the last was another query's.
    for name in ("fine, two of them", "ours hidden by another's"):
        code, message = got[name]
        assert code == 395, got
        assert "the last by another query" in message and "not answered as written" in message
    assert got["rows"] == "3"  # the three fine inserts
    # Without the ids: the safe side for every code but those raised before running.
    assert unknown["ids"] is False
    assert unknown["ours"][0] == 395 and "mine" in unknown["ours"][1], unknown
    code, message = unknown["fine, another query's error"]
    assert code == 395 and "does not tell which query" in message, unknown
    assert unknown["fine, syntax errors"] is None, unknown
