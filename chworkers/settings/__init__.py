"""Settings declared once.

A settings section is a frozen dataclass whose fields are declared with :func:`setting`
(default, help, unit, bounds, secrecy, command-line flag). Everything else is derived from
that one declaration, as gunicorn does with its ``Setting`` classes: parsing and
validation of TOML values, environment variables and flags, the ``CHWORKERS_...``
variable names, the command line's options and their ``--help``
(:mod:`chworkers.settings.flags`), the commented defaults printed by ``chworkers config
--defaults`` and the reference table in the docs. A section never has to be described
twice, so they cannot drift.

Types a field may have: ``bool``, ``int``, ``float``, ``str``, ``X | None``, a
``Literal`` of strings (a choice), ``tuple[str, ...]`` or ``frozenset[int]`` (lists;
comma-separated in the environment) and another settings dataclass (a subsection).
Fields declared without :func:`setting` are internal state, not settings.
``unit="seconds"`` accepts ``"250ms"``, ``"5s"``, ``"2m"``, ``"1h"``; ``unit="bytes"``
accepts ``"64MiB"``, ``"1GB"``.

The pieces: :mod:`~chworkers.settings.declare` (declaring, reading declarations back,
validating), :mod:`~chworkers.settings.values` (parsing one value),
:mod:`~chworkers.settings.loading` (a section from a file, the environment and flags),
:mod:`~chworkers.settings.render` (defaults file, docs, what a reload changed) and
:mod:`~chworkers.settings.flags` (the command line).
"""

from chworkers.settings.declare import (
    ENV_PREFIX,
    SettingInfo,
    describe,
    env_name,
    reloadable,
    same_as,
    section,
    setting,
    unbounded,
    validate,
)
from chworkers.settings.loading import build
from chworkers.settings.render import (
    redact_url,
    redact_urls,
    render_changes,
    render_defaults,
    render_reference,
)
from chworkers.settings.values import parse_value

__all__ = [
    "ENV_PREFIX",
    "SettingInfo",
    "build",
    "describe",
    "env_name",
    "parse_value",
    "redact_url",
    "redact_urls",
    "reloadable",
    "render_changes",
    "render_defaults",
    "render_reference",
    "same_as",
    "section",
    "setting",
    "unbounded",
    "validate",
]
