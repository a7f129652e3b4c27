"""The settings of ``chworkers embedded``, declared once: its flags come from here.

:class:`~chworkers.embedded.process.EmbeddedClickHouse` gives them back to the child it
starts with :func:`chworkers.settings.flags.arguments` (the limits) and its own flags.
"""

from __future__ import annotations

import dataclasses

from chworkers.http.limits import HttpLimits
from chworkers.settings import section, setting, validate

#: How many sessions the endpoint keeps at once unless told otherwise.
DEFAULT_MAX_SESSIONS = 1000
#: Environment variable the password may come from (kept out of ``ps`` output).
PASSWORD_ENV = "CHWORKERS_EMBEDDED_PASSWORD"


@dataclasses.dataclass(frozen=True)
class EmbeddedOptions:
    """``chworkers embedded``: where the data is, where to listen, who may connect."""

    path: str | None = setting(None, "Data directory.", flag="--path", metavar="DIR", required=True)
    host: str = setting("127.0.0.1", "Address to bind.", flag="--host")
    port: int = setting(8123, "Port (0 picks a free one).", minimum=0, maximum=65535, flag="--port")
    user: str | None = setting(
        None, "Require this user name (none: no authentication).", flag="--user", metavar="NAME"
    )
    password: str | None = setting(
        None,
        f"Deprecated: shows the password to every user in the process list; set "
        f"{PASSWORD_ENV} or use --password-file instead.",
        secret=True,
        flag="--password",
        metavar="PASSWORD",
    )
    password_file: str | None = setting(
        None,
        "Read the password from the first line of this file.",
        flag="--password-file",
        metavar="FILE",
    )
    exit_with_parent: int | None = setting(
        None,
        "Stop cleanly when process PID is gone (for a program that runs the endpoint as "
        "its child, so that a kill -9 of the program does not leave the data locked).",
        minimum=1,
        flag="--exit-with-parent",
        metavar="PID",
    )
    max_sessions: int = setting(
        DEFAULT_MAX_SESSIONS,
        "Sessions (session_id) kept at once; a request that would open one more is "
        "refused with USER_SESSION_LIMIT_EXCEEDED. Each holds about 1 MB of chDB's memory "
        "until session_timeout after its last request.",
        minimum=1,
        flag="--max-sessions",
        metavar="N",
    )
    limits: HttpLimits = section(
        HttpLimits, "Connections, timeouts and the listen backlog.", flags=True
    )

    def __post_init__(self) -> None:
        validate(self, source="chworkers embedded")


__all__ = ["DEFAULT_MAX_SESSIONS", "PASSWORD_ENV", "EmbeddedOptions"]
