"""Declaring settings: :func:`setting`, :func:`section`, and what is derived from them.

A settings section is a frozen dataclass whose fields are declared with :func:`setting`.
This module reads the declarations back (:func:`describe`, :func:`settings_fields`) and
validates an instance against them (:func:`validate`, from ``__post_init__``).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from chworkers.errors import ConfigError
from chworkers.settings.values import parse_value, plural

ENV_PREFIX = "CHWORKERS_"

_S = TypeVar("_S")


def setting(
    default: Any,
    help: str,
    *,
    unit: Literal["seconds", "bytes"] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    secret: bool = False,
    reload: bool = False,
    shown: str | None = None,
    flag: str | tuple[str, ...] | None = None,
    metavar: str | None = None,
    required: bool = False,
) -> Any:
    """Declare one setting: its default, its help text and how to validate it.

    ``reload`` marks a setting that a running daemon may change on SIGHUP. ``shown``
    describes a default computed on the machine (e.g. "the CPU count") for the docs.

    ``flag`` gives it a command-line option (``"--log-level"``, or several names), built
    by :func:`chworkers.settings.flags.add_flags` with this help, default and parser;
    ``metavar`` names its value in ``--help``. ``required`` settings have no useful
    default (None): validation fails until one is given.

    ``secret`` settings are never printed, and may also be read from a file named by
    the companion key ``<name>_file`` (or ``CHWORKERS_..._FILE``), so that passwords
    never have to appear on a command line or in the main config file.
    """
    meta = {
        "help": help,
        "unit": unit,
        "minimum": minimum,
        "maximum": maximum,
        "secret": secret,
        "reload": reload,
        "shown": shown,
        "flags": (flag,) if isinstance(flag, str) else tuple(flag or ()),
        "metavar": metavar,
        "required": required,
    }
    if required and default is not None:
        raise TypeError("a required setting has no default: declare it with None")
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        raise TypeError("settings take immutable defaults; use section() for a subsection")
    # A secret stays out of repr(), hence out of logs and tracebacks.
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


def same_as(cls: type[Any], name: str, *, unless: str | None = None) -> Any:
    """Declare again, in another section, the setting ``name`` of ``cls``: the same
    default, help, unit and bounds (a pipeline's batch limits are :class:`BatchLimits`'),
    so that the two places cannot drift apart.

    ``unless`` makes it optional: its default is None, which means "what ``unless``
    says, else the declared default" (``[clickhouse] connect_timeout``: the URL's).
    """
    for f in settings_fields(cls):
        if f.name != name:
            continue
        if unless is None:
            return dataclasses.field(default=f.default, metadata=f.metadata, repr=f.repr)
        meta = dict(f.metadata)
        shown = f"{f.default:g} s" if meta.get("unit") == "seconds" else repr(f.default)
        meta["help"] = f"{meta['help'].rstrip('.')} (none: {unless}, else {shown})."
        return dataclasses.field(default=None, metadata=meta, repr=f.repr)
    raise TypeError(f"{cls.__name__} declares no setting {name!r}")


def section(
    cls: type[Any], help: str, *, exclude: frozenset[str] = frozenset(), flags: bool = False
) -> Any:
    """Declare a subsection: a settings dataclass nested under this one.

    ``exclude`` names settings of ``cls`` that this place does not offer (the owner
    sets them itself): they are neither parsed nor documented here, and keep their
    defaults in the built value. ``flags`` offers the subsection's command-line flags
    where this section's are offered (a section nested in several places offers them
    in one at most, or the flags would clash).
    """
    return dataclasses.field(
        default_factory=cls,
        metadata={"help": help, "exclude": frozenset(exclude), "flags": flags},
    )


@dataclasses.dataclass(frozen=True)
class SettingInfo:
    """One setting as derived from its declaration (for docs and ``--defaults``)."""

    key: str
    type_name: str
    default: Any
    help: str
    env: str
    secret: bool
    shown: str | None = None


def env_name(key: str) -> str:
    """``clickhouse.pool.max_connections`` -> ``CHWORKERS_CLICKHOUSE_POOL_MAX_CONNECTIONS``."""
    return ENV_PREFIX + key.upper().replace(".", "_")


_HINTS: dict[type[Any], dict[str, Any]] = {}
_FIELDS: dict[type[Any], tuple[dataclasses.Field[Any], ...]] = {}


def hints_of(cls: type[Any]) -> dict[str, Any]:
    """The type of each field of ``cls``."""
    # Cached: validate() runs in every __post_init__, and get_type_hints is slow.
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def settings_fields(
    cls: type[Any], exclude: frozenset[str] = frozenset()
) -> tuple[dataclasses.Field[Any], ...]:
    """The fields declared with :func:`setting` or :func:`section`; other fields of the
    dataclass (internal state such as a retry history) are not settings."""
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = tuple(f for f in dataclasses.fields(cls) if "help" in f.metadata)
    if exclude:
        return tuple(f for f in fields if f.name not in exclude)
    return fields


def is_section(tp: Any) -> bool:
    """Whether a field of this type is a subsection (a nested settings dataclass)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any, meta: Mapping[str, Any]) -> str:
    if meta.get("unit") == "seconds":
        return "duration"
    if meta.get("unit") == "bytes":
        return "size"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(inner[0], meta) + " (optional)"
    if origin in (tuple, frozenset):
        return f"list of {plural(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def describe(
    cls: type[Any], prefix: str = "", exclude: frozenset[str] = frozenset()
) -> list[SettingInfo]:
    """Every setting of ``cls`` and its subsections, depth first, in declaration order."""
    out: list[SettingInfo] = []
    hints = hints_of(cls)
    for f in settings_fields(cls, exclude):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if is_section(tp):
            out.extend(describe(tp, key + ".", f.metadata.get("exclude", frozenset())))
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(
            SettingInfo(
                key=key,
                type_name=_type_name(tp, f.metadata),
                default=default,
                help=f.metadata.get("help", ""),
                env=env_name(key),
                secret=bool(f.metadata.get("secret")),
                shown=f.metadata.get("shown"),
            )
        )
    return out


