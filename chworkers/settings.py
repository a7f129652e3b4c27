"""Settings declared once.

A settings section is a frozen dataclass whose fields are declared with :func:`setting`
(default, help, unit, bounds, secrecy). Everything else is derived from that one
declaration, as gunicorn does with its ``Setting`` classes: parsing and validation of
TOML values and environment variables, the ``CHWORKERS_...`` variable names, the
commented defaults printed by ``chworkers config --defaults`` and the reference table in
the docs. A section never has to be described twice, so the three cannot drift.

Types a field may have: ``bool``, ``int``, ``float``, ``str``, ``X | None``, a
``Literal`` of strings (a choice), ``tuple[str, ...]`` or ``frozenset[int]`` (lists;
comma-separated in the environment) and another settings dataclass (a subsection).
Fields declared without :func:`setting` are internal state, not settings. ``unit="seconds"`` accepts
``"250ms"``, ``"5s"``, ``"2m"``, ``"1h"``; ``unit="bytes"`` accepts ``"64MiB"``, ``"1GB"``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from chworkers.errors import ConfigError

T = TypeVar("T")

ENV_PREFIX = "CHWORKERS_"

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
}  # fmt: skip
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


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
) -> Any:
    """Declare one setting: its default, its help text and how to validate it.

    ``reload`` marks a setting that a running daemon may change on SIGHUP. ``shown``
    describes a default computed on the machine (e.g. "the CPU count") for the docs.

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
    }
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
    for f in _settings_fields(cls):
        if f.name != name:
            continue
        if unless is None:
            return dataclasses.field(default=f.default, metadata=f.metadata, repr=f.repr)
        meta = dict(f.metadata)
        shown = f"{f.default:g} s" if meta.get("unit") == "seconds" else repr(f.default)
        meta["help"] = f"{meta['help'].rstrip('.')} (none: {unless}, else {shown})."
        return dataclasses.field(default=None, metadata=meta, repr=f.repr)
    raise TypeError(f"{cls.__name__} declares no setting {name!r}")


