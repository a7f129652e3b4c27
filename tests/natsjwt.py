"""Credentials for a nats-server in operator mode, made here without nsc: an operator, a
system account, an account with JetStream, a user of it, and the user's credentials
file as nsc writes it (a user JWT and its NKey seed). Each JWT is signed with its
issuer's NKey (``ed25519-nkey``), as nats-server checks.

Used by tests/faults/test_fault_nats_creds.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

#: An account's limits: none (JetStream included: storage -1 is unlimited).
UNLIMITED = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Identity:
    """An NKey of one kind (``prefix``: nkeys.PREFIX_BYTE_OPERATOR, _ACCOUNT, _USER)."""

    def __init__(self, prefix: int) -> None:
        import nkeys  # type: ignore[import-untyped]

        self.seed: bytes = nkeys.encode_seed(os.urandom(32), prefix)
        self.keys = nkeys.from_seed(bytearray(self.seed))
        self.public: str = self.keys.public_key.decode()

    def sign(self, subject: str, name: str, nats: dict[str, Any]) -> str:
        """A JWT of ``subject``'s claims (``nats``: what kind, its limits), issued and
        signed by this identity."""
        claims: dict[str, Any] = {
            "iat": int(time.time()),
            "iss": self.public,
            "name": name,
            "sub": subject,
            "nats": {**nats, "version": 2},
        }
        body = json.dumps(claims, separators=(",", ":")).encode()
        claims["jti"] = base64.b32encode(hashlib.sha256(body).digest()).decode().rstrip("=")
        header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature: bytes = self.keys.sign(f"{header}.{payload}".encode())
        return f"{header}.{payload}.{_b64(signature)}"


def operator_mode(directory: Path) -> tuple[Path, Path]:
    """(a nats-server configuration file for operator mode, a user's credentials file),
    written into ``directory``."""
    import nkeys

    operator = Identity(nkeys.PREFIX_BYTE_OPERATOR)
    system = Identity(nkeys.PREFIX_BYTE_ACCOUNT)
    account = Identity(nkeys.PREFIX_BYTE_ACCOUNT)
    user = Identity(nkeys.PREFIX_BYTE_USER)
    operator_jwt = operator.sign(
        operator.public, "operator", {"type": "operator", "system_account": system.public}
    )
    system_jwt = operator.sign(system.public, "SYS", {"type": "account", "limits": {}})
    account_jwt = operator.sign(
        account.public,
        "ingest",
        {"type": "account", "limits": UNLIMITED, "default_permissions": {"pub": {}, "sub": {}}},
    )
    user_jwt = account.sign(
        user.public,
        "chworkers",
        {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
    )
    directory.mkdir(parents=True, exist_ok=True)
    creds = directory / "chworkers.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
    )
    config = directory / "operator.conf"
    config.write_text(
        f'operator: "{operator_jwt}"\n'
        f"system_account: {system.public}\n"
        "resolver: MEMORY\n"
        f'resolver_preload: {{ {account.public}: "{account_jwt}", '
        f'{system.public}: "{system_jwt}" }}\n'
    )
    return config, creds
