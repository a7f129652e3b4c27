"""chDB, the ClickHouse engine the endpoint hosts.

One process opens the data directory once (the *primary* connection keeps the engine
up for the endpoint's lifetime) and every request then has a connection of its own
(a session's, or one from :mod:`chworkers.embedded.pool`): each connection is its own
ClickHouse session context, so a request's ``SET``, ``USE`` and temporary tables never
leak into another's, and queries on different connections run in parallel (chDB
releases the GIL while it runs a query; it holds it while it opens a connection).
Running statements on a connection is :mod:`chworkers.embedded.queries`; streaming
results and inserts, :mod:`chworkers.embedded.streaming`.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chworkers.embedded import deduplog, swallowed
from chworkers.embedded.exceptions import from_chdb
from chworkers.errors import EmbeddedError, ServerError

log = logging.getLogger(__name__)


#: What every connection of the endpoint starts with (its default profile): known, so
#: a tracked connection does not ask chDB for them.
CONNECTION_SETTINGS = {"async_insert": "0"}


def _chdb() -> Any:
    from chdb import _chdb as native  # imported late: loading chDB costs ~100 MB

    return native


class Engine:
    """The chDB engine on one data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        _check_not_locked(path)
        deduplog.repair(path)
        try:
            self._primary = _chdb().connect(str(path))
        except RuntimeError as exc:
            text = str(exc)
            if "Cannot lock file" in text or "Another server instance" in text:
                raise _in_use(path) from None
            raise EmbeddedError(f"chDB could not open {path}: {text}", path=str(path)) from exc
        row = self._primary.query("SELECT version(), timezone()", "TabSeparated").bytes()
        version, timezone = row.decode().rstrip("\n").split("\t")
        self.version: str = version
        self.timezone: str = timezone
        #: Called for every connection opened (the endpoint counts them).
        self.on_connect: Callable[[], None] | None = None
        # Asked at the first check that needs it (rarely: an error raised while a
        # streaming insert ran), not at every start.
        swallowed.probe_with(self._insert_ids_probe)

    def connect(self) -> Any:
        """A fresh connection (its own session context)."""
        try:
            conn = _chdb().connect(str(self.path))
        except RuntimeError as exc:
            raise from_chdb(exc) from None
        try:
            # The endpoint's default profile: an INSERT is queued only when it asks
            # (ClickHouse 26.2+ servers default to 1, and queue every INSERT that does not
            # say async_insert=0); see chworkers/embedded/asyncinsert.py.
            conn.query(b"SET async_insert = 0", "TabSeparated")  # = CONNECTION_SETTINGS
        except RuntimeError as exc:
            close_quietly(conn)
            raise from_chdb(exc) from None
        if self.on_connect is not None:
            self.on_connect()
        return conn

    def _insert_ids_probe(self) -> bool:
        """:func:`chworkers.embedded.swallowed.learn_insert_ids`, on two connections of
        its own."""
        opened: list[Any] = []
        try:
            opened.append(self.connect())
            opened.append(self.connect())
            return swallowed.learn_insert_ids(opened[1], opened[0])
        except ServerError:
            log.warning("could not tell whether chDB keeps an insert's query id", exc_info=True)
            return False
        finally:
            for conn in opened:
                close_quietly(conn)

    def close(self) -> None:
        self._primary.close()


def _check_not_locked(path: Path) -> None:
    """Fail clearly if another process holds the data directory.

    ClickHouse flock()s ``<path>/status`` while it runs; chDB would only report a
    generic initialisation error (after printing the real one to stderr itself).
    """
    status = path / "status"
    if not status.exists():
        return
    with open(status, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise _in_use(path) from None
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _in_use(path: Path) -> EmbeddedError:
    return EmbeddedError(
        f"the data directory {path} is in use by another process (an embedded endpoint "
        f"or a chDB program holds its lock file {path / 'status'}); stop that process or "
        "choose another --path",
        path=str(path),
    )


def close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # closing a broken connection must not hide the real error
        log.debug("closing a chDB connection failed", exc_info=True)
