"""What every broker source shares, whichever broker it reads: what the daemon asks of
it (:class:`BrokerSource`), how it reports poison (:data:`DeadLetter`), its pacing, and
what it is made of (:class:`SourceParts`; :class:`~chworkers.daemon.brokers.trouble.Trouble`
is how it says its broker fails)."""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypedDict

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.brokers.assembly import Assembler, Assembly, Message, Poison
from chworkers.daemon.brokers.trouble import Trouble
from chworkers.daemon.spool import SpooledBatch
from chworkers.ops.metrics import Metrics
from chworkers.wording import plural

#: What a source does with poison: ``(records with their errors, batch token)``.
DeadLetter = Callable[[Sequence[tuple[bytes, BaseException]], str], None]

#: Waits between attempts while the broker does not answer (seconds).
RETRY_INITIAL, RETRY_MAX = 0.1, 5.0
#: How often the lag and pending gauges are refreshed (seconds).
GAUGES_EVERY = 2.0
#: Poison messages whose dead letters were written, remembered by id: one whose
#: acknowledgement failed (the broker down meanwhile) is delivered again, and is then
#: only acknowledged, not dead-lettered twice. The oldest are forgotten past this many.
LETTERED_KEPT = 10_000


def _lettered_key(poison: Poison, incarnation: str) -> tuple[str, int]:
    return _message_id(poison.message.id, incarnation), hash(poison.message.payload)


def _message_id(message_id: str, incarnation: str) -> str:
    return f"{incarnation}/{message_id}" if incarnation else message_id


def letter_key(source: str, record: bytes, error: BaseException) -> str | None:
    """The key a poison message's dead letter is written once by, across restarts
    (:mod:`~chworkers.daemon.letterkeys`): its source, its id, a checksum of its payload.
    A stream deleted and made again numbers its messages from 1 again: a NATS message's
    id is prefixed by its stream's creation time (:meth:`SourceParts._incarnation`), so
    another message with the same sequence and payload is lettered too. A Redis entry's
    id is its arrival time in milliseconds and a sequence: a stream made anew reuses one
    only for an entry added in the same millisecond as the earlier one with the same
    payload (or with ids given by the producer), and that is not told apart. None: not
    a message's."""
    message_id = getattr(error, "message_id", "")
    if not message_id:
        return None
    return f"{source}:{message_id}:{zlib.crc32(record):08x}"


class BrokerSource(Protocol):
    """A source whose batches are acknowledged to a broker once inserted."""

    name: str
    rows: int

    def run(self, stop: threading.Event) -> None:
        """Read until ``stop`` is set (the source's thread)."""

    def still_open(self, batch: SpooledBatch) -> bool:
        """Whether the batch's manifest is still there: inserted only if it is."""

    def complete(self, batch: SpooledBatch) -> None:
        """ClickHouse confirmed the batch: acknowledge its messages (raises
        :class:`~chworkers.errors.BrokerError` when the broker does not answer)."""

    def problems(self) -> list[str]:
        """Why the source is degraded (its broker failing), for the health report."""

    def more_room(self) -> None:
        """The source may hold more batches now than when it last looked (its default
        ``max_batches`` grew): wake its thread if it waits for room."""


class SourceArgs(TypedDict, total=False):
    """The keyword arguments every broker source takes besides its broker's options."""

    name: str
    table: str
    format: str
    batcher: Batcher
    dead_letter: DeadLetter
    settings: Mapping[str, Any] | None
    limits: BatchLimits | None
    transform: Callable[[bytes], bytes] | None
    metrics: Metrics | None
    on_error: Callable[[str, str], None] | None
    max_record_bytes: int


