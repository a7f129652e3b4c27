"""A NATS stream deleted and made again: its poison is dead-lettered, not taken for the
earlier stream's.

A poison message's dead letter is written once by its key (pipeline, message id,
payload checksum; chworkers/daemon/letterkeys.py). A NATS message's id was its stream
sequence, which starts at 1 again in a stream made anew: the same poison payload at the
same sequence (an empty message, a record over the limit) was skipped as lettered
already and terminated, lost without a trace. The id now carries the stream's creation
time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from daemonthread import Running, daemon_config
from natsserver import NatsServer
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)

POISON = b'1,"an unclosed quote\n'  # a record that never ends: poison, terminated at once


def _letters(state: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in (state / "dead-letter").rglob("*.jsonl")
        for line in path.read_text().splitlines()
    ]


def _run_once(state: Path, dsn: str, nats_server: NatsServer) -> None:
    pipeline = {
        "source": "nats",
        "format": "CSV",
        "create": "n UInt64, s String",
        "table": "csvt",
        "max_rows": 2000,
        "max_delay": 0.2,
        "nats": {"url": nats_server.url, "stream": "ev", "ack_wait": 2.0},
    }
    daemon = Running(daemon_config(state, dsn, pipeline))
    try:
        wait_for(nats_server.settled, 60, interval=0.2, what="all messages acked")
    finally:
        daemon.stop()


def test_poison_of_a_stream_made_again_is_dead_lettered(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, nats_server: NatsServer
) -> None:
    state = tmp_path / "state"
    dsn = f"{endpoint.url}/{database}"
    nats_server.make_stream()
    nats_server.publish([POISON])
    _run_once(state, dsn, nats_server)
    assert len(_letters(state)) == 1

    async def delete(client: Any) -> None:
        await client.jetstream().delete_stream("ev")

    nats_server.run(delete)
    nats_server.make_stream()  # sequences start at 1 again
    nats_server.publish([POISON])
    _run_once(state, dsn, nats_server)
    letters = _letters(state)
    assert [x["reason"] for x in letters] == ["poison", "poison"], letters
    assert letters[0]["key"] != letters[1]["key"], letters
