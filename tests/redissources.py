"""A Redis source driven by hand in a test (``_fetch``, ``_cut``, ``_settle`` ...): stream
``ev`` of a :class:`~redisserver.RedisServer`, read as consumer ``me`` into table ``ev``
(JSONEachRow), its batches collected in a list, its dead letters dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisstream import RedisSource
from chworkers.daemon.spool import Spool, SpooledBatch


def redis_source(
    tmp_path: Path, url: str, batches: list[SpooledBatch], **options: Any
) -> RedisSource:
    """The source of stream ``ev`` at ``url`` (``options``: the rest of its
    :class:`RedisSourceSettings`), spooling under ``tmp_path`` and appending each batch
    to ``batches``; batches of up to 1,000 rows, cut by hand (``max_delay`` 60 s)."""
    return RedisSource(
        name="ev",
        table="ev",
        format="JSONEachRow",
        batcher=Batcher(Spool(tmp_path / "spool"), batches.append),
        options=RedisSourceSettings(url=url, stream="ev", **options),
        consumer="me",
        dead_letter=lambda records, token: None,
        limits=BatchLimits(max_rows=1000, max_delay=60),
    )


def manifest_key(token: str) -> str:
    """The key of a batch's manifest, as :func:`redis_source`'s source writes it."""
    return f"ev:chworkers:chworkers:manifest:{token}"


def first_batch(source: RedisSource, batches: list[SpooledBatch]) -> SpooledBatch:
    """The source's first batch: its group made, its entries read, the batch cut and its
    manifest settled; handed on (in flight), not completed."""
    source._create_group()
    source._fetch()
    source._cut()
    source._settle()
    [batch] = batches
    return batch
