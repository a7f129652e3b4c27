"""Tasks as bytes: what a producer hands the supervisor and a worker runs.

A task is encoded once, in the producer's thread, and travels as bytes: the supervisor
queues, re-queues and dispatches it without looking inside. Its data is pickled as
:mod:`chworkers.workers.pickling` says (protocol 5 with buffers out of band, dill for
closures); large buffers go through shared memory (:mod:`chworkers.workers.sharedbuf`).
What comes back is :mod:`chworkers.workers.results`'; what the dead-letter hook gets,
:mod:`chworkers.workers.deadletter`'s.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from chworkers.clickhouse import columnar, dedup
from chworkers.clickhouse.epochs import TimestampColumns
from chworkers.clickhouse.inserts import LINE_FORMATS, SplitBudget
from chworkers.clickhouse.schema import Evolve
from chworkers.errors import BatchError, ConfigError
from chworkers.workers import sharedbuf
from chworkers.workers.pickling import dumps, loads

_NONE: list[pickle.PickleBuffer | sharedbuf.SharedRef] = []

INSERT = "insert"  # a batch into a table, with a leased connection
SUBMIT = "submit"  # fn(conn, *args, **kwargs) with a leased connection
CALL = "call"  # fn(*args, **kwargs), no connection


#: A table on a shard of a cluster (None: not sharded): what table limits are kept per.
Lane = tuple[str, int | None]


@dataclass(eq=False, slots=True)
class Task:
    """A task in the supervisor: its bytes, its future and its bookkeeping."""

    id: int
    kind: str
    payload: bytes
    buffers: list[bytes]
    future: Future[object]
    nbytes: int
    table: str | None = None
    rows: int = 0
    token: str | None = None
    #: Times a worker died (or was killed as hung) while running this task.
    crashes: int = 0
    #: Supervisor bookkeeping (a schema lookup): no dead letter when it fails.
    internal: bool = False
    #: Its future was set running (it was dispatched once).
    started: bool = False
    #: An insert whose future resolves to the whole :class:`~chworkers.clickhouse.inserts.InsertResult`
    #: (with its rejected records), not just the rows written.
    detailed: bool = False
    description: str = ""
    #: Shared-memory copies of the large buffers (:mod:`chworkers.workers.sharedbuf`).
    shared: list[sharedbuf.SharedBuffer | None] | None = None
    #: The shard it runs on, of a sharded cluster (None: not sharded).
    shard: int | None = None
    #: When it was put on the queue (monotonic; autoscaling reads the oldest's age).
    queued_at: float = 0.0
    #: An insert the caller sent before (an attempt of it may have landed): all the rows
    #: ClickHouse says it wrote count as replayed, not as inserted.
    replay: bool = False

    @property
    def lane(self) -> Lane:
        """Where its table's insert limits apply: its table on its shard (each shard of a
        sharded cluster is a server of its own; the shard is None when not sharded)."""
        return (self.table or "", self.shard)

    def release(self) -> None:
        """Free the shared-memory copies now that the task is done (else with the task)."""
        for shared in self.shared or ():
            if shared is not None:
                shared.close()

    def piped_bytes(self) -> int:
        """What of it crosses the worker's pipe (not its shared-memory buffers)."""
        if self.shared is None:
            return self.nbytes
        return len(self.payload) + sum(
            len(b) for b, s in zip(self.buffers, self.shared, strict=True) if s is None
        )

    def wire(self) -> tuple[int, str, bytes, list[pickle.PickleBuffer | sharedbuf.SharedRef]]:
        buffers, shared = self.buffers, self.shared
        if not buffers:
            return self.id, self.kind, self.payload, _NONE
        if shared is None:
            return self.id, self.kind, self.payload, [pickle.PickleBuffer(b) for b in buffers]
        wired = [
            pickle.PickleBuffer(b) if s is None else s.ref
            for b, s in zip(buffers, shared, strict=True)
        ]
        return self.id, self.kind, self.payload, wired


@dataclass(frozen=True, slots=True)
class InsertSpec:
    """What a worker needs to run an insert; ``data`` is in the form the caller gave."""

    table: str
    form: str  # "rows", "columns", "pandas", "arrow" or "raw" (bytes in format ``fmt``)
    data: object
    column_names: tuple[str, ...] | None
    settings: Mapping[str, object] | None
    token: str
    fmt: str | None = None
    #: Bisect rows ClickHouse rejects, within this budget (line formats only).
    split: SplitBudget | None = None
    #: Rows in the batch (for raw bytes: as the caller said; 0 when it did not).
    rows: int = 0
    #: The shard to insert into, of a sharded cluster (None: not sharded).
    shard: int | None = None
    #: Add the columns the table lacks for the batch's fields (JSONEachRow only).
    evolve: Evolve | None = None
    #: Send the bytes compressed by the connection's codec (its ``compress`` option).
    compress: bool = False
    #: Raw JSONEachRow found by the caller to hold no epoch number to rewrite for these
    #: timestamp columns (the worker skips its scan when it finds the same).
    timestamps_checked: TimestampColumns | None = None


