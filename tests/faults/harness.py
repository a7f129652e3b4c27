"""The fault drill harness: a real ``chworkers run``, real data, real faults, exact counts.

A :class:`DaemonUnderTest` is ``python -m chworkers run -c FILE`` in a process group of its
own, with a config written to a temporary state directory. Its ClickHouse is either the
test session's embedded endpoint behind a :class:`~faultproxy.FaultProxy` (a database of
the test's own, see :class:`ProxiedClickHouse`: cut with ``refuse``, slowed with
``delay``) or the daemon's own embedded child (``url = "embedded"``, see
:class:`OwnClickHouse`). Readiness comes the way systemd gets it: the harness holds the
``NOTIFY_SOCKET`` and waits for ``READY=1``.

Data goes in with unique ``id`` values, so the end of every drill can check
rows sent == rows in ClickHouse == distinct ids (:meth:`Drill.verify`):

* :class:`FileFeed` appends lines to files the daemon follows (a new segment file every
  ``rows_per_file`` lines); a line counts as sent once it is written, since the daemon
  can always re-read it;
* :class:`PushClients` POST id ranges to ``/ingest/<table>`` from several threads and
  retry every request that is not answered 202 (a refused connection, a reset, a 503, a
  500) until it is; a row counts as sent once its request is answered 202. Without an
  ``Idempotency-Key`` HTTP push is exactly once only when every request gets an answer
  (a ``kill -9`` between spooling and answering makes the retry a legitimate duplicate),
  so drills with ``kill -9`` push with keys;
* poison lines (``"id": "poison-N"``) ClickHouse cannot parse must come out in the
  dead-letter directory, each one, and nowhere else.

Faults: :meth:`DaemonUnderTest.kill9` (the main process, or its whole group),
:meth:`DaemonUnderTest.kill_worker`, :meth:`DaemonUnderTest.kill_embedded_child`,
:meth:`DaemonUnderTest.terminate` (SIGTERM, with a bound on how long stopping may take),
and the target's :meth:`~ProxiedClickHouse.down` / :meth:`~ProxiedClickHouse.up`. Every
"random moment" comes from the drill's seeded :class:`random.Random`; the seed is in
every failure message (rerun with ``CHWORKERS_FAULT_SEED=<seed>``).
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import clickhouse_connect
from brokerfeeds import bodies
from faultproxy import FaultProxy
from tomlfile import merge, to_toml

from chworkers.daemon import config as config_module
from chworkers.daemon.generator import GENERATOR_SCHEMA

#: The table every drill fills; ``id`` is unique per row sent.
SCHEMA = "id UInt64, src LowCardinality(String), s String"
TABLE = "ev"
#: The generator pipeline's table (its rows have no id; whole rows are distinct).
GEN_TABLE = "gen"
POISON_PREFIX = "poison-"

#: How long a drill waits for anything (start-up, a count, a drain) on a loaded machine.
PATIENCE = 120.0


class DrillError(AssertionError):
    """A drill found rows lost, duplicated or stuck; the message carries the seed."""


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> bool:
    """Poll ``cond`` for up to ``timeout`` seconds; whether it came true (never raises)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return True
        except Exception:
            pass  # a query during an outage fails: poll again
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# -- processes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cmdline: str
    #: Start time in clock ticks since boot: with the pid, who the process is (pids are
    #: reused, and quickly where pid_max is 32768).
    started: int


def process_table() -> dict[int, Proc]:
    """Every live process visible in /proc, by pid."""
    table: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z":
            continue  # a zombie is dead; only its parent has not reaped it yet
        table[int(entry)] = Proc(
            int(entry), int(fields[1]), cmdline.decode(errors="replace"), int(fields[19])
        )
    return table


def descendants(pid: int) -> list[Proc]:
    """The processes below ``pid`` (children, grandchildren...), as /proc shows them now."""
    table = process_table()
    children: dict[int, list[Proc]] = collections.defaultdict(list)
    for proc in table.values():
        children[proc.ppid].append(proc)
    out: list[Proc] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return out


