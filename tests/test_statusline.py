"""The ``STATUS=`` line ``systemctl status`` shows for the daemon."""

from __future__ import annotations

from chworkers.ops.statusline import format_status


def test_format_status() -> None:
    assert format_status(12_345.6, 4, queue_capacity=1000) == "12.3k rows/s, queue 4/1000"
    assert (
        format_status(0, 0, spool_batches=3, spool_bytes=1_300_000, prefix="waiting for ClickHouse")
        == "waiting for ClickHouse: 0 rows/s, queue 0, spool 3 batches (1.2 MiB)"
    )
    assert format_status(2.5, 1, spool_batches=1, spool_bytes=512) == (
        "2.5 rows/s, queue 1, spool 1 batch (512 B)"
    )
    assert format_status(3.2e6, 0) == "3.2M rows/s, queue 0"