def encode_insert(
    task_id: int,
    future: Future[Any],
    table: str,
    data: Any,
    column_names: Sequence[str] | None,
    settings: Mapping[str, Any] | None,
    token: str | None,
    *,
    fmt: str | None = None,
    rows: int | None = None,
    native: NativeEncoder | None = None,
    split: SplitBudget | None = None,
    shard: int | None = None,
    evolve: Evolve | None = None,
    replay: bool = False,
    compress: bool = False,
    arrow_compression: str | None = None,
    timestamps_checked: TimestampColumns | None = None,
) -> Task:
    """Encode an insert of ``data``; with ``fmt``, ``data`` is bytes already in that
    ClickHouse format (Native, JSONEachRow, CSV...) and ``rows`` says how many rows.

    An Arrow table or record batch is sent as an Arrow IPC stream (``ArrowStream``).
    ``native(form, names, data)`` may turn rows, columns or a DataFrame into a Native
    block (returning the block and its column names, or None to keep the pickled
    batch, which the worker then inserts with clickhouse-connect). With ``split``
    (bytes in a line format only), rows ClickHouse rejects are bisected out and the
    future resolves to the :class:`~chworkers.clickhouse.inserts.InsertResult`. With
    ``compress``, the worker sends the bytes compressed by its connection's codec; an
    Arrow batch's buffers are compressed inside its stream instead, with
    ``arrow_compression`` (lz4 or zstd; None: not at all), as clickhouse-connect's
    ``insert_arrow`` sends them. ``timestamps_checked``: raw JSONEachRow ``data`` holds no
    epoch number to rewrite for these timestamp columns
    (:func:`chworkers.clickhouse.epochs.needs_rewrite`).
    """
    if not isinstance(table, str) or not table:
        raise BatchError(f"insert: table must be a non-empty name, not {table!r}", table=table)
    if split is not None and fmt not in LINE_FORMATS:
        raise BatchError(
            f"insert into {table!r}: only line formats ({', '.join(LINE_FORMATS)}) can be "
            f"split to isolate rejected rows, not {fmt!r}",
            table=table,
            reason="split of a format that is not line-delimited",
        )
    if isinstance(column_names, str):
        column_names = [column_names]
    if fmt is None:
        form, count, names, data = prepare_batch(table, data, column_names)
        encoded: tuple[bytes | memoryview, Sequence[str], str] | None = None
        if form == "arrow":  # as Arrow, with only its own rows' buffers
            stream, arrow_names = columnar.arrow_stream(
                data, names, table=table, compression=arrow_compression
            )
            encoded = memoryview(stream), arrow_names, columnar.ARROW_FORMAT
            compress = False  # compressed inside the stream, if at all
        elif native is not None and form in ("rows", "columns", "pandas"):
            block = native(form, names, data)
            encoded = None if block is None else (block[0], block[1], "Native")
        if encoded is None:
            payload, buffers = dumps((form, data), what="batch")
        else:
            data, column_names, fmt = encoded[0], list(encoded[1]), encoded[2]
            rows = count
    if fmt is not None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BatchError(
                f"insert into {table!r} as {fmt}: data must be bytes, not {type(data).__name__}",
                table=table,
                reason="raw data not bytes",
            )
        data = bytes(data) if not isinstance(data, bytes) else data
        count = rows or 0
        payload, buffers = dumps(("raw", pickle.PickleBuffer(data)), what="batch")
        names = tuple(column_names) if column_names is not None else None
    if evolve is not None and fmt != "JSONEachRow":
        raise BatchError(
            f"insert into {table!r}: schema evolution takes JSONEachRow, not {fmt!r}",
            table=table,
            reason="schema evolution of a format other than JSONEachRow",
        )
    sharing = None
    if token is None and sum(memoryview(b).nbytes for b in buffers) >= SHARE_ALONGSIDE:
        sharing = _Sharing(buffers)
    try:
        if token is None:
            token = _content_token(table, names, fmt, payload, buffers)
        settings = dict(settings) if settings else None
        checked = timestamps_checked if fmt is not None else None
        meta = (table, names, settings, token, fmt, split, count, shard, evolve, compress, checked)
        header, extra = dumps(meta, what="batch")
        shared = _shared(extra, buffers, sharing)
    except BaseException:
        if sharing is not None:
            sharing.discard()
        raise
    body = pickle.dumps((header, payload, len(extra)), protocol=5)
    return Task(
        id=task_id,
        kind=INSERT,
        payload=body,
        buffers=[*extra, *buffers],
        future=future,
        nbytes=len(body) + sum(len(b) for b in buffers),
        table=table,
        rows=count,
        token=token,
        description=f"insert of {count} {fmt + ' ' if fmt else ''}rows into {table}"
        + ("" if shard is None else f" on shard {shard}"),
        detailed=split is not None,
        shared=shared,
        shard=shard,
        replay=replay,
    )