def still_running(procs: Iterable[Proc]) -> list[Proc]:
    """Those of ``procs`` that still run (the same processes, not others with their pids)."""
    table = process_table()
    return [p for p in procs if (now := table.get(p.pid)) is not None and now.started == p.started]


# -- ClickHouse targets -------------------------------------------------------------------


class ProxiedClickHouse:
    """The session's endpoint, reached by the daemon through a fault proxy, in a
    database of the drill's own; checked directly (never through the proxy)."""

    def __init__(self, endpoint: Any, database: str, proxy: FaultProxy) -> None:
        self.endpoint = endpoint
        self.database = database
        self.proxy = proxy
        self.faults = 0

    @property
    def daemon_url(self) -> str:
        return f"{self.proxy.url}/{self.database}"

    def client(self, daemon: DaemonUnderTest | None = None) -> Any:
        return clickhouse_connect.get_client(
            host=self.endpoint.host, port=self.endpoint.port, database=self.database
        )

    def rows_and_ids(self) -> tuple[int, int]:
        """Rows in the drill's table and distinct ids among them (equal: exactly once)."""
        client = self.client()
        try:
            rows, distinct = client.query(
                f"SELECT count(), uniqExact(id) FROM {TABLE}"
            ).result_rows[0]
        finally:
            client.close()
        return int(rows), int(distinct)

    def down(self) -> None:
        """ClickHouse is unreachable: connections refused, open ones cut."""
        self.faults += 1
        self.proxy.set("refuse")

    def slow(self, delay: float) -> None:
        self.faults += 1
        self.proxy.set("delay", delay=delay)

    def up(self) -> None:
        self.proxy.set("pass")


class OwnClickHouse:
    """The daemon's own embedded ClickHouse child (``url = "embedded"``)."""

    daemon_url = "embedded"

    def client(self, daemon: DaemonUnderTest | None = None) -> Any:
        if daemon is None or daemon.embedded_url is None:
            raise DrillError("the daemon's embedded ClickHouse URL is not known yet")
        host, port = daemon.embedded_url.removeprefix("http://").rsplit(":", 1)
        return clickhouse_connect.get_client(host=host, port=int(port))


Target = ProxiedClickHouse | OwnClickHouse


# -- the daemon ---------------------------------------------------------------------------


