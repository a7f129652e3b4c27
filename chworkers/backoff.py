"""Exponential backoff with a cap: how long to wait before the next try.

One function for every loop that waits longer while something keeps failing: the retry
policy's backoff (``chworkers.clickhouse.retry``), a host's cooldown, the daemon's
per-batch and table-creation retries, and restarting the embedded ClickHouse child.
It sits at the base so that layers which know nothing of each other (``clickhouse``,
``embedded``, ``daemon``) share it.
"""

from __future__ import annotations

__all__ = ["capped_backoff"]


def capped_backoff(initial: float, attempt: int, cap: float, multiplier: float = 2.0) -> float:
    """``min(cap, initial * multiplier ** (attempt - 1))``, for any ``attempt`` count.

    Computed by growing the value until it reaches ``cap``, so the arithmetic never
    overflows (``2.0 * 2 ** 1024`` raises OverflowError, and an integer ``2 ** n`` for a
    huge ``n`` costs memory and time) however long a host, a batch or an outage keeps
    failing. ``attempt`` counts from 1; 0 or less gives 0.
    """
    if attempt < 1:
        return 0.0
    value = max(0.0, initial)
    if value == 0.0 or multiplier <= 1.0:
        return min(cap, value)
    for _ in range(attempt - 1):
        if value >= cap:
            break
        value *= multiplier
    return min(cap, value)
