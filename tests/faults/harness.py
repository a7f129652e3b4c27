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

Its parts, each in its module: the shared constants, :class:`DrillError` and
``wait_until`` (drillbase), processes read from ``/proc`` (drillprocs), the ClickHouse
targets (drilltargets), :class:`DaemonUnderTest` (drilldaemon), the feeds and lines
(drillfeeds); this module holds the drill's configuration and :class:`Drill` itself.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drillbase import GEN_TABLE, PATIENCE, SCHEMA, TABLE, DrillError, wait_until
from drilldaemon import DaemonUnderTest
from drillfeeds import FileFeed, PushClients
from drilltargets import ProxiedClickHouse, Target
from tomlfile import merge

from chworkers.daemon.generator import GENERATOR_SCHEMA

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
