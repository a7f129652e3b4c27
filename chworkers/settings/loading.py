"""Building a settings dataclass from a config file's data, the environment and flags."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from chworkers.errors import ConfigError
from chworkers.settings.declare import env_name, hints_of, is_section, settings_fields
from chworkers.settings.values import invalid, parse_value

T = TypeVar("T")


def build(
    cls: type[T],
    data: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    prefix: str = "",
    source: str = "config",
    base_dir: Path | None = None,
    exclude: frozenset[str] = frozenset(),
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build the settings dataclass ``cls`` from TOML ``data``, the environment and
    ``overrides`` (``{"log.level": "DEBUG"}``: the command line's flags, by full key).

    Precedence: command line > environment variable > file > default. Unknown keys are
    errors (with a suggestion), so a typo never silently falls back to a default.
    """
    data = dict(data or {})
    env = env or {}
    overrides = overrides or {}
    hints = hints_of(cls)
    fields = {f.name: f for f in settings_fields(cls, exclude)}
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
        if is_section(tp):
            sub = data.get(name, {})
            if not isinstance(sub, Mapping):
                raise invalid(key, sub, "a table (section)", source)
            values[name] = build(
                tp,
                sub,
                env=env,
                prefix=key + ".",
                source=source,
                base_dir=base_dir,
                exclude=f.metadata.get("exclude", frozenset()),
                overrides=overrides,
            )
            continue
        if key in overrides:
            raw, where = overrides[key], "the command line"
        else:
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
