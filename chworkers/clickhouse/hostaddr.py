"""One ClickHouse HTTP endpoint: :class:`Host`, and how ``host[:port]`` text becomes one."""

from __future__ import annotations

from typing import NamedTuple

from chworkers.errors import ConfigError

__all__ = ["Host", "parse_host"]


class Host(NamedTuple):
    """One ClickHouse HTTP endpoint."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _bad(key: str, value: object, expected: str, why: str = "") -> ConfigError:
    return ConfigError(
        f"connection option {key}: {value!r} is not {expected}{why}",
        key=key,
        value=value,
        expected=expected,
    )


def parse_host(text: str, default_port: int) -> Host:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` (``default_port`` when none)."""
    text = text.strip()
    if not text:
        raise _bad("host", text, "a host name or address")
    if text.startswith("["):  # [::1]:8123
        end = text.find("]")
        if end < 0:
            raise _bad("host", text, "a host name or address", " (unclosed '[')")
        name, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        name, port_text = text.split(":")
    else:
        name, port_text = text, ""
    port = default_port
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            raise _bad(
                "port", port_text, "an integer between 1 and 65535", f" (in host {text!r})"
            ) from None
    if not 0 < port < 65536:
        raise _bad("port", port, "an integer between 1 and 65535", f" (in host {text!r})")
    return Host(name, port)
