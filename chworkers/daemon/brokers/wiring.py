"""How the daemon makes a broker source for a pipeline, and asks it about its batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from chworkers.clickhouse.inserts import InsertResult
from chworkers.daemon.brokers.common import BrokerSource, DeadLetter, letter_key
from chworkers.daemon.brokers.redisclient import default_consumer
from chworkers.daemon.deadletter import DeadLetters
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.daemon.spool import SpooledBatch
from chworkers.errors import BrokerError
from chworkers.ops.metrics import Metrics


def broker_source(
    pipeline: PipelineSettings,
    common: dict[str, Any],
    *,
    state_dir: Path,
    dead_letters: DeadLetters,
    metrics: Metrics,
    in_flight: Callable[[], int] | None = None,
) -> BrokerSource:
    """The source of a pipeline whose ``source`` is in ``BROKER_SOURCES`` (the broker's
    client is imported only by daemons that read from that broker); ``in_flight``: the
    spool's ``max_in_flight`` as it stands (a broker source holds that many batches and
    two more, unless ``max_batches`` says)."""

    dead_letter = poison_letters(dead_letters, pipeline.name, pipeline.table)
    for name in ("lag", "pending", "redeliveries", "acked"):  # series exist at 0
        getattr(metrics, f"broker_{name}").labels(pipeline=pipeline.name)
    consumer = default_consumer(str(Path(state_dir).resolve()))
    if pipeline.source == "nats":
        from chworkers.daemon.brokers.natsstream import NatsSource

        return NatsSource(
            options=pipeline.nats,
            consumer=consumer,
            in_flight=in_flight,
            dead_letter=dead_letter,
            metrics=metrics,
            **common,
        )
    from chworkers.daemon.brokers.redisstream import RedisSource

    return RedisSource(
        options=pipeline.redis,
        consumer=consumer,
        in_flight=in_flight,
        dead_letter=dead_letter,
        metrics=metrics,
        **common,
    )


def poison_letters(dead_letters: DeadLetters, pipeline: str, table: str) -> DeadLetter:
    """How source ``pipeline`` dead-letters its poison: into ``dead_letters``, each
    message's letter once by its key, even when a restart comes between the letter and
    the message's acknowledgement (the message delivered again)."""

    def dead_letter(records: Sequence[tuple[bytes, BaseException]], token: str) -> None:
        dead_letters.write_errors(
            table,
            records,
            reason="poison",
            pipeline=pipeline,
            batch=token,
            keys=[letter_key(pipeline, record, error) for record, error in records],
        )

    return dead_letter


def skipped(batch: SpooledBatch) -> Future[Any]:
    """The outcome of a broker batch whose manifest is gone: nothing inserted, done."""
    future: Future[Any] = Future()
    future.set_result(InsertResult(rows=0, bytes=0, requests=0))
    return future


def broker_of(sources: dict[str, BrokerSource] | None, batch: SpooledBatch) -> BrokerSource | None:
    """The broker source a spooled batch came from (None for other sources' batches).

    ``sources`` is None while the sources are not made yet (the spool is replayed first):
    a broker batch then waits (:class:`BrokerError`, a failed attempt tried again), it is
    not inserted unchecked, since its manifest may be gone."""
    if "broker" not in batch.meta:
        return None
    if sources is None:
        raise BrokerError(f"batch {batch.seq} waits for its source {batch.pipeline!r} to start")
    return sources.get(batch.pipeline)


__all__ = ["broker_of", "broker_source", "poison_letters", "skipped"]
