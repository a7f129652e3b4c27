"""Command-line flags derived from the settings declarations, as gunicorn derives its CLI.

A setting declared with ``flag="--log-level"`` gets an argparse option whose help is the
setting's help and default, whose value is parsed as the config file's is (``--body-timeout
90s``), and whose bad value is a usage error saying what is expected. A subsection's
flags are offered where it is declared with ``section(..., flags=True)``.

Flags default to "not given": :func:`given` returns only what the command line said, by
full key (``{"log.level": "DEBUG"}``), for :func:`~chworkers.settings.build`'s
``overrides``, so a flag wins over the config file and the environment, also when the
file is read again (SIGHUP). :func:`arguments` is the way back: the flags that give a
child process the same settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from chworkers.errors import ConfigError
from chworkers.settings.declare import env_name, hints_of, is_section, settings_fields
from chworkers.settings.loading import build
from chworkers.settings.values import parse_value

T = TypeVar("T")

#: Namespace attributes of settings flags are ``setting:<key>``, apart from the others.
DEST_PREFIX = "setting:"


@dataclasses.dataclass(frozen=True)
class Flag:
    """One setting's command-line option."""

    key: str
    names: tuple[str, ...]
    tp: Any
    field: dataclasses.Field[Any]

    @property
    def value_type(self) -> Any:
        """The setting's type without ``| None``."""
        if typing.get_origin(self.tp) in (types.UnionType, typing.Union):
            return next(a for a in typing.get_args(self.tp) if a is not type(None))
        return self.tp


def flags_of(cls: type[Any], prefix: str = "", exclude: frozenset[str] = frozenset()) -> list[Flag]:
    """Every setting of ``cls`` that declares a flag, and those of its subsections
    declared with ``flags=True``, in declaration order."""
    hints = hints_of(cls)
    out: list[Flag] = []
    for f in settings_fields(cls, exclude):
        key, tp = prefix + f.name, hints[f.name]
        if is_section(tp):
            if f.metadata.get("flags"):
                out += flags_of(tp, key + ".", f.metadata.get("exclude", frozenset()))
        elif f.metadata.get("flags"):
            out.append(Flag(key, f.metadata["flags"], tp, f))
    return out


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type[Any],
    *,
    prefix: str = "",
    config_file: bool = False,
) -> None:
    """Add the flags of ``cls``'s settings to ``parser``; ``prefix`` is where ``cls``
    sits in its configuration (``"log."``). ``config_file``: the settings are also read
    from the config file and the environment, and the help says so."""
    for flag in flags_of(cls, prefix):
        kwargs: dict[str, Any] = {
            "dest": DEST_PREFIX + flag.key,
            "default": argparse.SUPPRESS,
            "help": _help(flag, config_file),
        }
        vtype = flag.value_type
        if vtype is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(vtype) is Literal:
            kwargs["choices"] = typing.get_args(vtype)
        else:
            kwargs["type"] = _parser(flag)
            kwargs["metavar"] = flag.field.metadata.get("metavar") or _metavar(flag)
        if flag.field.metadata.get("required"):
            kwargs["required"] = True
        parser.add_argument(*flag.names, **kwargs)


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gave, by full key (``{"log.level": "DEBUG"}``)."""
    return {
        name.removeprefix(DEST_PREFIX): value
        for name, value in vars(args).items()
        if name.startswith(DEST_PREFIX)
    }


def from_flags(cls: type[T], args: argparse.Namespace) -> T:
    """``cls`` with the settings the command line gave, the defaults for the rest."""
    return build(cls, {}, env={}, overrides=given(args), source="the command line")


def arguments(obj: Any, prefix: str = "") -> list[str]:
    """The flags that give ``obj``'s settings (those with a flag) to a child process."""
    out: list[str] = []
    for flag in flags_of(type(obj), prefix):
        value: Any = obj
        for part in flag.key.removeprefix(prefix).split("."):
            value = getattr(value, part)
        name = flag.names[0]
        if value is None:
            continue
        if isinstance(value, bool):
            out.append(name if value else "--no-" + name.removeprefix("--"))
        elif isinstance(value, tuple | frozenset):
            out += [name, ",".join(str(v) for v in sorted(value, key=str))]
        else:
            out += [name, str(value) if isinstance(value, str) else repr(value)]
    return out


def render_flags(cls: type[Any], prefix: str = "", *, config_file: bool = False) -> str:
    """The Markdown table of ``cls``'s flags, derived from the declarations."""
    head = "| flag | key | meaning |" if config_file else "| flag | meaning |"
    rows = [head, "| --- | --- | --- |" if config_file else "| --- | --- |"]
    for flag in flags_of(cls, prefix):
        names = ", ".join(f"`{n}`" for n in flag.names)
        text = _help(flag, False).replace("%%", "%").replace("|", "\\|")
        rows.append(
            f"| {names} | `{flag.key}` | {text} |" if config_file else f"| {names} | {text} |"
        )
    return "\n".join(rows) + "\n"


def _help(flag: Flag, config_file: bool) -> str:
    meta = flag.field.metadata
    text = str(meta.get("help", "")).rstrip(".")
    notes = []
    default = flag.field.default
    if meta.get("required"):
        notes.append("required")
    elif not meta.get("secret") and default != "":  # "" : the help says what happens
        shown = meta.get("shown") or ("none" if default is None else _plain(default, meta))
        notes.append(f"default: {shown}")
    if config_file:
        notes.append(f"wins over {flag.key} in the config file and {env_name(flag.key)}")
    full = f"{text} ({'; '.join(notes)})." if notes else f"{text}."
    return full.replace("%", "%%")  # argparse formats help with %


def _plain(value: Any, meta: Mapping[str, Any]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and meta.get("unit") == "seconds":
        return f"{value:g}s"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _metavar(flag: Flag) -> str:
    unit = flag.field.metadata.get("unit")
    if unit == "seconds":
        return "DURATION"
    if unit == "bytes":
        return "SIZE"
    if flag.value_type in (int, float):
        return "N"
    return flag.key.rsplit(".", 1)[-1].upper()


def _parser(flag: Flag) -> Callable[[str], Any]:
    """A flag's value parsed as the setting's is in a config file ("90s", "250ms")."""

    def parse(raw: str) -> Any:
        try:
            return parse_value(flag.tp, flag.field.metadata, raw, flag.key, flag.names[0])
        except ConfigError as exc:
            shown = "***" if flag.field.metadata.get("secret") else repr(raw)
            raise argparse.ArgumentTypeError(
                f"{shown} is invalid: expected {exc.expected}"
            ) from None

    return parse


__all__ = ["Flag", "add_flags", "arguments", "flags_of", "from_flags", "given", "render_flags"]
