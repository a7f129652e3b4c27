"""What the dead-letter hook receives for a task that failed for good."""

from __future__ import annotations

from dataclasses import dataclass, field

from chworkers.errors import ConfigError
from chworkers.workers.tasks import INSERT, InsertSpec, decode_insert


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task that failed for good, handed to the dead-letter hook.

    ``reason`` is ``"error"`` (a non-retryable error), ``"crashed"`` or ``"hung"`` (it
    took its worker down too often). ``batch()`` decodes an insert's data: the rows,
    columns or DataFrame as given, or (form ``"raw"``) the bytes in format ``fmt``: what
    ``insert_raw`` was given, the Native block ``insert`` encoded, or the ``ArrowStream``
    an Arrow batch became (``pyarrow.ipc.open_stream(spec.data).read_all()`` reads it).
    """

    task_id: int
    kind: str
    description: str
    error: BaseException
    reason: str
    table: str | None = None
    rows: int = 0
    token: str | None = None
    payload: bytes = field(default=b"", repr=False)
    buffers: tuple[bytes, ...] = field(default=(), repr=False)

    def batch(self) -> InsertSpec:
        """The insert's data, decoded; a :class:`~chworkers.errors.ConfigError` for the
        letter of a task that was not an insert (``kind`` says which)."""
        if self.kind != INSERT:
            raise ConfigError(
                f"dead letter {self.task_id} is a {self.kind} task, not an insert: it has no batch",
                key="kind",
                value=self.kind,
                expected=INSERT,
            )
        return decode_insert(self.payload, self.buffers)
