"""One Redis Stream's consumer group as the Redis source uses it: every command it sends,
its replies turned into :class:`~chworkers.daemon.brokers.assembly.Message` s, and every
redis-py failure into a :class:`~chworkers.errors.BrokerError`. The manifests beside the
stream, and the errors, are :class:`~chworkers.daemon.brokers.redismanifests.GroupManifests`'
(its base class); here: the connection, reading, claiming and observing.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from chworkers.daemon.brokers import redisscripts
from chworkers.daemon.brokers.assembly import Message
from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisahead import Ahead, Reply
from chworkers.daemon.brokers.redisclient import (
    connect,
    display_url,
    failures,
    key_prefix,
    raw,
    text,
)
from chworkers.daemon.brokers.redisentries import Entry, payload
from chworkers.daemon.brokers.redismanifests import GroupManifests
from chworkers.errors import BrokerError

#: What a read's entries are framed into (:meth:`StreamGroup.read_new`).
T = TypeVar("T")


class StreamGroup(GroupManifests):
    """The stream ``options.stream`` read by ``consumer`` in ``options.group``."""

    def __init__(self, options: RedisSourceSettings, consumer: str, where: str) -> None:
        self.options = options
        self.consumer = consumer
        self.url = display_url(options.url)
        self.client = connect(options, where)
        # Entries as the parser gives them: redis-py's per-entry dicts cost more than
        # everything else the source does per entry (see redisentries.py).
        self.client.set_response_callback("XREADGROUP", raw)
        self.stream, self.group = options.stream, options.group
        prefix = key_prefix(options)
        self.manifests_key, self.manifest_prefix = f"{prefix}:manifests", f"{prefix}:manifest:"
        self.consumers_key = f"{prefix}:consumers"
        self.checks = {}
        self.field = options.field.encode()
        self._write_manifest = self.client.register_script(redisscripts.WRITE_MANIFEST)
        self._touch = self.client.register_script(redisscripts.TOUCH)
        # Reads of new entries go ahead on a connection of their own, and manifests on
        # another (in a cluster, to the node that serves the stream's slot): a batch's
        # verdict does not wait behind a read sent after its manifest, nor a read behind
        # manifests.
        self._ahead = Ahead(self._pool)
        self._writes = Ahead(self._pool)
        #: Reads sent ahead, oldest first, not returned by :meth:`read_new` yet.
        self._reads: deque[Reply] = deque()
        self._chain = True  # whether a full reply sends the next read (not while claiming)

    # -- reading ---------------------------------------------------------------------

    def create(self) -> bool:
        """Create the group (and the stream) unless it exists; True if it was created."""
        import redis

        try:
            self.client.xgroup_create(self.stream, self.group, self.options.start_id, mkstream=True)
            return True
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise BrokerError(f"redis {self.url}: cannot create the group: {exc}") from exc
            return False
        except failures() as exc:
            raise self.error(exc) from exc

    def read(self, after: str, count: int, block_ms: int | None = None) -> list[Message]:
        """``XREADGROUP``: new entries (``after = ">"``), or this consumer's own pending
        ones after the id ``after``."""
        reply = self.call(
            self.client.xreadgroup,
            self.group,
            self.consumer,
            {self.stream: after},
            count=count,
            block=block_ms,
        )
        return self.messages(reply)

    def read_new(
        self,
        count: int,
        block_ms: int,
        frame: Callable[[list[Entry]], T],
        *,
        ahead: Callable[[], bool] = lambda: True,
    ) -> T:
        """New entries (``XREADGROUP ... >``) as hiredis parsed them, waiting up to
        ``block_ms`` for some, made into what the source keeps of them by ``frame``
        (:meth:`~chworkers.daemon.brokers.redisbatches.RedisBatching._pieces`): its result.

        While replies come back full (a backlog), the next read is sent as soon as a
        reply is read, before its entries are framed: Redis prepares the next one while
        the source frames and batches these (at most two reads are sent ahead and not
        returned yet). Entries delivered by a read whose reply is never taken (the
        daemon stops) stay pending for this consumer, as every entry not yet in a
        manifest does: read again at the next start, or claimed by another daemon.
        ``ahead``: whether a next read may be sent now (asked as a full reply is read).

        ``frame`` runs as soon as a reply is read (the reply of a read sent ahead may be
        read before a manifest's), with the collector paused: the reply's lists, one per
        entry, are freed before anything traverses them (chworkers/gcpause.py). A read
        that waits for new entries waits before the pause."""

        def then(reply: Any) -> tuple[int, T]:
            entries: list[Entry] = reply[0][1] if reply else []
            if len(entries) >= count and self._chain and len(self._reads) <= 1 and ahead():
                self._read_ahead(count, then)
            return len(entries), frame(entries)

        try:
            while True:
                waited = not self._reads
                if waited:  # a read that may wait (BLOCK): for its first bytes
                    sent = self._ahead.send(*self._xreadgroup(count, block_ms), then=then)
                    self._ahead.wait(sent, block_ms / 1000)
                else:
                    sent = self._reads.popleft()
                delivered, framed = self._ahead.take(sent)
                if delivered or waited:
                    return framed  # type: ignore[no-any-return]
                # the read sent ahead found nothing new: one that waits
        except failures() as exc:
            self._reads = deque(r for r in self._reads if not (r.done and r.error))
            raise self.error(exc, ahead=self._ahead) from exc

    def _read_ahead(self, count: int, then: Callable[[Any], Any]) -> None:
        """Send the next read now (from a reply's ``then``): if that fails, the
        connection is reset and nothing is sent ahead; the next read opens a new one."""
        with contextlib.suppress(*failures()):
            self._reads.append(self._ahead.send(*self._xreadgroup(count, None), then=then))

    def take_ahead(self) -> Any:
        """What the ``frame`` of :meth:`read_new` made of the reads sent ahead (joined),
        none sent after them; None if none was."""
        if not self._reads:
            return None
        taken: list[Any] = []
        self._chain = False
        try:
            while self._reads:
                taken.append(self._ahead.take(self._reads.popleft())[1])
        except failures() as exc:
            raise self.error(exc, ahead=self._ahead) from exc
        finally:
            self._chain = True
        return taken[0] if len(taken) == 1 else [piece for pieces in taken for piece in pieces]

    def connection(self) -> int:
        """Which connection the reads go on (1 for the first, one more after each
        failure): reads on a later connection than an entry's delivery may deliver it
        again, when the Redis they reach lost that delivery (a failover, a restart)."""
        return self._ahead.opened

    def reading_ahead(self) -> bool:
        """Whether a read was sent ahead (its entries come without waiting)."""
        return bool(self._reads)

    def _xreadgroup(self, count: int, block_ms: int | None) -> list[Any]:
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        return [*args, "STREAMS", self.stream, ">"]

    def close(self) -> None:
        self._ahead.reset()
        self._writes.reset()
        self.client.close()

    def claim(self, cursor: str, count: int) -> tuple[str, list[Message]]:
        """``XAUTOCLAIM``: entries idle for ``claim_idle`` in any consumer, now this
        one's; returns the cursor to go on from and the entries."""
        reply = self.call(
            self.client.xautoclaim,
            self.stream,
            self.group,
            self.consumer,
            int(self.options.claim_idle * 1000),
            start_id=cursor,
            count=count,
        )
        return text(reply[0]), self.messages([[self.stream, reply[1]]])

    def with_deliveries(self, messages: list[Message]) -> list[Message]:
        """The messages with how often each was delivered (``XPENDING``)."""
        pipe = self.client.pipeline(transaction=False)
        for m in messages:
            pipe.xpending_range(self.stream, self.group, min=m.id, max=m.id, count=1)
        replies = self.call(pipe.execute)
        out = []
        for message, reply in zip(messages, replies, strict=True):
            count = int(reply[0]["times_delivered"]) if reply else message.deliveries
            out.append(Message(message.id, message.payload, count))
        return out

    def entries(self, ids: Iterable[str]) -> dict[str, Message]:
        """The entries the stream still has among ``ids`` (``XRANGE``), by id."""
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.xrange(self.stream, min=i, max=i, count=1)
        out: dict[str, Message] = {}
        for reply in self.call(pipe.execute):
            for message in self.messages([[self.stream, reply]]):
                out[message.id] = message
        return out

    def messages(self, reply: Any) -> list[Message]:
        """Entries of a reply: ``[[stream, [[id, fields], ...]]]`` where ``fields`` is
        a flat list (raw XREADGROUP), a dict (other commands) or None (deleted)."""
        field = self.field
        out: list[Message] = []
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                if isinstance(fields, dict):
                    out.append(Message(entry_id.decode(), fields.get(field)))
                else:
                    out.append(Message(entry_id.decode(), payload(fields, field)))
        return out

    # -- observing -------------------------------------------------------------------

    def state(self) -> tuple[int, int | None] | None:
        """The group's pending entries and lag (None: Redis does not know it), or None
        when the group is not there.

        Redis counts the group's ``entries-read`` itself, and after a restart it can stay
        wrong (a lag of 126,705 for a group that had read the whole stream, for minutes):
        a lag Redis reports for a group whose last delivered entry is the stream's last
        one is 0."""
        for group in self.call(self.client.xinfo_groups, self.stream):
            if text(group.get("name", b"")) == self.group:
                lag = group.get("lag")
                if lag:
                    stream = self.call(self.client.xinfo_stream, self.stream)
                    if stream.get("last-generated-id") == group.get("last-delivered-id"):
                        lag = 0
                return int(group.get("pending", 0)), None if lag is None else int(lag)
        return None


__all__ = ["StreamGroup"]
