"""What a drill sends: lines with unique ids (and poison lines ClickHouse refuses), as
files the daemon follows (:class:`FileFeed`), pushes from several clients
(:class:`PushClients`) or the bodies of broker entries."""

from __future__ import annotations

import collections
import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from brokerfeeds import bodies
from drillbase import PATIENCE, POISON_PREFIX, TABLE, DrillError


def line(i: int, src: str) -> bytes:
    return b'{"id":%d,"src":"%s","s":"row %d of the fault drill"}\n' % (i, src.encode(), i)


def broker_bodies(start: int, stop: int, src: str, per: int = 50) -> list[bytes]:
    """Lines ``start`` .. ``stop - 1`` from ``src``, ``per`` to a Redis entry or NATS
    message (``RedisServer.add_entries``, ``NatsServer.publish``)."""
    return bodies(start, stop, per, lambda i: line(i, src))


def poison_line(n: int) -> bytes:
    return b'{"id":"%s%d","src":"poison","s":"ClickHouse cannot parse this id"}\n' % (
        POISON_PREFIX.encode(),
        n,
    )


@dataclass
class IdRange:
    """The ids one feed sends: ``start`` .. ``start + sent - 1``."""

    start: int
    sent: int = 0

    def ids(self) -> range:
        return range(self.start, self.start + self.sent)


class FileFeed:
    """Appends lines with unique ids to files the daemon follows, in a thread.

    ``total`` lines in chunks of ``chunk`` lines, ``pause`` seconds apart, into
    ``seg-0001.json``, ``seg-0002.json``... (``rows_per_file`` lines each); every
    ``poison_every``-th line (0: none) is a poison line instead, counted in ``poison``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        start: int,
        total: int,
        chunk: int = 1000,
        pause: float = 0.02,
        rows_per_file: int = 25_000,
        poison_every: int = 0,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.total = total
        self.chunk = chunk
        self.pause = pause
        self.rows_per_file = rows_per_file
        self.poison_every = poison_every
        self.ids = IdRange(start)
        self.poison: list[str] = []
        self._written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="file-feed", daemon=True)

    @property
    def glob(self) -> str:
        return str(self.directory / "seg-*.json")

    def start(self) -> FileFeed:
        self._thread.start()
        return self

    def write_all_now(self) -> FileFeed:
        """Write every line at once, in this thread (for a source that reads files once)."""
        self.pause = 0
        self._run()
        return self

    def done(self) -> bool:
        return self._written >= self.total

    def progress(self) -> float:
        return self._written / self.total

    def join(self, timeout: float = PATIENCE) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def _run(self) -> None:
        while self._written < self.total and not self._stop.is_set():
            n = min(self.chunk, self.total - self._written)
            data = []
            for k in range(self._written, self._written + n):
                if self.poison_every and k % self.poison_every == self.poison_every - 1:
                    record = poison_line(len(self.poison))
                    self.poison.append(record.decode().rstrip("\n"))
                else:
                    record = line(self.ids.start + self.ids.sent, "file")
                    self.ids.sent += 1
                data.append(record)
            segment = self.directory / f"seg-{self._written // self.rows_per_file + 1:04d}.json"
            with open(segment, "ab") as fh:
                fh.write(b"".join(data))
                fh.flush()
            self._written += n
            if self.pause:
                self._stop.wait(self.pause)


class PushClients:
    """HTTP clients POSTing id ranges to ``/ingest/<table>``; each retries every answer but
    202 (connection refused or reset, 503, 500...) until it gets a 202.

    ``url`` is asked before every attempt (the daemon's port may change on a restart).
    With ``idempotency_keys`` every request carries an ``Idempotency-Key`` (made from its
    ids), so a request sent again after its answer was lost lands once.
    ``statuses`` counts every answer (``"error"`` for no answer at all).
    """

    def __init__(
        self,
        url: Callable[[], str | None],
        *,
        start: int,
        clients: int = 4,
        requests: int = 20,
        rows: int = 200,
        pause: float = 0.01,
        retry_pause: float = 0.2,
        deadline: float = 300.0,
        idempotency_keys: bool = False,
    ) -> None:
        self.url = url
        self.idempotency_keys = idempotency_keys
        self.ids = IdRange(start, 0)
        self.clients = clients
        self.requests = requests
        self.rows = rows
        self.pause = pause
        self.retry_pause = retry_pause
        self.deadline = deadline
        self.statuses: collections.Counter[str] = collections.Counter()
        self.acked_rows = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(c,), name=f"push-{c}", daemon=True)
            for c in range(clients)
        ]

    @property
    def total_rows(self) -> int:
        return self.clients * self.requests * self.rows

    def start(self) -> PushClients:
        self.ids.sent = self.total_rows  # every id is sent (retried until acknowledged)
        for t in self._threads:
            t.start()
        return self

    def done(self) -> bool:
        return not any(t.is_alive() for t in self._threads)

    def join(self, timeout: float = PATIENCE) -> None:
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        if not self.done():
            raise DrillError(
                f"push clients still retrying after {timeout} s; answers so far: "
                f"{dict(self.statuses)}; last errors: {self.errors[-5:]}"
            )
        if self.acked_rows != self.total_rows:
            raise DrillError(
                f"push clients gave up: {self.acked_rows} of {self.total_rows} rows acknowledged"
                f"; answers: {dict(self.statuses)}; last errors: {self.errors[-5:]}"
            )

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _client(self, c: int) -> None:
        for r in range(self.requests):
            first = self.ids.start + (c * self.requests + r) * self.rows
            body = b"".join(line(i, "push") for i in range(first, first + self.rows))
            headers = {"Content-Type": "application/json"}
            if self.idempotency_keys:
                headers["Idempotency-Key"] = f"drill-{first}-{first + self.rows}"
            if not self._post_until_accepted(body, headers):
                return
            if self.pause:
                self._stop.wait(self.pause)

    def _post_until_accepted(self, body: bytes, headers: dict[str, str]) -> bool:
        give_up = time.monotonic() + self.deadline
        while not self._stop.is_set() and time.monotonic() < give_up:
            status = self._post(body, headers)
            with self._lock:
                self.statuses[status] += 1
                if status == "202":
                    self.acked_rows += self.rows
                    return True
            self._stop.wait(self.retry_pause)
        return False

    def _post(self, body: bytes, headers: dict[str, str]) -> str:
        url = self.url()
        if url is None:
            return "error"
        host, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request("POST", f"/ingest/{TABLE}", body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
            if resp.status != 202:
                with self._lock:
                    self.errors.append(f"{resp.status}: {text[:200]!r}")
            return str(resp.status)
        except (OSError, http.client.HTTPException) as exc:
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            return "error"
        finally:
            conn.close()
