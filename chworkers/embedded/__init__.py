"""The embedded ClickHouse endpoint: ClickHouse's HTTP interface served from chDB.

:class:`EmbeddedClickHouse` runs it in a child process (tests, the daemon's default);
:class:`EmbeddedServer` is the endpoint itself, in the calling process.
"""

from __future__ import annotations

from chworkers.embedded.process import EmbeddedClickHouse
from chworkers.embedded.server import EmbeddedServer

__all__ = ["EmbeddedClickHouse", "EmbeddedServer"]
