"""The one line ``systemctl status`` shows for the daemon (``STATUS=``): throughput,
queue and spool, in short units."""

from __future__ import annotations


def format_status(
    rows_per_second: float,
    queue_depth: int,
    *,
    queue_capacity: int | None = None,
    spool_batches: int | None = None,
    spool_bytes: int | None = None,
    prefix: str | None = None,
) -> str:
    """A ``STATUS=`` line such as ``12.3k rows/s, queue 4/1000, spool 3 batches (1.2 MiB)``."""
    parts = [f"{_si(rows_per_second)} rows/s"]
    parts.append(
        f"queue {queue_depth}"
        if queue_capacity is None
        else f"queue {queue_depth}/{queue_capacity}"
    )
    if spool_batches is not None:
        spool = f"spool {spool_batches} batch{'' if spool_batches == 1 else 'es'}"
        if spool_bytes is not None:
            spool += f" ({_iec(spool_bytes)})"
        parts.append(spool)
    text = ", ".join(parts)
    return f"{prefix}: {text}" if prefix else text


def _si(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}{suffix}"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def _iec(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
