"""`chworkers check` names the NATS server that does not answer, as it does for Redis.

It said "pipeline q: NATS FAILS: pipeline 'q': cannot connect: ConnectionRefusedError:
..." without the server's URL (the Redis check says `redis redis://host:port/0: ...`),
and with a password in the URL it must stay hidden.
"""

from __future__ import annotations

import socket

import pytest

from chworkers.daemon.brokers.natsclient import describe
from chworkers.daemon.brokers.options import NatsSourceSettings
from chworkers.errors import BrokerError


def test_a_nats_server_that_does_not_answer_is_named() -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    options = NatsSourceSettings(url=f"nats://ingest:s3cret@127.0.0.1:{port}", stream="ev")
    with pytest.raises(BrokerError) as caught:
        describe(options, "pipeline 'q'")
    message = str(caught.value)
    assert f"pipeline 'q': nats nats://127.0.0.1:{port}: cannot connect" in message
    assert "s3cret" not in message