class NotifySocket:
    """``NOTIFY_SOCKET`` as systemd holds it: collects the daemon's READY/STOPPING lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closing:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode(errors="replace"))

    def count(self, line: str) -> int:
        with self._lock:
            return sum(line in m.split("\n") for m in self.messages)

    def close(self) -> None:
        self._closing = True
        self._thread.join(2)
        self.sock.close()


class DaemonUnderTest:
    """``chworkers run`` as a subprocess, started, killed and restarted by a drill."""

    def __init__(self, workdir: Path, config: Mapping[str, Any], target: Target) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.target = target
        self.config_path = workdir / "chworkers.toml"
        config_module.load(data=config, env={})  # a drill with a bad config fails here, clearly
        self.config_path.write_text(to_toml(config))
        self.notify = NotifySocket(workdir / "notify.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = workdir / "daemon-0.log"
        self._ready_seen = 0
        self.known: set[Proc] = set()  # every process this daemon ever had below it
        self.faults = 0  # kills and signals sent to it
        self.note: Callable[[str], None] = lambda event: None
        self._started_at = 0.0

    # -- lifecycle

    def start(self, *, wait_ready: bool = True) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.log_path = self.workdir / f"daemon-{self.starts}.log"
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path))
        env.pop("WATCHDOG_USEC", None)
        self._ready_seen = self.notify.count("READY=1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chworkers", "run", "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a process group of its own, to kill as a whole
            )
        self._started_at = time.monotonic()
        self.note(f"daemon start {self.starts}: pid {self.pid}")
        if wait_ready:
            self.wait_ready()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        return self.notify.count("READY=1") > self._ready_seen

    def wait_ready(self, timeout: float = PATIENCE) -> None:
        if not wait_until(lambda: self.ready() or not self.running(), timeout, "ready"):
            raise DrillError(f"the daemon sent no READY=1 within {timeout} s\n{self.tail()}")
        if not self.ready():
            raise DrillError(f"the daemon exited while starting (code {self.code})\n{self.tail()}")
        self.note(f"ready after {time.monotonic() - self._started_at:.1f} s")
        self._remember()

    @property
    def code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "--- daemon log (last lines) ---\n" + "\n".join(self.log().splitlines()[-lines:])

    def _find(self, pattern: str) -> str | None:
        found = re.findall(pattern, self.log())
        return found[-1] if found else None

    @property
    def ingest_url(self) -> str | None:
        return self._find(r"ingest endpoint listening on (http://[\d.:]+)")

    @property
    def metrics_url(self) -> str | None:
        return self._find(r"(http://[\d.:]+/metrics)")

    @property
    def embedded_url(self) -> str | None:
        return self._find(r"embedded ClickHouse at (http://[\d.:]+)")

    # -- what runs below the main process

    def _remember(self) -> list[Proc]:
        below = descendants(self.pid) if self.running() else []
        self.known.update(below)
        return below

    def workers(self) -> list[int]:
        """Worker processes: forked by the forkserver, or spawned, below the main process."""
        below = self._remember()
        return [
            p.pid
            for p in below
            if ("forkserver" in p.cmdline and p.ppid != self.pid) or "spawn_main" in p.cmdline
        ]

    def embedded_child(self) -> int | None:
        for p in self._remember():
            if p.ppid == self.pid and " embedded " in p.cmdline:
                return p.pid
        return None

    # -- faults

    def kill9(self, *, group: bool) -> None:
        """SIGKILL the main process (``group=False``) or its whole process group."""
        assert self.proc is not None
        self._remember()
        self.note(f"kill -9 {'the process group' if group else 'the main process'} {self.pid}")
        self.faults += 1
        if group:
            os.killpg(self.pid, signal.SIGKILL)
        else:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.wait_orphans_gone()

    def wait_orphans_gone(self, timeout: float = 60.0) -> None:
        """Everything the daemon started must go away by itself once it is dead."""
        if not wait_until(lambda: not still_running(self.known), timeout, "orphans"):
            left = still_running(self.known)
            raise DrillError(
                f"processes of the dead daemon still run after {timeout} s: "
                + "; ".join(f"{p.pid}: {p.cmdline[:120]}" for p in left)
            )
        self.known.clear()

    def kill_worker(self, rng: random.Random) -> int | None:
        """SIGKILL one worker (chosen by ``rng``); its pid, or None if none was found."""
        workers = self.workers()
        if not workers:
            return None
        pid = rng.choice(sorted(workers))
        self.faults += 1
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return pid

    def kill_embedded_child(self) -> int:
        pid = self.embedded_child()
        if pid is None:
            raise DrillError(f"the daemon has no embedded ClickHouse child\n{self.tail()}")
        self.faults += 1
        os.kill(pid, signal.SIGKILL)
        return pid

    def terminate(self, *, within: float, expect_codes: Iterable[int] = (0,)) -> float:
        """SIGTERM; the daemon must exit within ``within`` seconds with one of
        ``expect_codes``. Returns how long stopping took."""
        assert self.proc is not None
        self._remember()
        started = time.monotonic()
        self.faults += 1
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            raise DrillError(
                f"the daemon did not exit within {within:.0f} s of SIGTERM\n{self.tail()}"
            ) from None
        took = time.monotonic() - started
        if code not in tuple(expect_codes):
            raise DrillError(f"the daemon exited with {code} after SIGTERM\n{self.tail()}")
        self.wait_orphans_gone()
        return took

    def close(self) -> None:
        """Whatever state the drill left: nothing of this daemon keeps running."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(30)
        for proc in still_running(self.known):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        self.notify.close()

    # -- looking inside

    def metric(self, name: str, **labels: str) -> float | None:
        """The sum of the samples of ``name`` from the daemon's ``/metrics`` that carry
        ``labels`` (None if the endpoint does not answer or has no such sample)."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        url = self.metrics_url
        if url is None or not self.running():
            return None
        try:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError:
            return None
        values = [
            float(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        ]
        return sum(values) if values else None

    def spool_files(self) -> list[Path]:
        spool = self.state_dir / "spool"
        if not spool.exists():
            return []
        return sorted(p for p in spool.iterdir() if p.is_file() and not p.name.startswith("."))

    def spool_leftovers(self) -> list[str]:
        """Batch and temporary files in the spool (quarantined files are reported apart)."""
        return [
            p.name
            for p in self.spool_files()
            if p.name.endswith(".batch") or p.name.startswith(".tmp") or ".tmp" in p.name
        ]

    def spooled_rows(self) -> int:
        """Rows in the spool's batch files (read from their headers, as the daemon wrote
        them; files being replaced or removed meanwhile are skipped)."""
        rows = 0
        for path in self.spool_files():
            if not path.name.endswith(".batch"):
                continue
            try:
                with open(path, "rb") as fh:
                    head = fh.read(12)
                    size = int.from_bytes(head[8:12], "little")
                    rows += int(json.loads(fh.read(size))["rows"])
            except (OSError, ValueError, KeyError):
                continue
        return rows

    def quarantined(self) -> list[str]:
        q = self.state_dir / "spool" / "quarantine"
        return sorted(p.name for p in q.iterdir()) if q.exists() else []

    def dead_letters(self) -> collections.Counter[str]:
        """The records in the dead-letter directory, counted."""
        records: collections.Counter[str] = collections.Counter()
        for path in (self.state_dir / "dead-letter").glob("*/*.jsonl"):
            for line in path.read_text().splitlines():
                if line.strip():
                    records[json.loads(line)["record"]] += 1
        return records


# -- feeds --------------------------------------------------------------------------------


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


# -- a drill ------------------------------------------------------------------------------


def base_config(state_dir: Path, url: str, pipelines: list[dict[str, Any]]) -> dict[str, Any]:
    """Settings sized for drills: two workers, short backoffs, quick polling."""
    return {
        "state_dir": str(state_dir),
        "clickhouse": {
            "url": url,
            "pool": {
                "max_connections": 2,
                "host_cooldown": 0.2,
                "max_host_cooldown": 1.0,
                "retry": {"initial_backoff": 0.05, "max_backoff": 0.5, "deadline": 10.0},
            },
        },
        "supervisor": {"workers": 2, "graceful_timeout": 10.0},
        "metrics": {"port": 0},
        "http": {"port": 0, "spool_timeout": 5.0},
        "spool": {"retry_backoff_max": 1.0},
        "pipelines": pipelines,
    }


def file_pipeline(feed: FileFeed, **extra: Any) -> dict[str, Any]:
    return {
        "name": "files",
        "source": "file",
        "paths": [feed.glob],
        "follow": True,
        "poll_interval": 0.05,
        "table": TABLE,
        "create": SCHEMA,
        "engine": "MergeTree ORDER BY id",
        "max_rows": 2000,
        "max_delay": 0.2,
        **extra,
    }


def push_pipeline(**extra: Any) -> dict[str, Any]:
    return {
        "name": "push",
        "source": "http",
        "table": TABLE,
        "create": SCHEMA,
        "engine": "MergeTree ORDER BY id",
        "max_rows": 2000,
        "max_delay": 0.1,
        **extra,
    }


def broker_pipeline(source: str, broker: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A ``redis`` or ``nats`` pipeline, ``broker`` its section (url, stream, ...)."""
    return {
        "name": source,
        "source": source,
        "table": TABLE,
        "create": SCHEMA,
        "engine": "MergeTree ORDER BY id",
        "max_rows": 2000,
        "max_delay": 0.2,
        source: dict(broker),
        **extra,
    }


