"""A batch being gathered: its limits, and the buffer its records wait in until it is cut.

:class:`BatchLimits` says when the :class:`~chworkers.daemon.batcher.Batcher` cuts a
batch (a pipeline's ``max_rows``, ``max_bytes`` and ``max_delay``); a :class:`Buffer`
holds one key's records and tickets until then, and is chained after the key's previous
cut so that the batches of one key are spooled in order.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

from chworkers.daemon.ticket import Ticket
from chworkers.settings import setting, validate

__all__ = ["BatchLimits", "Buffer", "BufferKey", "overflows"]


@dataclasses.dataclass(frozen=True)
class BatchLimits:
    """When to cut a batch: whichever limit is reached first (a pipeline's
    ``max_rows``, ``max_bytes`` and ``max_delay`` are these declarations)."""

    max_rows: int = setting(100_000, "Cut a batch at this many rows.", minimum=1)
    max_bytes: int = setting(16 * 1024 * 1024, "Cut a batch at this size.", unit="bytes", minimum=1)
    max_delay: float = setting(
        1.0, "Cut a batch when its first record is this old.", unit="seconds", minimum=0.001
    )

    def __post_init__(self) -> None:
        validate(self, source="batch limits")


BufferKey = tuple[str, str, str, tuple[tuple[str, str], ...], bytes, str, bool]


@dataclasses.dataclass(eq=False)
class Buffer:
    key: BufferKey
    pipeline: str
    table: str
    format: str
    settings: Mapping[str, Any]
    limits: BatchLimits
    started: float
    #: ``*WithNames``: the header record every batch of the key starts with.
    header: bytes = b""
    #: A deduplication token of the caller's (the batch is the one add that has it).
    token: str = ""
    #: Kept in the spool's memory tier, not written to disk (a broker's batch).
    memory: bool = False
    tickets: list[Ticket] = dataclasses.field(default_factory=list)
    rows: int = 0
    size: int = 0
    # Batches of one key are spooled in the order they were cut, so that a position
    # carried by a later batch is never saved before an earlier batch is on disk.
    after: Buffer | None = None
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: Records that had to be spooled (retry) were given up on: later cuts of the key
    #: must not be spooled either, or a later position would be saved past them.
    abandoned: bool = False


def overflows(buf: Buffer, rows: int, size: int) -> bool:
    """Whether ``rows`` records of ``size`` bytes would take ``buf`` past a limit."""
    return buf.rows + rows > buf.limits.max_rows or buf.size + size > buf.limits.max_bytes
