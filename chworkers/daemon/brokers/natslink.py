"""The JetStream source's link to NATS, for its synchronous threads: the event loop
nats-py runs on, the connection made ready (stream, consumer, bucket), blocking calls
into it, the in-progress notes that keep a live daemon's messages, and the close."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from chworkers.daemon.brokers import natsclient
from chworkers.daemon.brokers.natsconsumer import Consumer
from chworkers.daemon.brokers.natsmanifests import ManifestStore
from chworkers.daemon.brokers.options import NatsSourceSettings
from chworkers.errors import BrokerError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: JetStream's acknowledgement payloads.
ACK, PROGRESS, TERM = b"+ACK", b"+WPI", b"+TERM"
#: How long a call waits for the first connection before the broker counts as failing.
CONNECTED_WAIT = 5.0


class NatsLink:
    """One connection of source ``name``; ``label`` names this daemon to NATS."""

    def __init__(self, options: NatsSourceSettings, name: str, label: str) -> None:
        natsclient.nats_module(f"pipeline {name!r}")  # installed, or a clear error now
        natsclient.credentials(options, f"pipeline {name!r}")  # the same for creds_file
        natsclient.tls_context(options, f"pipeline {name!r}")  # and for the TLS files
        self.options = options
        self.name = name
        self.label = label
        self.url = natsclient.display_url(options.url)
        self.where = f"nats {self.url}"
        self.loop = natsclient.Loop(f"source-{name}-nats")
        self._consumer: Consumer | None = None
        #: When the stream was created (natsclient.stream_ready): a stream made again
        #: under its name numbers its messages from 1 again.
        self.incarnation = ""
        self._store: ManifestStore | None = None
        self._ready = threading.Event()
        self._closed = threading.Event()

    @property
    def connected(self) -> bool:
        return self._consumer is not None

    def connect(self) -> None:
        """Connect, and make the stream, the consumer and the bucket ready."""
        options = self.options

        async def connect() -> tuple[Consumer, ManifestStore]:
            name = f"chworkers {self.label} {self.name}"
            client = await natsclient.connect(options, self.where, name=name)
            acks = None
            try:
                js = client.jetstream()
                self.incarnation = await natsclient.stream_ready(js, options, self.where)
                await natsclient.consumer_ready(js, options, self.where)
                kv = await natsclient.bucket(js, options)
                acks = await natsclient.connect(options, self.where, name=f"{name} acks")
                consumer = Consumer(
                    client,
                    js,
                    options.stream,
                    options.consumer,
                    options.ack_wait,
                    acks,
                    options.filter_subject,
                )
                await consumer.start()
            except BaseException:
                await client.close()
                if acks is not None:
                    await acks.close()
                raise
            key = f"{options.stream}.{options.consumer}"
            store = ManifestStore(kv, key, ttl=options.manifest_ttl, where=f"source {self.name}")
            return consumer, store

        self._consumer, self._store = self.call(connect())
        self._ready.set()
        log.info(
            "source %s: reading stream %s through consumer %s on %s",
            self.name,
            options.stream,
            options.consumer,
            self.url,
        )

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it (:class:`BrokerError` on failure)."""
        return self.loop.call(coro, where=self.where)

    def start(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop without waiting for it (:meth:`result` waits)."""
        return self.loop.start(coro)

    def result(self, future: concurrent.futures.Future[T]) -> T:
        """What :meth:`start` started (:class:`BrokerError` on failure)."""
        return self.loop.result(future, where=self.where)

    def wire(self) -> Consumer:
        if not self._ready.wait(CONNECTED_WAIT) or self._consumer is None:
            raise BrokerError(f"source {self.name}: not connected to {self.where} yet")
        return self._consumer

    def manifests(self) -> ManifestStore:
        if not self._ready.wait(CONNECTED_WAIT) or self._store is None:
            raise BrokerError(f"source {self.name}: not connected to {self.where} yet")
        return self._store

    def send(self, replies: list[bytes], what: bytes) -> None:
        if replies:
            self.call(self.wire().send(replies, what))

    def keep_alive(
        self,
        due: Callable[[], tuple[list[str], list[bytes]]],
        noted: Callable[[list[str], float], None],
    ) -> None:
        """Every ``ack_wait / 8``, until :meth:`close`, tell JetStream that the messages
        of the batches ``due()`` names are still being worked on (``due`` says which
        need it: those whose ack_wait has run for a quarter of it), and ``noted(tokens,
        when)`` once it is sent; from a thread of its own, so a source waiting for a
        full spool keeps them too."""

        def beat() -> None:
            while not self._closed.wait(self.options.ack_wait / 8):
                if not self._ready.is_set():
                    continue
                tokens, replies = due()
                if not replies:
                    continue
                at = time.monotonic()  # the server restarts their ack_wait after this
                try:
                    self.send(replies, PROGRESS)
                except BrokerError as exc:
                    log.debug("source %s: in-progress notes failed: %s", self.name, exc)
                else:
                    noted(tokens, at)

        threading.Thread(target=beat, name=f"source-{self.name}-heartbeat", daemon=True).start()

    def close(self) -> None:
        """No more in-progress notes, the connection closed, the loop stopped."""
        self._closed.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                self.loop.call(consumer.close(), where=self.where, timeout=10)
            except BrokerError as exc:
                log.debug("source %s: closing the connection: %s", self.name, exc)
        self.loop.close()


__all__ = ["ACK", "PROGRESS", "TERM", "NatsLink"]
