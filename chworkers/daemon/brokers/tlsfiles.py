"""A broker source's TLS files, loaded as the daemon starts.

A CA bundle, certificate or key that the daemon cannot read (a wrong path, root's mode
0600) or that is not PEM would otherwise fail at each connection attempt, in the
background, for as long as the daemon runs, and no restart would fix it. So the source
loads them when it is made: a file it cannot read is an
:class:`~chworkers.errors.UnusablePathError` and one that is not a usable PEM file a
:class:`~chworkers.errors.ConfigError`, each naming its setting and the file
(``chworkers run`` exits 3, which systemd does not restart).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from chworkers.errors import ConfigError, UnusablePathError

__all__ = ["tls_files_context"]


def tls_files_context(
    *,
    ca: tuple[str, str | None],
    cert: tuple[str, str | None],
    key: tuple[str, str | None],
    where: str,
) -> ssl.SSLContext:
    """A client context verifying with the CA bundle (the system's when none) and showing
    the certificate and key when given; each argument is ``(setting, path or None)``."""
    for setting, path in (ca, cert, key):
        if path is not None:
            _readable(setting, path, where)
    ca_key, ca_path = ca
    try:
        context = ssl.create_default_context(cafile=ca_path)
    except (OSError, ssl.SSLError) as exc:
        raise _refused(ca_key, ca_path, where, exc, "a PEM bundle of CA certificates") from exc
    cert_key, cert_path = cert
    if cert_path is not None:
        try:
            context.load_cert_chain(cert_path, key[1])
        except (OSError, ssl.SSLError) as exc:
            raise _refused(
                cert_key, cert_path, where, exc, "a PEM certificate with its private key"
            ) from exc
    elif key[1] is not None:
        raise ConfigError(
            f"{where}: {key[0]} = {key[1]!r} is given without {cert_key}: "
            "a private key is shown only with its certificate",
            key=cert_key,
            value=None,
            expected="the client certificate that goes with the key",
        )
    return context


def _readable(setting: str, path: str, where: str) -> None:
    try:
        with Path(path).open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise UnusablePathError(
            f"{where}: {setting} = {path!r} cannot be read: {exc.strerror or exc}; "
            "the daemon's user must be able to read it (fix the path, its owner or mode)",
            path=path,
            key=setting,
            value=path,
            expected="a file the daemon's user can read",
        ) from exc


def _refused(
    setting: str, path: str | None, where: str, exc: Exception, expected: str
) -> ConfigError:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return ConfigError(
        f"{where}: {setting} = {path!r} cannot be used: {reason} (expected {expected})",
        key=setting,
        value=path,
        expected=expected,
    )