class SourceParts:
    """What a broker source is made of, whichever broker it reads: the pipeline's names
    and limits, its batcher and dead letters, the assembler that frames entries into
    records, the batch being assembled, and its health (``trouble``, which the source
    makes: it names the broker)."""

    trouble: Trouble
    #: Notified when a batch is acknowledged, or the source may hold more (the source
    #: makes it, on its lock).
    _room: threading.Condition
    #: Where the source logs (each broker's source module names its logger).
    log: ClassVar[logging.Logger] = logging.getLogger(__name__)

    def __init__(
        self,
        *,
        name: str,
        table: str,
        format: str,
        batcher: Batcher,
        dead_letter: DeadLetter,
        settings: Mapping[str, Any] | None = None,
        limits: BatchLimits | None = None,
        transform: Callable[[bytes], bytes] | None = None,
        metrics: Metrics | None = None,
        on_error: Callable[[str, str], None] | None = None,
        max_record_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.name = name
        self.table = table
        self.format = format
        self.batcher = batcher
        self.dead_letter = dead_letter
        self.settings = dict(settings or {})
        self.limits = limits or BatchLimits()
        self.metrics = metrics
        self.on_error = on_error
        self.assembler = Assembler(format, max_record_bytes=max_record_bytes, transform=transform)
        self.rows = 0
        self._lock = threading.Lock()
        self._assembly = Assembly()
        self._unsent: set[str] = set()  # tokens of batches before their first attempt
        #: The poison dead-lettered (:data:`LETTERED_KEPT`), oldest first, by id and
        #: payload (a stream made anew may use an id again, for another message).
        self._lettered: dict[tuple[str, int], None] = {}
        self._lettered_lock = threading.Lock()  # its own: callers may hold ``_lock``

    def _spool(self, token: str, batch: Assembly, meta: dict[str, Any]) -> None:
        """Hand a batch to the batcher, kept in the spool's memory, not on disk: the
        broker holds its messages until they are acknowledged and the manifest rebuilds
        it (docs/brokers.md, "The local spool")."""
        with self._lock:
            self._unsent.add(token)
        self.batcher.add(
            self.table,
            self.assembler.payload(batch),
            batch.rows,
            format=self.format,
            pipeline=self.name,
            settings=self.settings,
            meta=meta,
            limits=self.limits,
            retry=True,  # waits until the spool takes it
            token=token,
            memory=True,
        )
        self.rows += batch.rows

    def _rebuilt(
        self,
        token: str,
        ids: list[str],
        stored: Mapping[str, Message],
        given_up: set[str],
        *,
        unit: str,
        gone: str,
    ) -> Assembly:
        """The batch of manifest ``token`` rebuilt from what the broker still has of its
        ``ids`` (``stored``; those ``given_up`` left out): a warning says how many of them
        (``unit``s) are no longer in the stream (``gone``: why, likely), the poison among
        them goes to the dead letters."""
        batch, poison = self.assembler.rebuild(
            ids, {i: m for i, m in stored.items() if i not in given_up}
        )
        missing = len(ids) - len(stored)
        if missing:
            self.log.warning(
                "source %s: %s of batch %s no longer in the stream (%s); "
                "the batch is rebuilt without them",
                self.name,
                plural(missing, unit),
                token,
                gone,
            )
        if poison:
            self._dead_letter(poison, token)
        self.log.info(
            "source %s: rebuilding batch %s (%s) from its manifest",
            self.name,
            token,
            plural(len(ids), unit),
        )
        return batch

    def _incarnation(self) -> str:
        """What tells the stream read now from an earlier one of the same name whose
        message ids were the same ("": the ids say it already)."""
        return ""

    def _dead_letter(self, poison: list[Poison], token: str) -> None:
        """Write the dead letters of ``poison``, except those written already (a message
        delivered again because its acknowledgement failed: only acknowledged now)."""
        incarnation = self._incarnation()
        with self._lettered_lock:
            again = {
                p.message.id for p in poison if _lettered_key(p, incarnation) in self._lettered
            }
        if again:
            self.log.debug(
                "source %s: %s dead-lettered already (%s), acknowledged only",
                self.name,
                plural(len(again), "poison message"),
                ", ".join(sorted(again)[:5]),
            )
            poison = [p for p in poison if p.message.id not in again]
            if not poison:
                return
        for p in poison:
            # the dead letter's key (letter_key)
            p.error.message_id = _message_id(p.message.id, incarnation)
            self.log.warning("source %s: %s", self.name, p.error)
            if self.on_error is not None:
                self.on_error(self.name, str(p.error))
        self.dead_letter([(p.message.payload or b"", p.error) for p in poison], token)
        with self._lettered_lock:  # written: remembered, the oldest forgotten
            for p in poison:
                self._lettered[_lettered_key(p, incarnation)] = None
            while len(self._lettered) > LETTERED_KEPT:
                del self._lettered[next(iter(self._lettered))]

    def problems(self) -> list[str]:
        """Why the source is degraded (its broker failing), for the health report."""
        return self.trouble.problems()

    def more_room(self) -> None:
        """The source may hold more batches now (a batch split by shard waits only for a
        shard that is down, and no longer counts against the default ``max_batches``:
        docs/sharding.md): its thread, if it waits for room, reads on at once."""
        with self._room:
            self._room.notify_all()


__all__ = [
    "GAUGES_EVERY",
    "LETTERED_KEPT",
    "RETRY_INITIAL",
    "RETRY_MAX",
    "BrokerSource",
    "DeadLetter",
    "SourceArgs",
    "SourceParts",
    "letter_key",
]