def validate(obj: Any, *, source: str | None = None) -> None:
    """Check (and normalise) every setting of a settings dataclass instance.

    Call it from ``__post_init__`` so that the Python API validates exactly as the
    config file does: ``Options(timeout="5s")`` becomes 5.0, ``Options(workers=0)``
    raises :class:`ConfigError` naming the setting.
    """
    cls = type(obj)
    hints = hints_of(cls)
    where = source or cls.__name__
    for f in settings_fields(cls):
        tp = hints[f.name]
        if is_section(tp):
            continue
        value = getattr(obj, f.name)
        if value is None and f.metadata.get("required"):
            raise ConfigError(
                f"{where}: {f.name} is required",
                key=f.name,
                expected="a value",
                source=where,
            )
        parsed = parse_value(tp, f.metadata, value, f.name, where)
        if parsed is not value:
            object.__setattr__(obj, f.name, parsed)


def unbounded(settings: _S, **changes: Any) -> _S:
    """A copy of ``settings`` with ``changes`` parsed and type-checked as usual but not
    held to their declared minimum and maximum (nor to checks across settings).

    For tests and benchmarks whose point is a value no configuration should ask for: a
    retry backoff of a millisecond so that a thousand failures take a second, a spool of
    a few bytes. The call site says so explicitly; every other value of ``settings`` was
    validated when it was built. ``unbounded(SpoolSettings(), retry_backoff_max=0.001)``.
    """
    cls = type(settings)
    declared = {f.name: f for f in settings_fields(cls)}
    hints = hints_of(cls)
    out = copy.copy(settings)  # not dataclasses.replace: that would validate again
    for name, value in changes.items():
        field = declared.get(name)
        if field is None or is_section(hints[name]):
            raise TypeError(f"{cls.__name__} declares no setting {name!r}")
        meta = {**field.metadata, "minimum": None, "maximum": None}
        object.__setattr__(out, name, parse_value(hints[name], meta, value, name, cls.__name__))
    return out


def reloadable(cls: type[Any]) -> frozenset[str]:
    """Names of the settings of ``cls`` that may change at runtime."""
    return frozenset(f.name for f in settings_fields(cls) if f.metadata.get("reload"))