def section(cls: type[Any], help: str, *, exclude: frozenset[str] = frozenset()) -> Any:
    """Declare a subsection: a settings dataclass nested under this one.

    ``exclude`` names settings of ``cls`` that this place does not offer (the owner
    sets them itself): they are neither parsed nor documented here, and keep their
    defaults in the built value.
    """
    return dataclasses.field(
        default_factory=cls, metadata={"help": help, "exclude": frozenset(exclude)}
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


def _hints(cls: type[Any]) -> dict[str, Any]:
    # Cached: validate() runs in every __post_init__, and get_type_hints is slow.
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _settings_fields(
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


def _is_section(tp: Any) -> bool:
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
        return f"list of {_plural(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def describe(
    cls: type[Any], prefix: str = "", exclude: frozenset[str] = frozenset()
) -> list[SettingInfo]:
    """Every setting of ``cls`` and its subsections, depth first, in declaration order."""
    out: list[SettingInfo] = []
    hints = _hints(cls)
    for f in _settings_fields(cls, exclude):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if _is_section(tp):
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
    hints = _hints(cls)
    where = source or cls.__name__
    for f in _settings_fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            continue
        value = getattr(obj, f.name)
        parsed = parse_value(tp, f.metadata, value, f.name, where)
        if parsed is not value:
            object.__setattr__(obj, f.name, parsed)


def reloadable(cls: type[Any]) -> frozenset[str]:
    """Names of the settings of ``cls`` that may change at runtime."""
    return frozenset(f.name for f in _settings_fields(cls) if f.metadata.get("reload"))


def _fail(key: str, value: Any, expected: str, source: str) -> ConfigError:
    return ConfigError(
        f"{source}: {key} = {value!r} is invalid: expected {expected}",
        key=key,
        value=value,
        expected=expected,
        source=source,
    )


def parse_value(tp: Any, meta: Mapping[str, Any], raw: Any, key: str, source: str) -> Any:
    """Convert ``raw`` (a TOML value, or a string from the environment) to ``tp``."""
    if meta.get("secret"):
        try:
            return _parse_value(tp, meta, raw, key, source)
        except ConfigError as exc:  # an error message is printed and logged
            raise _fail(key, "***", exc.expected or "a string", source) from None
    return _parse_value(tp, meta, raw, key, source)


def _parse_value(tp: Any, meta: Mapping[str, Any], raw: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            return None
        return parse_value(args[0], meta, raw, key, source)
    if origin is Literal:
        choices = typing.get_args(tp)
        value = raw.strip() if isinstance(raw, str) else raw
        if value not in choices:
            return _raise(key, raw, "one of " + ", ".join(repr(c) for c in choices), source)
        return value
    if origin in (tuple, frozenset):
        item = typing.get_args(tp)[0]
        items = [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else raw
        if isinstance(items, (set, frozenset)):
            items = sorted(items)
        if not isinstance(items, (list, tuple)):
            return _raise(key, raw, f"a list of {_plural(item)}", source)
        if item is int:
            try:
                parsed: list[Any] = [int(x) for x in items if not isinstance(x, bool)]
            except (TypeError, ValueError):
                return _raise(key, raw, "a list of integers", source)
            if len(parsed) != len(items):
                return _raise(key, raw, "a list of integers", source)
        elif all(isinstance(x, str) for x in items):
            parsed = list(items)
        else:
            return _raise(key, raw, f"a list of {_plural(item)}", source)
        return origin(parsed)
    unit = meta.get("unit")
    if tp is bool:
        value = _parse_bool(raw)
        if value is None:
            return _raise(key, raw, "true or false", source)
        return value
    if tp in (int, float):
        value = _parse_number(tp, unit, raw)
        if value is None:
            expected = {
                "seconds": "a duration such as 30, 2.5, '250ms', '5s', '2m' or '1h'",
                "bytes": "a size such as 1048576, '64MiB' or '1GB'",
            }.get(unit or "", f"a{'n integer' if tp is int else ' number'}")
            return _raise(key, raw, expected, source)
        lo, hi = meta.get("minimum"), meta.get("maximum")
        if lo is not None and value < lo:
            return _raise(key, raw, f"a value >= {lo:g}", source)
        if hi is not None and value > hi:
            return _raise(key, raw, f"a value <= {hi:g}", source)
        return value
    if tp is str:
        if not isinstance(raw, str):
            return _raise(key, raw, "a string", source)
        return raw
    raise TypeError(f"unsupported setting type {tp!r} for {key}")


def _plural(item: Any) -> str:
    return "integers" if item is int else "strings"


def _raise(key: str, value: Any, expected: str, source: str) -> Any:
    raise _fail(key, value, expected, source)


def _parse_bool(raw: Any) -> bool | None:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    return None


def _parse_number(tp: type, unit: str | None, raw: Any) -> float | int | None:
    if isinstance(raw, bool):
        return None
    value: float
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        pattern, units = (_SIZE, _SIZE_UNITS) if unit == "bytes" else (_DURATION, _DURATION_UNITS)
        m = pattern.match(raw)
        if m is None:
            return None
        suffix = m.group(2)
        if unit is None and suffix:
            return None
        factor = units[suffix.lower() if suffix else ("" if unit == "bytes" else None)]  # type: ignore[index]
        value = float(m.group(1)) * factor
    else:
        return None
    if tp is int:
        if value != int(value):
            return None
        return int(value)
    return value


def build(
    cls: type[T],
    data: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    prefix: str = "",
    source: str = "config",
    base_dir: Path | None = None,
    exclude: frozenset[str] = frozenset(),
) -> T:
    """Build the settings dataclass ``cls`` from TOML ``data`` and the environment.

    Precedence: environment variable > file > default. Unknown keys are errors (with a
    suggestion), so a typo never silently falls back to a default.
    """
    data = dict(data or {})
    env = env or {}
    hints = _hints(cls)
    fields = {f.name: f for f in _settings_fields(cls, exclude)}
    secret_files = {f"{name}_file" for name, f in fields.items() if f.metadata.get("secret")}
    for name in data:
        if name not in fields and name not in secret_files:
            close = difflib.get_close_matches(name, [*fields, *secret_files], n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{source}: unknown key {prefix + name!r}{hint}",
                key=prefix + name,
                value=data[name],
                expected="one of: " + ", ".join(prefix + k for k in fields),
                source=source,
            )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = prefix + name
        tp = hints[name]
        if _is_section(tp):
            sub = data.get(name, {})
            if not isinstance(sub, Mapping):
                raise _fail(key, sub, "a table (section)", source)
            values[name] = build(
                tp,
                sub,
                env=env,
                prefix=key + ".",
                source=source,
                base_dir=base_dir,
                exclude=f.metadata.get("exclude", frozenset()),
            )
            continue
        raw, where = _lookup(name, key, f, data, env, source, base_dir)
        if raw is _MISSING:
            continue  # the dataclass default applies
        values[name] = parse_value(tp, f.metadata, raw, key, where)
    try:
        return cls(**values)
    except ConfigError as exc:
        if source in str(exc):
            raise
        key = prefix + exc.key if exc.key else prefix.rstrip(".")
        raise ConfigError(
            f"{source}: {exc}", key=key, value=exc.value, expected=exc.expected, source=source
        ) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'settings'}: {exc}") from exc


_MISSING: Any = object()


def _lookup(
    name: str,
    key: str,
    f: dataclasses.Field[Any],
    data: Mapping[str, Any],
    env: Mapping[str, str],
    source: str,
    base_dir: Path | None,
) -> tuple[Any, str]:
    var = env_name(key)
    if var in env:
        return env[var], f"environment variable {var}"
    if f.metadata.get("secret"):
        file_var = var + "_FILE"
        path: Any = env.get(file_var)
        where = f"environment variable {file_var}"
        if path is None and f"{name}_file" in data:
            path, where = data[f"{name}_file"], f"{source}: {key}_file"
        if path is not None:
            return _read_secret(Path(str(path)), base_dir, key, where), where
    if name in data:
        return data[name], source
    return _MISSING, source


def _read_secret(path: Path, base_dir: Path | None, key: str, where: str) -> str:
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read the secret for {key} from {str(path)!r}: {exc.strerror}",
            key=key,
            value=str(path),
            expected="a readable file",
            source=where,
        ) from exc


def render_defaults(
    cls: type[Any], prefix: str = "", *, header: str = "", exclude: frozenset[str] = frozenset()
) -> str:
    """A commented TOML file with every default, derived from the declarations."""
    lines: list[str] = [header] if header else []
    hints = _hints(cls)
    plain = [f for f in _settings_fields(cls, exclude) if not _is_section(hints[f.name])]
    if plain and prefix:
        lines.append(f"[{prefix.rstrip('.')}]")
    for f in plain:
        key = prefix + f.name
        lines.append(f"# {f.metadata.get('help', '')}")
        lines.append(f"# env: {env_name(key)}")
        default = f.default
        if f.metadata.get("secret"):
            lines.append(f'# {f.name} = ...   (or {f.name}_file = "/path/to/secret")')
        elif f.metadata.get("shown"):
            lines.append(f"# {f.name} = ...   (default: {f.metadata['shown']})")
        elif default is None:
            lines.append(f"# {f.name} =")
        else:
            lines.append(f"{f.name} = {_toml(default)}")
        lines.append("")
    for f in _settings_fields(cls, exclude):
        if _is_section(hints[f.name]):
            lines.append(
                render_defaults(
                    hints[f.name],
                    prefix + f.name + ".",
                    exclude=f.metadata.get("exclude", frozenset()),
                )
            )
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, frozenset)):
        items = sorted(value) if isinstance(value, frozenset) else value
        return "[" + ", ".join(_toml(v) for v in items) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_reference(cls: type[Any], env_for: Callable[[str], str] | None = None) -> str:
    """The Markdown reference table of every setting, derived from the declarations.

    ``env_for(key)`` names the environment variable when it is not the default one.
    """
    rows = [
        "| key | type | default | environment variable | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for info in describe(cls):
        if info.secret:
            default = "(secret)"
        elif info.shown:
            default = info.shown
        else:
            default = "" if info.default is None else f"`{_toml(info.default)}`"
        env = env_for(info.key) if env_for is not None else info.env
        help_text = info.help.replace("|", "\\|")
        if info.secret:
            help_text += f" Also `{info.key}_file` / `{env}_FILE`."
        rows.append(f"| `{info.key}` | {info.type_name} | {default} | `{env}` | {help_text} |")
    return "\n".join(rows) + "\n"
