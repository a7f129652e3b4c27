from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from chworkers.deadletter import DeadLetters, Rejected, is_row_error
from chworkers.errors import ConnectError, ServerError
from chworkers.metrics import Metrics


def test_row_errors_are_data_errors_only() -> None:
    assert is_row_error(ServerError("bad number", code=72, name="CANNOT_PARSE_NUMBER"))
    assert is_row_error(ServerError("unknown field", code=117, name="INCORRECT_DATA"))
    assert not is_row_error(ServerError("no table", code=60, name="UNKNOWN_TABLE"))
    assert not is_row_error(ServerError("too many parts", code=252, name="TOO_MANY_PARTS"))
    assert not is_row_error(ConnectError("refused"))


def test_dead_letters_are_json_lines_with_reason(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    letters = DeadLetters(tmp_path, metrics=Metrics(registry))
    err = ServerError(
        "Code: 72. DB::Exception: Cannot parse number (CANNOT_PARSE_NUMBER)",
        code=72,
        name="CANNOT_PARSE_NUMBER",
    )
    path = letters.write(
        "db.events",
        [Rejected(b'{"n":"x"}\n', err), Rejected(b'{"n":"\xff"}\n', err)],
        pipeline="p",
        batch="tok",
    )
    assert path is not None and path.parent == tmp_path / "db.events"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["record"] for e in entries] == ['{"n":"x"}', '{"n":"\\xff"}']
    assert entries[0]["error"] == {
        "code": 72,
        "name": "CANNOT_PARSE_NUMBER",
        "message": err.message,
    }
    assert entries[0]["pipeline"] == "p" and entries[0]["batch"] == "tok"
    assert (
        registry.get_sample_value("chworkers_dead_letter_rows_total", {"table": "db.events"}) == 2
    )
    assert letters.write("db.events", []) is None
