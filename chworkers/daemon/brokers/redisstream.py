"""``source = "redis"``: a Redis Stream through a consumer group, exactly once across
daemons (docs/brokers.md has the design and the failure table).

The source reads entries (``XREADGROUP``), claims those that a dead or stuck consumer
left pending (``XAUTOCLAIM``), cuts batches with the pipeline's limits, writes each
batch's manifest beside the stream, and hands the batch to the batcher with the
manifest's token. The daemon asks :meth:`RedisSource.still_open` before each insert
attempt and calls :meth:`RedisSource.complete` once ClickHouse confirmed it: the entries
are acknowledged and the manifest removed, atomically.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from chworkers.clickhouse.dedup import broker_token
from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.brokers import redisscripts
from chworkers.daemon.brokers.assembly import Assembler, Assembly, Message, Poison
from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisclient import connect, display_url, entry_order, raw, text
from chworkers.daemon.spool import SpooledBatch
from chworkers.errors import BrokerError, PoisonMessageError
from chworkers.ops.metrics import Metrics

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

#: What a source does with poison: ``(records with their errors, batch token)``.
DeadLetter = Callable[[Sequence[tuple[bytes, BaseException]], str], None]

#: Waits between attempts while Redis does not answer (seconds).
RETRY_INITIAL, RETRY_MAX = 0.1, 5.0
#: How often the lag and pending gauges are refreshed (seconds).
GAUGES_EVERY = 2.0


class RedisSource:
    """Reads one stream for one pipeline; see the module's docstring."""

    def __init__(
        self,
        *,
        name: str,
        table: str,
        format: str,
        batcher: Batcher,
        options: RedisSourceSettings,
        consumer: str,
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
        self.options = options
        self.consumer = options.consumer or consumer
        self.dead_letter = dead_letter
        self.settings = dict(settings or {})
        self.limits = limits or BatchLimits()
        self.metrics = metrics
        self.on_error = on_error
        self.assembler = Assembler(format, max_record_bytes=max_record_bytes, transform=transform)
        self.where = f"pipeline {name!r}"
        self.url = display_url(options.url)
        self.client = connect(options, self.where)
        # Entries as the parser gives them: redis-py's per-entry dicts cost more than
        # everything else the source does per entry (see _messages).
        self.client.set_response_callback("XREADGROUP", raw)
        self.stream, self.group = options.stream, options.group
        prefix = f"{self.stream}:chworkers:{self.group}"
        self.manifests_key, self.manifest_prefix = f"{prefix}:manifests", f"{prefix}:manifest:"
        self._write_manifest = self.client.register_script(redisscripts.WRITE_MANIFEST)
        self._complete = self.client.register_script(redisscripts.COMPLETE)
        self._touch = self.client.register_script(redisscripts.TOUCH)
        self.rows = 0
        self._lock = threading.Lock()
        self._inflight: dict[str, list[str]] = {}  # token -> ids, until acknowledged
        self._assembly = Assembly()
        self._trouble: tuple[float, str] | None = None  # since (wall clock), why
        self._claim_cursor = "0-0"

    # -- the daemon's side ----------------------------------------------------------------

    def still_open(self, batch: SpooledBatch) -> bool:
        """Whether the batch's manifest is still there (else another daemon completed it,
        or it expired): a batch replayed from the spool is inserted only if it is."""
        token = str(batch.meta["broker"]["token"])
        return bool(self._call(self.client.exists, self.manifest_prefix + token))

    def complete(self, batch: SpooledBatch) -> None:
        """ClickHouse confirmed the batch: acknowledge its entries, remove its manifest."""
        broker = batch.meta["broker"]
        self._ack(list(broker["ids"]), str(broker["token"]))

    def problems(self) -> list[str]:
        with self._lock:
            trouble = self._trouble
        if trouble is None:
            return []
        since, why = trouble
        return [f"redis {self.url}: failing for {time.time() - since:.0f} s: {why}"]

    # -- the source's thread ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        backoff = RETRY_INITIAL
        started = False
        next_claim = next_gauges = 0.0
        # In a thread of its own: the reading thread may wait long in the batcher (the
        # spool full during an outage), and its entries must not look abandoned meanwhile.
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(stop,), name=f"source-{self.name}-heartbeat", daemon=True
        )
        heartbeat.start()
        while not stop.is_set():
            try:
                if not started:
                    self._create_group()
                    self._read_own_pending()
                    started = True
                now = time.monotonic()
                if now >= next_claim:
                    self._claim()
                    next_claim = now + self.options.claim_interval
                if now >= next_gauges:
                    self._publish_gauges()
                    next_gauges = now + GAUGES_EVERY
                self._fetch()
                if self._assembly.due(self.limits):
                    self._cut()
                self._ok()
                backoff = RETRY_INITIAL
            except BrokerError as exc:
                self._failing(str(exc))
                stop.wait(backoff)
                backoff = min(RETRY_MAX, backoff * 2)
        try:
            if self._assembly.ids:
                self._cut()  # what was read goes in (the batcher takes it or says it closed)
        except BrokerError as exc:
            log.warning("source %s: the last batch stays pending in Redis: %s", self.name, exc)

    def _create_group(self) -> None:
        import redis

        try:
            self.client.xgroup_create(self.stream, self.group, self.options.start_id, mkstream=True)
            log.info(
                "source %s: created consumer group %s on %s", self.name, self.group, self.stream
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise BrokerError(f"redis {self.url}: cannot create the group: {exc}") from exc
        except redis.RedisError as exc:
            raise self._error(exc) from exc

    def _read_own_pending(self) -> None:
        """Entries this consumer had before a restart: rebuilt like claimed ones."""
        last = "0"
        while True:
            reply = self._call(
                self.client.xreadgroup,
                self.group,
                self.consumer,
                {self.stream: last},
                count=self.options.fetch_count,
            )
            messages = self._messages(reply)
            if not messages:
                return
            log.info("source %s: %d entries pending from before, rebuilt", self.name, len(messages))
            self._redelivered(messages)
            last = messages[-1].id

    def _fetch(self) -> None:
        wait = 1.0
        if self._assembly.ids:
            wait = self.limits.max_delay - (time.monotonic() - self._assembly.started)
        count = max(1, min(self.options.fetch_count, self.limits.max_rows - self._assembly.rows))
        reply = self._call(
            self.client.xreadgroup,
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=count,
            block=max(1, int(min(wait, 1.0) * 1000)),
        )
        messages = self._messages(reply)
        start = 0
        while start < len(messages):
            start, poison = self.assembler.extend(self._assembly, messages, start, self.limits)
            if poison:
                self._poison(poison)
            if self._assembly.full(self.limits):
                self._cut()

    def _take(self, message: Message, present: set[str]) -> None:
        """One claimed entry without a manifest: batched anew (unless it is in the batch
        being put together already: a claim can take back our own idle entries)."""
        if message.id in present:
            return
        present.add(message.id)
        self._assembly.mixed = True
        poison = self.assembler.add(self._assembly, message)
        if poison is not None:
            self._poison([poison])

    def _claim(self) -> None:
        """Take over entries other consumers left pending for ``claim_idle``."""
        reply = self._call(
            self.client.xautoclaim,
            self.stream,
            self.group,
            self.consumer,
            int(self.options.claim_idle * 1000),
            start_id=self._claim_cursor,
            count=self.options.fetch_count,
        )
        self._claim_cursor = text(reply[0])
        messages = [
            message
            for message in self._messages([[self.stream, reply[1]]])
            if message.id not in set(self._assembly.ids)
        ]
        if messages:
            log.info("source %s: claimed %d idle entries", self.name, len(messages))
            self._redelivered(messages)

    def _redelivered(self, messages: list[Message]) -> None:
        """Claimed or re-read entries: those of a manifest rebuild exactly its batch;
        the others are batched anew."""
        if self.metrics is not None:
            self.metrics.broker_redeliveries.labels(pipeline=self.name).inc(len(messages))
        messages = self._with_deliveries(messages)
        owners = self._live_manifests()
        fresh: list[Message] = []
        manifests: dict[str, list[Message]] = {}
        for message in messages:
            owner = owners.get(message.id)
            if owner is None:
                fresh.append(message)
            else:
                manifests.setdefault(owner[0], []).append(message)
        for token, claimed in manifests.items():
            with self._lock:
                if token in self._inflight:
                    continue  # ours already (our own entries, idle while in flight)
            self._rebuild(token, owners[claimed[0].id][1], claimed)
        fresh.sort(key=lambda m: entry_order(m.id))
        present = set(self._assembly.ids)
        for message in fresh:
            if self._too_often(message):
                continue
            self._take(message, present)
            if self._assembly.full(self.limits):
                self._cut()
                present = set()

    def _live_manifests(self) -> dict[str, tuple[str, list[str]]]:
        """Entry id -> (token, ids) of every manifest beside the stream (few: one per
        batch in flight in any daemon); forgets tokens whose manifest expired."""
        tokens = [text(t) for t in self._call(self.client.smembers, self.manifests_key)]
        if not tokens:
            return {}
        bodies = self._call(self.client.mget, [self.manifest_prefix + t for t in tokens])
        owners: dict[str, tuple[str, list[str]]] = {}
        expired = []
        for token, body in zip(tokens, bodies, strict=True):
            if body is None:
                expired.append(token)
                continue
            ids = [str(i) for i in json.loads(body)["ids"]]
            for entry_id in ids:
                owners[entry_id] = (token, ids)
        if expired:
            self._call(self.client.srem, self.manifests_key, *expired)
        return owners

    def _rebuild(self, token: str, ids: list[str], claimed: list[Message]) -> None:
        stored = self._read_entries(ids)
        given_up = {m.id for m in claimed if self._too_often(m, ack=False)}
        batch, poison = self.assembler.rebuild(
            ids, {i: m for i, m in stored.items() if i not in given_up}
        )
        missing = len(ids) - len(stored)
        if missing:
            log.warning(
                "source %s: %d entries of batch %s are no longer in the stream (trimmed?); "
                "the batch is rebuilt without them",
                self.name,
                missing,
                token,
            )
        if poison:
            self._dead_letter(poison, token)
        log.info(
            "source %s: rebuilding batch %s (%d entries) from its manifest",
            self.name,
            token,
            len(ids),
        )
        self._hand_on(token, ids, batch, write_manifest=False)

    def _cut(self) -> None:
        batch, self._assembly = self._assembly, Assembly()
        token = broker_token("redis", self.stream, self.group, batch.ids)
        self._hand_on(token, batch.ids, batch, write_manifest=True)

    def _hand_on(
        self, token: str, ids: list[str], batch: Assembly, *, write_manifest: bool
    ) -> None:
        if write_manifest:
            body = json.dumps(
                {"token": token, "ids": ids, "consumer": self.consumer, "created": time.time()}
            )
            reply = self._call(
                self._write_manifest,
                keys=[self.stream, self.manifests_key, self.manifest_prefix + token],
                args=[
                    self.group,
                    self.consumer,
                    token,
                    body,
                    int(self.options.manifest_ttl * 1000),
                    min(ids, key=entry_order) if batch.mixed else ids[0],
                    max(ids, key=entry_order) if batch.mixed else ids[-1],
                ],
            )
            verdict = [text(part) for part in reply]
            if verdict[0] != "ok":
                log.warning(
                    "source %s: a batch of %d entries is not inserted: entry %s is not pending "
                    "for this consumer any more (claimed by another daemon, which inserts it)",
                    self.name,
                    len(ids),
                    verdict[1],
                )
                return
        with self._lock:
            self._inflight[token] = ids
        if not batch.rows:
            self._ack(ids, token)  # nothing to insert (empty or poison entries only)
            return
        meta = {"broker": {"kind": "redis", "token": token, "ids": ids}}
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
        )
        self.rows += batch.rows

    # -- poison, acknowledgements ----------------------------------------------------------

    def _too_often(self, message: Message, *, ack: bool = True) -> bool:
        limit = self.options.max_deliver
        if not limit or message.deliveries <= limit:
            return False
        error = PoisonMessageError(
            f"message {message.id} was delivered {message.deliveries} times (max_deliver = {limit})"
        )
        if ack:
            self._poison([Poison(message, error)])
        else:
            self._dead_letter([Poison(message, error)], "")
        return True

    def _poison(self, poison: list[Poison]) -> None:
        """Dead-letter poison entries, then acknowledge them: never redelivered."""
        self._dead_letter(poison, "")
        self._ack([p.message.id for p in poison], "")

    def _dead_letter(self, poison: list[Poison], token: str) -> None:
        for p in poison:
            log.warning("source %s: %s", self.name, p.error)
            if self.on_error is not None:
                self.on_error(self.name, str(p.error))
        self.dead_letter([(p.message.payload or b"", p.error) for p in poison], token)

    def _ack(self, ids: list[str], token: str) -> None:
        manifest = self.manifest_prefix + token if token else ""
        acked = self._call(
            self._complete,
            keys=[self.stream, self.manifests_key, manifest],
            args=[self.group, token, json.dumps(ids)],
        )
        with self._lock:
            self._inflight.pop(token, None)
        if self.metrics is not None:
            self.metrics.broker_acked.labels(pipeline=self.name).inc(int(acked))

    def _heartbeat(self, stop: threading.Event) -> None:
        """Refresh the in-flight entries' idle time every ``claim_idle / 4``."""
        while not stop.wait(self.options.claim_idle / 4):
            try:
                self._refresh_inflight()
            except BrokerError as exc:
                log.debug("source %s: refreshing in-flight entries failed: %s", self.name, exc)

    def _refresh_inflight(self) -> None:
        with self._lock:
            ids = [i for batch in self._inflight.values() for i in batch]
        for start in range(0, len(ids), 10_000):
            self._call(
                self._touch,
                keys=[self.stream],
                args=[self.group, self.consumer, json.dumps(ids[start : start + 10_000])],
            )

    # -- Redis ---------------------------------------------------------------------------

    def _with_deliveries(self, messages: list[Message]) -> list[Message]:
        pipe = self.client.pipeline(transaction=False)
        for m in messages:
            pipe.xpending_range(self.stream, self.group, min=m.id, max=m.id, count=1)
        replies = self._call(pipe.execute)
        out = []
        for message, reply in zip(messages, replies, strict=True):
            count = int(reply[0]["times_delivered"]) if reply else message.deliveries
            out.append(Message(message.id, message.payload, count))
        return out

    def _read_entries(self, ids: Iterable[str]) -> dict[str, Message]:
        pipe = self.client.pipeline(transaction=False)
        wanted = list(ids)
        for i in wanted:
            pipe.xrange(self.stream, min=i, max=i, count=1)
        out: dict[str, Message] = {}
        for reply in self._call(pipe.execute):
            for message in self._messages([[self.stream, reply]]):
                out[message.id] = message
        return out

    def _messages(self, reply: Any) -> list[Message]:
        """Entries of a reply: ``[[stream, [[id, fields], ...]]]`` where ``fields`` is
        a flat list (raw XREADGROUP), a dict (other commands) or None (deleted)."""
        field = self.options.field.encode()
        out: list[Message] = []
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                if not fields:
                    payload = None
                elif isinstance(fields, dict):
                    payload = fields.get(field)
                elif fields[0] == field:
                    payload = fields[1]
                else:
                    payload = dict(zip(fields[::2], fields[1::2], strict=True)).get(field)
                out.append(Message(entry_id.decode(), payload))
        return out

    def _publish_gauges(self) -> None:
        if self.metrics is None:
            return
        for group in self._call(self.client.xinfo_groups, self.stream):
            if text(group.get("name", b"")) == self.group:
                self.metrics.broker_pending.labels(pipeline=self.name).set(group.get("pending", 0))
                if group.get("lag") is not None:
                    self.metrics.broker_lag.labels(pipeline=self.name).set(group["lag"])

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: Exception) -> BrokerError:
        return BrokerError(f"redis {self.url}: {type(exc).__name__}: {exc}")

    def _ok(self) -> None:
        with self._lock:
            trouble, self._trouble = self._trouble, None
        if trouble is not None:
            log.info("source %s: redis %s answers again", self.name, self.url)

    def _failing(self, why: str) -> None:
        with self._lock:
            first = self._trouble is None
            if first:
                self._trouble = (time.time(), why)
        if first:
            log.warning("source %s: %s; retrying", self.name, why)


__all__ = ["RedisSource"]
