"""The NATS client of the JetStream source: nats-py on an event loop of its own thread
(the daemon is threaded, nats-py is asyncio), a connection from the settings
(credentials and TLS passed through), and the stream, consumer and bucket made ready."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from chworkers.daemon.brokers.options import NatsSourceSettings
from chworkers.daemon.brokers.tlsfiles import tls_files_context
from chworkers.errors import BrokerError, ConfigError
from chworkers.wording import plural

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from chworkers.daemon.brokers.natswire import WireClient

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a call into nats-py may take before the source calls the broker failing.
CALL_TIMEOUT = 30.0
#: How long the first connection may take (two tries per server, TLS included).
CONNECT_TIMEOUT = 12.0


def nats_module(where: str) -> Any:
    """nats-py, or a :class:`ConfigError` saying how to install it (an optional extra)."""
    try:
        import nats
    except ImportError as exc:
        raise ConfigError(
            f"{where}: source = 'nats' needs nats-py: pip install 'chworkers[nats]'",
            key="source",
            value="nats",
            expected="nats-py installed",
        ) from exc
    return nats


class Loop:
    """An asyncio event loop in a daemon thread, for synchronous code to run nats-py's
    coroutines on (:meth:`call`); one per source, so a connection never crosses loops."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], *, where: str, timeout: float = CALL_TIMEOUT) -> T:
        """Run ``coro`` on the loop and wait for it; nats-py's and the socket's errors (and
        a call that takes longer than ``timeout``) become :class:`BrokerError`."""
        return self.result(self.start(coro), where=where, timeout=timeout)

    def start(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop without waiting for it (:meth:`result` waits)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def result(
        self, future: concurrent.futures.Future[T], *, where: str, timeout: float = CALL_TIMEOUT
    ) -> T:
        """Wait for what :meth:`start` started, its errors translated as :meth:`call`'s."""
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise BrokerError(f"{where}: no answer within {timeout:.0f} s") from exc
        except BrokerError:
            raise
        except Exception as exc:
            if is_nats_error(exc):
                raise BrokerError(f"{where}: {describe_error(exc)}") from exc
            raise

    def close(self) -> None:
        """Stop the loop and close it (its selector and the socket pair it wakes up
        through: left open, each source closed leaked them until collected)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():  # else still running: it cannot be closed
            self.loop.close()


def credentials(options: NatsSourceSettings, where: str) -> str | None:
    """The credentials file to log in with (``creds_file``), checked: readable, with a
    user JWT and an NKey seed in it, and nkeys (which nats-py signs with) installed; a
    :class:`ConfigError` saying what is wrong otherwise. None: no credentials file."""
    path = options.creds_file
    if path is None:
        return None

    def refused(why: str) -> ConfigError:
        return ConfigError(
            f"{where}: nats.creds_file {path}: {why}",
            key="nats.creds_file",
            value=path,
            expected="a NATS credentials file (a user JWT and its NKey seed, as nsc writes it)",
        )

    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise refused(f"cannot be read: {exc.strerror or exc}") from exc
    if "NATS USER JWT" not in text or "NKEY SEED" not in text:
        raise refused("no user JWT and NKey seed in it")
    if importlib.util.find_spec("nkeys") is None:  # nats-py signs the server's nonce with it
        raise refused("logging in with it needs nkeys: pip install 'chworkers[nats]'")
    return path


def is_nats_error(exc: BaseException) -> bool:
    """Whether ``exc`` is NATS or the network failing (not a bug of ours)."""
    import nats.errors

    return isinstance(exc, (nats.errors.Error, asyncio.TimeoutError, OSError))


def describe_error(exc: BaseException) -> str:
    description = getattr(exc, "description", None) or str(exc) or "no details"
    return f"{type(exc).__name__}: {description}"


def display_url(url: str) -> str:
    """The servers without their credentials, for logs and errors."""
    out = []
    for server in url.split(","):
        parts = urllib.parse.urlsplit(server.strip())
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        out.append(urllib.parse.urlunsplit((parts.scheme, netloc, "", "", "")))
    return ",".join(out)


def tls_context(options: NatsSourceSettings, where: str) -> ssl.SSLContext | None:
    """The TLS context for the settings (None: plain, unless the URL says tls://); its
    files that cannot be used are a :class:`ConfigError` naming the setting."""
    wants = options.url.startswith("tls://") or options.tls_ca_file or options.tls_cert_file
    if not wants:
        return None
    return tls_files_context(
        ca=("nats.tls_ca_file", options.tls_ca_file),
        cert=("nats.tls_cert_file", options.tls_cert_file),
        key=("nats.tls_key_file", options.tls_key_file),
        where=where,
    )


async def connect(options: NatsSourceSettings, where: str, *, name: str) -> WireClient:
    """A connection; once made, it reconnects by itself for ever (the source reports the
    outage meanwhile). Not reaching a server at first raises :class:`BrokerError` with
    why (the caller tries again with a backoff)."""
    nats_module(where)
    failures: list[BaseException] = []
    hopeless = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        failures.append(exc)
        if isinstance(exc, ssl.SSLError):
            hopeless.set()  # a certificate that does not verify will not verify next time
        log.debug("%s: nats: %s", where, describe_error(exc))

    kwargs: dict[str, Any] = {
        "name": name,
        "connect_timeout": 5,
        "reconnect_time_wait": 0.5,
        # At first: one more try per server, then the error; once connected: for ever.
        "max_reconnect_attempts": 1,
        "allow_reconnect": True,
        "error_cb": on_error,
        # Acknowledgements and in-progress notes of a whole batch go out at once.
        "pending_size": 64 * 1024 * 1024,
    }
    servers = [s.strip() for s in options.url.split(",") if s.strip()]
    if options.user is not None:
        kwargs["user"] = options.user
    if options.password is not None:
        kwargs["password"] = options.password
    if options.token is not None:
        kwargs["token"] = options.token
    creds = credentials(options, where)
    if creds is not None:
        kwargs["user_credentials"] = creds
    context = tls_context(options, where)
    if context is not None:
        kwargs["tls"] = context
        if options.tls_hostname:
            kwargs["tls_hostname"] = options.tls_hostname

    # Bounded here: after some failures (TLS) nats-py keeps trying without end.
    async def open() -> WireClient:
        from chworkers.daemon.brokers.natswire import WireClient

        client = WireClient()
        await client.connect(servers, **kwargs)
        return client

    connecting = asyncio.ensure_future(open())
    given_up = asyncio.ensure_future(hopeless.wait())
    await asyncio.wait(
        {connecting, given_up}, timeout=CONNECT_TIMEOUT, return_when="FIRST_COMPLETED"
    )
    given_up.cancel()
    if not connecting.done() or connecting.exception() is not None:
        failure = connecting.exception() if connecting.done() else None
        connecting.cancel()
        if failure is not None and not is_nats_error(failure):
            raise failure
        cause = failures[-1] if failures else failure
        why = describe_error(cause) if cause is not None else f"no answer in {CONNECT_TIMEOUT} s"
        raise BrokerError(f"{where}: cannot connect: {why}") from cause
    client = connecting.result()
    client.options["max_reconnect_attempts"] = -1
    return client


async def stream_ready(js: JetStreamContext, options: NatsSourceSettings, where: str) -> str:
    """The stream exists (created with ``subjects`` when missing and asked to); returns
    when it was created (ISO 8601, "" if the server does not say): what tells this
    stream from one deleted and made again under its name, whose sequence numbers
    start over."""
    import nats.js.api
    import nats.js.errors

    try:
        return _created(await js.stream_info(options.stream))
    except nats.js.errors.NotFoundError:
        if not options.subjects:
            raise BrokerError(
                f"{where}: stream {options.stream} does not exist: create it "
                "(nats stream add), or set nats.subjects for `run` to"
            ) from None
    config = nats.js.api.StreamConfig(
        name=options.stream,
        subjects=list(options.subjects),
        storage=nats.js.api.StorageType.FILE,
    )
    try:
        await js.add_stream(config)
        log.info("%s: created stream %s on %s", where, options.stream, ", ".join(options.subjects))
    except nats.js.errors.BadRequestError:
        pass  # another daemon created it first
    return _created(await js.stream_info(options.stream))


def _created(info: Any) -> str:
    created = getattr(info, "created", None)
    return created.isoformat() if created is not None else ""


async def consumer_ready(js: JetStreamContext, options: NatsSourceSettings, where: str) -> None:
    """The durable pull consumer exists with the settings (created, or updated)."""
    import nats.js.api
    import nats.js.errors

    api = nats.js.api
    config = api.ConsumerConfig(
        durable_name=options.consumer,
        # "all": one +ACK acknowledges every message up to it (natsprefix.py).
        ack_policy=api.AckPolicy.ALL if options.ack_policy == "all" else api.AckPolicy.EXPLICIT,
        ack_wait=options.ack_wait,
        # The daemon dead-letters and terminates a message delivered too often itself
        # (with its reason in the dead letters): the server never gives up silently.
        max_deliver=-1,
        max_ack_pending=options.max_ack_pending,
        deliver_policy=api.DeliverPolicy.ALL
        if options.deliver_policy == "all"
        else api.DeliverPolicy.NEW,
        filter_subject=options.filter_subject or None,
    )
    try:
        await js.add_consumer(options.stream, config)
    except nats.js.errors.APIError as exc:  # a bad request, or a change it refuses
        hint = ""
        if "ack policy" in str(getattr(exc, "description", "")):
            hint = (
                f" (the consumer exists with another acknowledgement policy than "
                f'ack_policy = "{options.ack_policy}": name a new consumer for this one)'
            )
        raise BrokerError(
            f"{where}: cannot create or update consumer {options.consumer} on stream "
            f"{options.stream}: {describe_error(exc)}{hint}"
        ) from exc


async def bucket(js: JetStreamContext, options: NatsSourceSettings) -> KeyValue:
    """The manifests' bucket, created when missing (one history entry; reads go to the
    stream's leader, not a replica that may lag)."""
    import nats.js.api
    import nats.js.errors

    try:
        kv: KeyValue = await js.key_value(options.bucket)
        return kv
    except nats.js.errors.BucketNotFoundError:
        pass
    config = nats.js.api.KeyValueConfig(
        bucket=options.bucket,
        history=1,
        ttl=options.manifest_ttl,
        direct=False,
        description="chworkers: manifests of the batches in flight (docs/brokers.md)",
    )
    try:
        kv = await js.create_key_value(config)
    except nats.js.errors.BadRequestError:
        kv = await js.key_value(options.bucket)  # another daemon created it first
    return kv


def describe(options: NatsSourceSettings, where: str) -> str:
    """One line on the stream, its consumer and the manifests, for ``chworkers check``;
    raises :class:`BrokerError` when NATS does not answer or refuses."""
    from chworkers.daemon.brokers.natsmanifests import ManifestStore

    async def look() -> str:
        import nats.js.errors

        server = f"{where}: nats {display_url(options.url)}"  # which server did not answer
        client = await connect(options, server, name="chworkers check")
        try:
            js = client.jetstream()
            try:
                info = await js.stream_info(options.stream)
            except nats.js.errors.NotFoundError:
                create = (
                    f"`run` creates it on {', '.join(options.subjects)}"
                    if options.subjects
                    else "create it, or set nats.subjects"
                )
                return f"stream {options.stream} does not exist ({create})"
            line = f"stream {options.stream}: {info.state.messages} messages"
            try:
                consumer = await js.consumer_info(options.stream, options.consumer)
            except nats.js.errors.NotFoundError:
                return f"{line}; consumer {options.consumer} not created yet (`run` creates it)"
            line += (
                f"; consumer {options.consumer}: {consumer.num_ack_pending} pending, "
                f"lag {consumer.num_pending}, {consumer.num_redelivered} redelivered"
            )
            try:
                kv = await js.key_value(options.bucket)
            except nats.js.errors.BucketNotFoundError:
                return f"{line}; bucket {options.bucket} not created yet (`run` creates it)"
            store = ManifestStore(
                kv, f"{options.stream}.{options.consumer}", ttl=options.manifest_ttl, where=where
            )
            registry = await store.load()
            # Manifests whose messages are all acknowledged stay in the key until the
            # next change prunes them (after a pipeline's last batch: until a next one):
            # count only those of batches still in flight, as the daemons would.
            registry.prune(consumer.ack_floor.stream_seq, time.time(), options.manifest_ttl)
            return (
                f"{line}; {plural(len(registry.manifests), 'manifest')} of batches in "
                f"flight in bucket {options.bucket}"
            )
        finally:
            await client.close()

    loop = Loop("chworkers-check-nats")
    try:
        return loop.call(look(), where=f"nats {display_url(options.url)}")
    finally:
        loop.close()


__all__ = [
    "Loop",
    "bucket",
    "connect",
    "consumer_ready",
    "credentials",
    "describe",
    "display_url",
    "is_nats_error",
    "nats_module",
    "stream_ready",
]
