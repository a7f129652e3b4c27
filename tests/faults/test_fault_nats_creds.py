"""`nats.creds_file` logs in with the credentials file (a user JWT and its NKey seed),
as a NATS server in operator mode (nsc, NGS / Synadia Cloud) requires.

The setting was declared and documented but never passed to nats-py: the source
connected without credentials, and such a server refused it ("Authorization
Violation"), with nothing pointing at the setting. A file that cannot be used is now
refused when the pipeline starts, saying why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("nkeys")

from natsjwt import operator_mode
from natsserver import NatsServer

from chworkers.daemon.brokers.natsclient import describe
from chworkers.daemon.brokers.natsstream import NatsSource
from chworkers.daemon.brokers.options import NatsSourceSettings
from chworkers.errors import ConfigError


def test_a_credentials_file_logs_in_to_a_server_in_operator_mode(tmp_path: Path) -> None:
    config, creds = operator_mode(tmp_path / "auth")
    server = NatsServer(tmp_path / "nats", options=("-c", str(config)))
    server.start()
    try:
        options = NatsSourceSettings(
            url=server.url, stream="ev", subjects=("ev.>",), creds_file=str(creds)
        )
        line = describe(options, "pipeline 'p'")
        assert line.startswith("stream ev does not exist"), line  # in, and asked
        source = NatsSource(
            name="p",
            table="ev",
            format="JSONEachRow",
            batcher=None,  # type: ignore[arg-type]
            options=options,
            consumer="us",
            dead_letter=lambda records, token: None,
        )
        try:
            source.link.connect()  # creates the stream, the consumer and the bucket
        finally:
            source.close()
        assert describe(options, "pipeline 'p'").startswith("stream ev: 0 messages")
    finally:
        server.stop()


def test_a_credentials_file_that_cannot_be_used_is_refused_at_start(tmp_path: Path) -> None:
    from chworkers.daemon.brokers.natsclient import credentials

    missing = tmp_path / "missing.creds"
    options = NatsSourceSettings(url="nats://127.0.0.1:1", stream="ev", creds_file=str(missing))
    with pytest.raises(ConfigError) as caught:
        NatsSource(
            name="p",
            table="ev",
            format="JSONEachRow",
            batcher=None,  # type: ignore[arg-type]
            options=options,
            consumer="us",
            dead_letter=lambda records, token: None,
        )
    assert f"pipeline 'p': nats.creds_file {missing}: cannot be read" in str(caught.value)
    not_creds = tmp_path / "password.txt"
    not_creds.write_text("s3cret\n")
    options = NatsSourceSettings(url="nats://127.0.0.1:1", stream="ev", creds_file=str(not_creds))
    with pytest.raises(ConfigError, match="no user JWT and NKey seed in it"):
        credentials(options, "pipeline 'p'")
