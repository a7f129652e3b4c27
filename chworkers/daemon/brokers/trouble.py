"""A broker that does not answer, as a broker source tells the daemon's health: since
when it fails and why (``source <name>: redis redis://host:port/0: failing for 12 s:
...``), logged once when it starts failing and once when it answers again."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class Trouble:
    """The broker ``what`` (e.g. ``redis redis://host:6379/0``) of source ``name``."""

    def __init__(self, name: str, what: str) -> None:
        self.name = name
        self.what = what
        self._lock = threading.Lock()
        self._since: tuple[float, str] | None = None  # since (wall clock), why

    def failing(self, why: str) -> None:
        """An attempt failed (``why``: the error, which names the broker)."""
        with self._lock:
            first = self._since is None
            if first:
                self._since = (time.time(), why)
        if first:
            log.warning("source %s: %s; retrying", self.name, why)

    def ok(self) -> None:
        """An attempt succeeded: the broker answers (again)."""
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.info("source %s: %s answers again", self.name, self.what)

    def problems(self) -> list[str]:
        with self._lock:
            since = self._since
        if since is None:
            return []
        started, why = since
        why = why.removeprefix(f"{self.what}: ")  # errors name their broker too
        return [f"{self.what}: failing for {time.time() - started:.0f} s: {why}"]


__all__ = ["Trouble"]
