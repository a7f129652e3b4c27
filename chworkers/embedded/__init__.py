"""The embedded ClickHouse endpoint: ClickHouse's HTTP interface served from chDB.

:class:`EmbeddedClickHouse` runs it in a child process (tests, the daemon's default);
:class:`EmbeddedServer` is the endpoint itself, in the calling process.

Both are imported on first use (PEP 562), as the package root's names are: the command
line imports :mod:`chworkers.embedded.cli` to register its subcommand, and that must not
load the endpoint's machinery into ``chworkers run`` (issue 11's start-up target).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chworkers.lazy import lazy_attributes as _lazy_attributes

if TYPE_CHECKING:
    from chworkers.embedded.process import EmbeddedClickHouse as EmbeddedClickHouse
    from chworkers.embedded.server import EmbeddedServer as EmbeddedServer

_EXPORTS: dict[str, str] = {
    "EmbeddedClickHouse": "chworkers.embedded.process",
    "EmbeddedServer": "chworkers.embedded.server",
}

__all__ = list(_EXPORTS)


_getattr, __dir__ = _lazy_attributes(__name__, _EXPORTS)


if not TYPE_CHECKING:
    __getattr__ = _getattr
