"""A real nats-server with JetStream for tests: Debian's package, installed on first use
when missing, started on a free loopback port with its own store directory, always
stopped.

Used by tests/test_nats_source.py, tests/faults/ and benchmarks/bench_brokers.py.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from debpackages import ProgramUnavailable, find_program, free_port
from serverprocess import ServerProcess

T = TypeVar("T")


class NatsUnavailable(ProgramUnavailable):
    """nats-server is missing and could not be installed."""


def find_nats_server() -> str:
    """The path of nats-server, apt-get installing Debian's package if it is missing."""
    return find_program("nats-server", "nats-server", NatsUnavailable)


class NatsServer(ServerProcess):
    """One nats-server process, JetStream on, its store in ``directory``; optionally with
    a user and password (``auth``)."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int = 0,
        auth: tuple[str, str] | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        self.binary = find_nats_server()
        self.options = options  # more command-line options (e.g. --profile PORT)
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.auth = auth
        self.tls = tls  # (CA, certificate, key): clients must speak TLS
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        command = [
            self.binary,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.directory / "store"),
        ]
        if self.auth is not None:
            command += ["--user", self.auth[0], "--pass", self.auth[1]]
        if self.tls is not None:
            command += ["--tls", "--tlscert", str(self.tls[1]), "--tlskey", str(self.tls[2])]
        command += self.options
        log = open(self.directory / "nats.log", "ab")  # noqa: SIM115 (the child keeps it)
        self._log_from = log.tell()
        self.proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "nats-server did not start: "
                    + (self.directory / "nats.log").read_text()[-2000:]
                )
            time.sleep(0.05)

    def run(self, work: Callable[[Any], Awaitable[T]], **connect: Any) -> T:
        """``work(client)`` with a nats-py client of its own (``connect``: its options)."""
        import nats

        if self.auth is not None:
            connect = {"user": self.auth[0], "password": self.auth[1], **connect}
        if self.tls is not None:
            import ssl

            connect = {"tls": ssl.create_default_context(cafile=str(self.tls[0])), **connect}

        async def main() -> T:
            client = await nats.connect(self.url, **connect)
            try:
                return await work(client)
            finally:
                await client.close()

        return asyncio.run(main())

    def make_stream(self, stream: str = "ev") -> None:
        """A stream on ``<stream>.>`` (file storage)."""

        async def work(client: Any) -> None:
            await client.jetstream().add_stream(name=stream, subjects=[f"{stream}.>"])

        self.run(work)

    def publish(self, bodies: list[bytes], subject: str = "ev.data") -> None:
        """Publish each body to JetStream (acknowledged by the stream)."""

        async def work(client: Any) -> None:
            js = client.jetstream()
            for start in range(0, len(bodies), 500):
                acks = [js.publish(subject, body) for body in bodies[start : start + 500]]
                await asyncio.gather(*acks)

        self.run(work)

    def consumer_state(
        self, stream: str = "ev", consumer: str = "chworkers", bucket: str = "chworkers"
    ) -> tuple[int, int, int]:
        """(messages not delivered yet, delivered and not acknowledged, manifests of
        batches whose messages are not all acknowledged)."""
        import json

        import nats.js.errors

        async def work(client: Any) -> tuple[int, int, int]:
            js = client.jetstream()
            info = await js.consumer_info(stream, consumer)
            floor = info.ack_floor.stream_seq
            try:
                entry = await (await js.key_value(bucket)).get(f"{stream}.{consumer}")
                batches = json.loads(entry.value)["batches"].values()
            except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
                batches = []
            live = [b for b in batches if b["seqs"][-1][1] > floor]
            return info.num_pending, info.num_ack_pending, len(live)

        return self.run(work)

    def settled(self, stream: str = "ev") -> bool:
        """Everything delivered and acknowledged, no manifest of a batch pending."""
        try:
            return self.consumer_state(stream) == (0, 0, 0)
        except Exception:
            return False

    def _ready(self) -> bool:
        """The server accepts connections and says JetStream is ready in its log (its
        INFO line comes before any TLS)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                if not s.recv(4096).startswith(b"INFO"):
                    return False
        except OSError:
            return False
        with open(self.directory / "nats.log", "rb") as log:
            log.seek(self._log_from)
            return b"Server is ready" in log.read()


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signed for 127.0.0.1, with openssl: (CA, cert, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise NatsUnavailable("openssl is missing: no certificates for the TLS test")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    cert, key, csr = directory / "server.pem", directory / "server-key.pem", directory / "s.csr"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    new_key = ["-newkey", "rsa:2048", "-nodes", "-days", "2"]
    sign = ["-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-extfile", str(ext)]
    steps = [
        ["req", "-x509", *new_key, "-subj", "/CN=test ca", "-keyout", str(ca_key), "-out", str(ca)],
        ["req", *new_key, "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr)],
        ["x509", "-req", "-in", str(csr), *sign, "-days", "2", "-out", str(cert)],
    ]
    for step in steps:
        subprocess.run([openssl, *step], check=True, capture_output=True, timeout=60)
    return ca, cert, key
