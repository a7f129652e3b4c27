"""What ``timeout`` means across chworkers' public API: one meaning everywhere.

``timeout=None`` waits without a limit, as in :mod:`threading`, :mod:`queue` and
:mod:`concurrent.futures`. A number is seconds (0 means "do not wait"). Where a wait has
a configured default (``Supervisor.insert`` waits on a full queue for the
``queue_timeout`` setting, ``Supervisor.stop`` drains for ``graceful_timeout``), the
parameter defaults to :data:`DEFAULT`, "the configured value", never to ``None``.
A negative or NaN timeout is a :class:`~chworkers.errors.ConfigError`.
"""

from __future__ import annotations

import enum
import math
from typing import Final, Literal

from chworkers.errors import ConfigError


class _Default(enum.Enum):
    DEFAULT = "the configured default"

    def __repr__(self) -> str:
        return "DEFAULT"


#: The default of a ``timeout`` parameter that falls back on a setting.
DEFAULT: Final = _Default.DEFAULT

#: A timeout parameter: seconds, None (no limit) or DEFAULT (the configured value).
Timeout = float | None | Literal[_Default.DEFAULT]


def resolve(timeout: Timeout, default: float | None, *, name: str = "timeout") -> float | None:
    """The seconds to wait (None: no limit), checked; ``default`` stands for DEFAULT."""
    seconds = default if timeout is DEFAULT else timeout
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigError(
            f"{name} must be a number of seconds or None, not {type(seconds).__name__}",
            key=name,
            value=seconds,
            expected="seconds >= 0, or None for no limit",
        )
    if math.isnan(seconds) or seconds < 0:
        raise ConfigError(
            f"{name} must not be negative: {seconds!r}",
            key=name,
            value=seconds,
            expected="seconds >= 0, or None for no limit",
        )
    return float(seconds)
