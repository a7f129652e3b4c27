"""A timestamp columns lookup whose future was cancelled (the supervisor stopping, a
caller giving up) counts as a failed lookup: the table is looked up again after
RETRY_AFTER. ``future.exception()`` raised CancelledError in the done callback, which
concurrent.futures only logged, and the table stayed "being looked up" for good: its
batches were never checked again."""

from __future__ import annotations

from concurrent.futures import Future

from chworkers.clickhouse.epochs import TimestampColumns
from chworkers.daemon.epochcheck import RETRY_AFTER, EpochCheck

SETTINGS = {"date_time_input_format": "best_effort"}
TS = TimestampColumns(("ts",), frozenset({"ts"}))
SECONDS = b'{"n":1,"ts":1796119200}\n'


def test_a_cancelled_lookup_is_tried_again_later() -> None:
    now = [100.0]
    asked: list[Future[TimestampColumns]] = []

    def lookup(table: str) -> Future[TimestampColumns]:
        future: Future[TimestampColumns] = Future()
        asked.append(future)
        return future

    check = EpochCheck(lookup, clock=lambda: now[0])
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) is None
    assert len(asked) == 1
    assert asked[0].cancel()
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) is None
    assert len(asked) == 1  # not before RETRY_AFTER, as any failed lookup
    now[0] += RETRY_AFTER
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) is None
    assert len(asked) == 2
    asked[1].set_result(TS)
    assert check.check("ev", "JSONEachRow", SETTINGS, SECONDS) == TS
