"""The manifests beside a Redis Stream, as the Redis source writes, waits for, completes
and refreshes them (docs/brokers.md, "A batch's life"), and how redis-py's failures become
:class:`~chworkers.errors.BrokerError` s: the half of
:class:`~chworkers.daemon.brokers.redisgroup.StreamGroup` that is not reading.

``<stream>:chworkers:<group>:manifest:<token>`` holds one batch's manifest (its token and
ids as JSON, with a TTL) and ``<stream>:chworkers:<group>:manifests`` the set of the live
manifests' tokens. The scripts that keep them consistent are in
:mod:`~chworkers.daemon.brokers.redisscripts`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from chworkers.daemon.brokers import redisscripts
from chworkers.daemon.brokers.options import RedisSourceSettings
from chworkers.daemon.brokers.redisahead import Ahead, Reply, transaction
from chworkers.daemon.brokers.redisclient import entry_order, failures, text
from chworkers.errors import BrokerError

#: Ids per call of the touch script (its reply and its time in Redis stay small).
TOUCH_CHUNK = 10_000
#: Ids per XACK of an acknowledgement (all of a batch's in one transaction).
ACK_CHUNK = 10_000


def ids_json(ids: list[str]) -> str:
    """Stream entry ids as a JSON array (ids are digits and one dash: nothing to escape;
    a tenth of json.dumps's time, which a batch of 10,000 ids pays three times)."""
    return '["' + '","'.join(ids) + '"]' if ids else "[]"


@dataclasses.dataclass(frozen=True)
class SentManifest:
    """A manifest sent ahead: its reply to come (None: to be sent again, its reply was
    lost), the reply of the ``WAIT`` sent after it (``wait_replicas``), and what was sent
    (to send it again)."""

    reply: Reply | None
    wait: Reply | None
    keys: list[str]
    args: list[Any]

    def again(self) -> SentManifest:
        """The same manifest, to be sent again at its next verdict."""
        return dataclasses.replace(self, reply=None, wait=None)


class GroupManifests:
    """The manifests of ``stream``'s ``group`` as ``consumer`` writes them
    (:class:`~chworkers.daemon.brokers.redisgroup.StreamGroup` connects, and reads)."""

    options: RedisSourceSettings
    consumer: str
    url: str
    client: Any  # a redis.Redis, or a RedisCluster
    stream: str
    group: str
    manifests_key: str
    manifest_prefix: str
    consumers_key: str
    #: How each manifest written was checked: "fresh" (the batch's ends only) or "all".
    checks: dict[str, int]
    #: The connection manifests are sent ahead on (the source's thread alone uses it).
    _writes: Ahead
    _write_manifest: Any  # redis-py Scripts
    _touch: Any

    def _pool(self) -> Any:
        """The connection pool of the node that serves the stream."""
        if not self.options.cluster:
            return self.client.connection_pool
        node = self.client.get_node_from_key(self.stream)
        return self.client.get_redis_connection(node).connection_pool

    # -- manifests -------------------------------------------------------------------

    def announce(self) -> None:
        """Tell the group's other daemons this consumer's ``claim_idle`` (before it claims
        anything): the manifests of batches of new entries may then skip looking up each
        of their ids (``WRITE_MANIFEST`` in redisscripts.py says when, and why it is safe
        only while every consumer of the group announced itself)."""
        claim_idle = max(1, int(self.options.claim_idle * 1000))
        self.call(self.client.hset, self.consumers_key, self.consumer, claim_idle)

    def live_manifests(self) -> dict[str, tuple[str, list[str]]]:
        """Entry id -> (token, ids) of every manifest beside the stream (few: one per
        batch in flight in any daemon); forgets tokens whose manifest expired."""
        tokens = [text(t) for t in self.call(self.client.smembers, self.manifests_key)]
        if not tokens:
            return {}
        bodies = self.call(self.client.mget, [self.manifest_prefix + t for t in tokens])
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
            self.call(self.client.srem, self.manifests_key, *expired)
        return owners

    def send_manifest(self, token: str, ids: list[str], *, fresh: bool) -> SentManifest:
        """Send a batch's manifest ahead (:meth:`verdict` says how it went): written if
        every id is still pending for this consumer. ``fresh``: the ids are this
        consumer's reads of new entries, in stream order (the lowest first, the highest
        last; the script may then skip looking each one up: redisscripts.py)."""
        return self.send(self.manifest(token, ids, fresh=fresh))

    def manifest(self, token: str, ids: list[str], *, fresh: bool) -> SentManifest:
        """A batch's manifest, not sent yet (:meth:`send`, or :meth:`verdict` sends it)."""

        head = json.dumps({"token": token, "consumer": self.consumer, "created": time.time()})
        body = f'{head[:-1]}, "ids": {ids_json(ids)}}}'
        keys = [self.stream, self.manifests_key, self.manifest_prefix + token, self.consumers_key]
        args = [
            self.group,
            self.consumer,
            token,
            body,
            int(self.options.manifest_ttl * 1000),
            ids[0] if fresh else min(ids, key=entry_order),
            ids[-1] if fresh else max(ids, key=entry_order),
            "1" if fresh else "0",
        ]
        return SentManifest(None, None, keys, args)

    def send(self, manifest: SentManifest) -> SentManifest:
        """Send the manifest's script ahead, and the ``WAIT`` for its replicas after it
        on the same connection (``WAIT`` waits for that connection's writes)."""
        try:
            sha, keys = self._write_manifest.sha, manifest.keys
            reply = self._writes.send("EVALSHA", sha, len(keys), *keys, *manifest.args)
            wait = None
            if self.options.wait_replicas:
                timeout = max(1, int(self.options.wait_timeout * 1000))
                wait = self._writes.send("WAIT", self.options.wait_replicas, timeout)
        except failures() as exc:
            raise self.error(exc, ahead=self._writes) from exc
        return dataclasses.replace(manifest, reply=reply, wait=wait)

    def verdict(self, sent: SentManifest) -> str | None:
        """None when the manifest was written (and reached ``wait_replicas`` replicas);
        else the first id that is not pending for this consumer any more (claimed by
        another consumer, or acknowledged). A manifest whose reply was lost
        (:meth:`SentManifest.again`) is sent now. Raises :class:`BrokerError` when Redis
        fails or the replicas lag: the manifest may or may not be written, and is sent
        again (it is the same script: it writes the same manifest if every id is still
        this consumer's)."""
        import redis

        try:
            if sent.reply is None:
                sent = self.send(sent)
            assert sent.reply is not None
            try:
                reply = self._writes.take(sent.reply)
            except redis.exceptions.NoScriptError:  # Redis restarted: load it, send again
                self.client.script_load(redisscripts.WRITE_MANIFEST)
                sent = self.send(sent)
                assert sent.reply is not None
                reply = self._writes.take(sent.reply)
            verdict = [text(part) for part in reply]
            if verdict[0] != "ok":
                return verdict[1]
            self.checks[verdict[1]] = self.checks.get(verdict[1], 0) + 1
            if sent.wait is not None:
                self._replicated(sent.wait)
            return None
        except failures() as exc:
            raise self.error(exc, ahead=self._writes) from exc

    def _replicated(self, wait: Reply) -> None:
        """Raise :class:`BrokerError` unless ``WAIT`` says ``wait_replicas`` replicas have
        this connection's writes."""
        replicas = int(self._writes.take(wait))
        wanted = self.options.wait_replicas
        if replicas < wanted:
            raise BrokerError(
                f"redis {self.url}: a manifest reached {replicas} of wait_replicas = {wanted} "
                f"replicas within {self.options.wait_timeout:g} s"
            )

    def replicate(self, token: str) -> None:
        """Before a rebuilt batch goes on (``wait_replicas``): its manifest (written by
        another daemon, or by this one before a restart) on as many replicas. Refreshing
        its TTL is a write of this connection, which ``WAIT`` waits for: replicas apply
        writes in order, so they then have the manifest too."""
        if not self.options.wait_replicas:
            return
        ttl = int(self.options.manifest_ttl * 1000)
        timeout = max(1, int(self.options.wait_timeout * 1000))
        try:
            touched = self._writes.send("PEXPIRE", self.manifest_prefix + token, ttl)
            waited = self._writes.send("WAIT", self.options.wait_replicas, timeout)
            self._writes.take(touched)  # MOVED and the like: then WAIT says nothing
            self._replicated(waited)
        except failures() as exc:
            raise self.error(exc, ahead=self._writes) from exc

    def refresh(self, tokens: Iterable[str]) -> None:
        """Give the manifests of ``tokens`` (batches this daemon holds) ``manifest_ttl``
        anew, in one round trip: a batch held longer than that (ClickHouse down for long)
        keeps its manifest, so it is inserted with its token, exactly once. A manifest
        gone meanwhile (its batch completed) stays gone: ``PEXPIRE`` makes no key."""
        keys = [self.manifest_prefix + token for token in tokens]
        if not keys:
            return
        ttl = int(self.options.manifest_ttl * 1000)
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.pexpire(key, ttl)
        self.call(pipe.execute)

    def rewrite(self, token: str, ids: list[str]) -> bool:
        """Write again the manifest of a batch this consumer holds whose manifest is gone
        (it expired, or a failover lost it), before the batch's next attempt: by the
        same script as its first write, so only if every id is still pending for this
        consumer (none claimed by another, none acknowledged), and then on
        ``wait_replicas`` replicas (``WAIT`` after it, on the same connection). Whether
        it was written."""
        sent = self.manifest(token, ids, fresh=False)
        node = self.client
        if self.options.cluster:
            node = self.client.get_redis_connection(self.client.get_node_from_key(self.stream))
        pipe = node.pipeline(transaction=False)
        self._write_manifest(keys=sent.keys, args=sent.args, client=pipe)
        wanted = self.options.wait_replicas
        if wanted:
            pipe.execute_command("WAIT", wanted, max(1, int(self.options.wait_timeout * 1000)))
        replies = self.call(pipe.execute)
        if text(replies[0][0]) != "ok":
            return False
        if wanted and int(replies[1]) < wanted:
            raise BrokerError(
                f"redis {self.url}: a manifest written again reached {int(replies[1])} of "
                f"wait_replicas = {wanted} replicas within {self.options.wait_timeout:g} s"
            )
        return True

    def has_manifest(self, token: str) -> bool:
        return bool(self.call(self.client.exists, self.manifest_prefix + token))

    def complete(self, ids: list[str], token: str) -> int:
        """Acknowledge ``ids`` and remove the manifest of ``token`` (none when empty), at
        once; returns how many entries were still pending."""
        return self.complete_many([(ids, token)])

    def complete_many(self, batches: Sequence[tuple[list[str], str]]) -> int:
        """:meth:`complete` for several batches ``(ids, token)`` in one transaction (one
        round trip, one fsync of Redis's log); returns how many entries were still
        pending."""
        ids = [i for batch_ids, _token in batches for i in batch_ids]
        tokens = [token for _ids, token in batches if token]
        commands: list[tuple[Any, ...]] = [
            ("XACK", self.stream, self.group, *ids[start : start + ACK_CHUNK])
            for start in range(0, len(ids), ACK_CHUNK)
        ]
        acks = len(commands)
        if tokens:
            commands.append(("DEL", *(self.manifest_prefix + token for token in tokens)))
            commands.append(("SREM", self.manifests_key, *tokens))
        if not commands:
            return 0
        replies = self.call(transaction, self._pool(), *commands)
        return sum(int(acked) for acked in replies[:acks])

    def touch(self, batches: Iterable[list[str]]) -> None:
        """Reset the idle time of the ids of ``batches`` still pending for this consumer
        (one script per batch and per ``TOUCH_CHUNK`` ids, all in one round trip; one
        after the other in a cluster, whose pipelines take no scripts)."""
        calls = []
        for ids in batches:
            for start in range(0, len(ids), TOUCH_CHUNK):
                chunk = ids[start : start + TOUCH_CHUNK]
                low, high = min(chunk, key=entry_order), max(chunk, key=entry_order)
                calls.append([self.group, self.consumer, low, high, ids_json(chunk)])
        if not calls:
            return
        if self.options.cluster:
            for args in calls:
                self.call(self._touch, keys=[self.stream], args=args)
            return
        pipe = self.client.pipeline(transaction=False)
        for args in calls:
            self._touch(keys=[self.stream], args=args, client=pipe)
        self.call(pipe.execute)

    # -- errors ----------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with redis-py's errors as :class:`BrokerError`."""

        try:
            return fn(*args, **kwargs)
        except failures() as exc:
            raise self.error(exc) from exc

    def error(self, exc: Exception, *, ahead: Ahead | None = None) -> BrokerError:
        """``exc`` as a :class:`BrokerError`. In a cluster, a failure that may mean the
        stream's slot moved (MOVED, ASK, the cluster down, a node unreachable) has the
        slots asked again, and, when it came from a connection sent ahead on (``ahead``:
        the reads' or the manifests'; the source's own thread is the only one that uses
        them), drops that connection. The daemon's other threads (acknowledgements, the
        heartbeat, the checks before a retry) never touch them: dropped under the
        source's feet, one lost the replies outstanding on it, or failed the source's
        thread outright."""
        import redis.exceptions as errors

        moved = (errors.AskError, errors.ClusterDownError, errors.TryAgainError)
        if self.options.cluster and isinstance(exc, (*moved, errors.ConnectionError)):
            # TRYAGAIN (a script's keys half migrated) leaves the connection in step and
            # on the node that still serves the stream: the replies after it are good.
            if ahead is not None and not isinstance(exc, errors.TryAgainError):
                ahead.reset()
            with contextlib.suppress(errors.RedisError):  # tried again at the next failure
                self.client.nodes_manager.initialize()
        return BrokerError(f"redis {self.url}: {type(exc).__name__}: {exc}")


__all__ = ["GroupManifests", "SentManifest", "ids_json"]