@dataclass
class Drill:
    """One scenario: a daemon, its feeds, its seeded randomness, and the final check."""

    workdir: Path
    target: Target
    seed: int
    rng: random.Random = field(init=False)
    daemon: DaemonUnderTest | None = None
    files: FileFeed | None = None
    push: PushClients | None = None
    events: list[str] = field(default_factory=list)
    #: Rows the generator pipeline (if any) makes; see :meth:`generator_pipeline`.
    generated: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._t0 = time.monotonic()

    @property
    def proxy(self) -> ProxiedClickHouse:
        """The target, when it is the session endpoint behind the fault proxy."""
        assert isinstance(self.target, ProxiedClickHouse), "this drill has no fault proxy"
        return self.target

    def note(self, event: str) -> None:
        """Record what the drill did, for the failure message."""
        self.events.append(f"{time.monotonic() - self._t0:6.1f}s {event}")

    def file_feed(self, total: int, **kw: Any) -> FileFeed:
        self.files = FileFeed(self.workdir / "input", start=0, total=total, **kw)
        return self.files

    def push_clients(self, **kw: Any) -> PushClients:
        assert self.daemon is not None, "make the daemon first"
        daemon = self.daemon
        self.push = PushClients(lambda: daemon.ingest_url, start=10_000_000, **kw)
        return self.push

    def generator_pipeline(self, count: int) -> dict[str, Any]:
        """A generator pipeline of ``count`` rows into :data:`GEN_TABLE`. Its rows carry no
        id and it cannot resume after a restart: for drills that never restart the daemon;
        the whole rows must then be distinct."""
        self.generated = count
        return {
            "name": "gen",
            "source": "generator",
            "generator_count": count,
            "table": GEN_TABLE,
            "create": GENERATOR_SCHEMA,
            "engine": "MergeTree ORDER BY (ts, user_id)",
            "max_rows": 2000,
            "max_delay": 0.2,
        }

    def make_daemon(
        self, pipelines: list[dict[str, Any]], settings: Mapping[str, Any] | None = None
    ) -> DaemonUnderTest:
        config = merge(
            base_config(self.workdir / "state", self.target.daemon_url, pipelines), settings or {}
        )
        self.daemon = DaemonUnderTest(self.workdir, config, self.target)
        self.daemon.note = self.note
        return self.daemon

    def context(self) -> str:
        daemon_log = self.daemon.tail(60) if self.daemon is not None else ""
        return (
            f"\nfault seed {self.seed} (rerun with CHWORKERS_FAULT_SEED={self.seed})\n"
            "what the drill did:\n  " + "\n  ".join(self.events[-40:]) + f"\n{daemon_log}"
        )

    def fail(self, message: str) -> DrillError:
        return DrillError(message + self.context())

    def close(self) -> None:
        """Stop the feeds and make sure nothing of the daemon keeps running."""
        if self.push is not None:
            self.push.stop()
        if self.files is not None:
            self.files.stop()
        if self.daemon is not None:
            self.daemon.close()

    # -- counting

    def expected_ids(self) -> list[range]:
        return [f.ids.ids() for f in (self.files, self.push) if f is not None]

    def wait_pushed(self, timeout: float = PATIENCE) -> None:
        """Wait until every push was answered 202 (failing with the drill's context)."""
        assert self.push is not None
        try:
            self.push.join(timeout)
        except DrillError as exc:
            state = "running" if self.daemon and self.daemon.running() else "not running"
            raise self.fail(f"{exc} (the daemon is {state})") from None

    def faults(self) -> int:
        """Faults injected: kills, signals, ClickHouse cut or slowed."""
        daemon = self.daemon.faults if self.daemon is not None else 0
        target = self.target.faults if isinstance(self.target, ProxiedClickHouse) else 0
        return daemon + target

    def expected_rows(self) -> int:
        return sum(len(r) for r in self.expected_ids())

    def count(self, table: str = TABLE) -> int:
        """Rows in ``table`` now (0 while the daemon has not created it yet)."""
        assert self.daemon is not None
        client = self.target.client(self.daemon)
        try:
            if not int(client.command(f"EXISTS TABLE {table}")):
                return 0
            return int(client.command(f"SELECT count() FROM {table}"))
        finally:
            client.close()

    def wait_rows(self, at_least: int, timeout: float = PATIENCE) -> None:
        if not wait_until(lambda: self.count() >= at_least, timeout, "rows", interval=0.2):
            raise self.fail(f"fewer than {at_least} rows in ClickHouse after {timeout} s")

    def wait_spooled(self, rows: int, timeout: float = 60.0) -> bool:
        """Wait until ``rows`` rows are in ClickHouse or in the spool's files."""
        assert self.daemon is not None
        daemon = self.daemon
        return wait_until(
            lambda: self.count() + daemon.spooled_rows() >= rows, timeout, "spooled", 0.2
        )

    def settle(self, timeout: float = PATIENCE) -> None:
        """Wait until every row sent is in ClickHouse and the spool is empty (or time out:
        :meth:`verify` then says exactly what is missing)."""
        assert self.daemon is not None
        daemon, expected = self.daemon, self.expected_rows()
        wait_until(
            lambda: (
                self.count() >= expected
                and (not self.generated or self.count(GEN_TABLE) >= self.generated)
                and not daemon.spool_leftovers()
            ),
            timeout,
            "settled",
            interval=0.2,
        )
        time.sleep(0.5)  # a duplicate in flight would land now

    def verify(self, *, dead_letter_duplicates_allowed: bool = False) -> dict[str, int]:
        """rows sent == rows in ClickHouse == distinct ids; nothing left in the spool;
        every poison line in the dead letters, and nothing else."""
        assert self.daemon is not None
        client = self.target.client(self.daemon)
        try:
            count, distinct, total = client.query(
                f"SELECT count(), uniqExact(id), sum(id) FROM {TABLE}"
            ).result_rows[0]
            expected = self.expected_ids()
            sent = sum(len(r) for r in expected)
            want_sum = sum(sum(r) for r in expected)
            if (count, distinct, total) != (sent, sent, want_sum):
                ids = collections.Counter(
                    row[0] for row in client.query(f"SELECT id FROM {TABLE}").result_rows
                )
                wanted = {i for r in expected for i in r}
                missing = sorted(wanted - ids.keys())
                duplicated = sorted(i for i, n in ids.items() if n > 1)
                unexpected = sorted(ids.keys() - wanted)
                raise self.fail(
                    f"rows sent {sent}, rows in ClickHouse {count}, distinct ids {distinct}: "
                    f"{len(missing)} missing (first {missing[:10]}), {len(duplicated)} "
                    f"duplicated (first {duplicated[:10]}), {len(unexpected)} never sent "
                    f"(first {unexpected[:10]})"
                )
            if self.generated:
                made, distinct = client.query(
                    f"SELECT count(), uniqExact(ts, user_id, event, value, url) FROM {GEN_TABLE}"
                ).result_rows[0]
                if (made, distinct) != (self.generated, self.generated):
                    raise self.fail(
                        f"generated rows {self.generated}, in ClickHouse {made}, distinct {distinct}"
                    )
        finally:
            client.close()
        leftovers = self.daemon.spool_leftovers()
        if leftovers:
            raise self.fail(f"left in the spool: {leftovers[:10]} ({len(leftovers)} files)")
        quarantined = self.daemon.quarantined()
        if quarantined:
            raise self.fail(f"spool files quarantined: {quarantined}")
        poison = self.files.poison if self.files is not None else []
        letters = self.daemon.dead_letters()
        if set(letters) != set(poison):
            raise self.fail(
                f"dead letters {len(letters)} distinct records, poison lines sent "
                f"{len(poison)}: missing {sorted(set(poison) - set(letters))[:5]}, "
                f"unexpected {sorted(set(letters) - set(poison))[:5]}"
            )
        doubled = {r: n for r, n in letters.items() if n > 1}
        if doubled and not dead_letter_duplicates_allowed:
            raise self.fail(f"dead letters written more than once: {list(doubled.items())[:5]}")
        self.note(f"verified: {sent} rows, {len(poison)} dead letters, {self.daemon.starts} starts")
        return {"rows": sent, "dead_letters": len(poison), "starts": self.daemon.starts}


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of ``size`` at ``path`` when permitted; yields whether it did."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0:
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        )
        mounted = out.returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
