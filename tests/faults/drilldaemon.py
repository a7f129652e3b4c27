"""The daemon under a drill: ``python -m chworkers run -c FILE`` in a process group of
its own, ready when it says ``READY=1`` on the ``NOTIFY_SOCKET`` the drill holds; its
faults (``kill -9`` of it, its group, a worker, its embedded child) and what it leaves
(spool, dead letters, metrics)."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from drillbase import PATIENCE, DrillError, wait_until
from drillprocs import Proc, descendants, still_running
from drilltargets import Target
from sdnotify import NotifySocket
from tomlfile import to_toml

from chworkers.daemon import config as config_module


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

    def healthz(self) -> tuple[int, dict[str, Any]]:
        """The status and the report of the daemon's ``/healthz`` (served beside
        ``/metrics``): 200 while ok or degraded, 503 when failing."""
        import urllib.error
        import urllib.request

        url = self.metrics_url
        assert url is not None, "the daemon has not said where its metrics are"
        try:
            with urllib.request.urlopen(url.replace("/metrics", "/healthz"), timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

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