def _content_token(
    table: str, names: tuple[str, ...] | None, fmt: str | None, payload: bytes, buffers: list[bytes]
) -> str:
    return dedup.content_token(table, repr((names, fmt)), (payload, *buffers))


def raw_token(table: str, data: bytes, fmt: str, column_names: Sequence[str] | None = None) -> str:
    """The deduplication token ``insert_raw(table, data, fmt)`` derives when not given one."""
    payload, buffers = dumps(("raw", pickle.PickleBuffer(data)), what="batch")
    names = tuple(column_names) if column_names is not None else None
    return _content_token(table, names, fmt, payload, buffers)


#: ``native(form, names, data) -> (Native bytes, column names) | None``.
NativeEncoder = Callable[[str, "tuple[str, ...] | None", Any], "tuple[bytes, Sequence[str]] | None"]


def prepare_batch(
    table: str, data: Any, column_names: Sequence[str] | None
) -> tuple[str, int, tuple[str, ...] | None, Any]:
    """Check a batch and bring it to one of its forms: (form, rows, names, data), by the
    one normaliser (:func:`chworkers.clickhouse.dedup.normalize`)."""
    batch = dedup.normalize(data, column_names, table=table)
    names = tuple(batch.column_names) if batch.column_names is not None else None
    return batch.kind, batch.rows, names, batch.data


def _shared(
    extra: list[bytes], buffers: list[bytes], sharing: _Sharing | None = None
) -> list[sharedbuf.SharedBuffer | None] | None:
    shared = sharedbuf.share(buffers) if sharing is None else sharing.result()
    return None if shared is None else [*(None for _ in extra), *shared]


#: A batch whose buffers make this many bytes or more, and whose token is derived from
#: them, has them copied into shared memory (:func:`sharedbuf.share`) by a thread while
#: the producer hashes them: both release the GIL, so on a machine with a core to spare
#: the task is ready in the longer of the two instead of their sum (30 MB: ~16 ms of
#: hashing, 20-40 ms of copying), and the first request of a burst starts that much
#: sooner. Below it a thread's start costs more than it saves.
SHARE_ALONGSIDE = 4 << 20


class _Sharing:
    """:func:`sharedbuf.share` of ``buffers``, run in a thread of its own."""

    def __init__(self, buffers: list[bytes]) -> None:
        self._shared: list[sharedbuf.SharedBuffer | None] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(buffers,), name="chworkers-share", daemon=True
        )
        self._thread.start()

    def _run(self, buffers: list[bytes]) -> None:
        try:
            self._shared = sharedbuf.share(buffers)
        except BaseException as exc:  # raised in the producer's thread, by result()
            self._error = exc

    def result(self) -> list[sharedbuf.SharedBuffer | None] | None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._shared

    def discard(self) -> None:
        """The task is not made after all: its memory files go back at once."""
        self._thread.join()
        for shared in self._shared or ():
            if shared is not None:
                shared.close()


def decode_insert(payload: bytes, buffers: Sequence[Any]) -> InsertSpec:
    buffers = sharedbuf.resolve(buffers)
    header, data, split = pickle.loads(payload)
    meta = loads(header, buffers[:split])
    table, names, settings, token, fmt, budget, count, shard, evolve, compress, checked = meta
    form, data = loads(data, buffers[split:])
    return InsertSpec(
        table,
        form,
        data,
        names,
        settings,
        token,
        fmt,
        budget,
        count,
        shard,
        evolve,
        compress,
        checked,
    )


def encode_call(
    task_id: int,
    future: Future[Any],
    kind: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    shard: int | None = None,
) -> Task:
    if not callable(fn):
        raise ConfigError(
            f"{kind}: {fn!r} is not callable",
            key="fn",
            value=fn,
            expected="a function, or any callable that pickles",
        )
    payload, buffers = dumps((fn, args, dict(kwargs), shard), what="task")
    name = getattr(fn, "__qualname__", type(fn).__name__)
    return Task(
        id=task_id,
        kind=kind,
        payload=payload,
        buffers=buffers,
        future=future,
        nbytes=len(payload) + sum(len(b) for b in buffers),
        description=f"{kind} of {name}" + ("" if shard is None else f" on shard {shard}"),
        shared=sharedbuf.share(buffers),
        shard=shard,
    )


def decode_call(
    payload: bytes, buffers: Sequence[Any]
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], int | None]:
    """The function, its arguments and the shard it runs on (None: not sharded)."""
    fn, args, kwargs, shard = loads(payload, sharedbuf.resolve(buffers))
    return fn, args, kwargs, shard
