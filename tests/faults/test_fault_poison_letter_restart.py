"""A poison message's dead letter is written once even when a restart comes between the
letter and the message's acknowledgement.

The broker sources remembered the poison they had dead-lettered in memory only (session
7): a message whose acknowledgement was lost (the broker down, the daemon killed) and
that was delivered again after a restart was dead-lettered a second time (documented as
a limit in docs/brokers.md). Each poison letter now carries a key (source, message id,
payload checksum) recorded in an index beside the letters (``dead-letter/@letter-keys``)
before the letter is appended; a write of a key already on disk is skipped, in the same
run or the next, and a recorded write that never reached the disk does not count.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from redisserver import RedisServer
from redissources import redis_source

from chworkers.daemon.brokers.wiring import poison_letters
from chworkers.daemon.deadletter import DeadLetters
from chworkers.daemon.spool import SpooledBatch
from chworkers.errors import BrokerError, PoisonMessageError


def _lines(directory: Path) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for path in sorted(directory.rglob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def _poison(message_id: str) -> tuple[bytes, BaseException]:
    error = PoisonMessageError(f"message {message_id} has no payload field")
    error.message_id = message_id
    return b"", error


def test_a_letter_written_before_a_restart_is_not_written_again(tmp_path: Path) -> None:
    letters = tmp_path / "dead-letter"
    first = DeadLetters(letters)
    first.ready()
    write = poison_letters(first, "p", "ev")
    write([_poison("1-0")], "")
    restarted = DeadLetters(letters)  # a new process: nothing in memory
    restarted.ready()
    again = poison_letters(restarted, "p", "ev")
    again([_poison("1-0"), _poison("2-0")], "")
    again([_poison("2-0")], "")
    written = _lines(letters)
    assert [line["error"]["message"] for line in written] == [  # type: ignore[index]
        "message 1-0 has no payload field",
        "message 2-0 has no payload field",
    ], written
    assert all(str(line["key"]).startswith("p:") for line in written)


def test_a_letter_whose_write_never_reached_the_disk_is_written_at_the_next_start(
    tmp_path: Path,
) -> None:
    letters = tmp_path / "dead-letter"
    first = DeadLetters(letters)
    path = first.write_errors("ev", [_poison("1-0")], reason="poison", keys=["p:1-0:0"])
    assert path is not None
    path.write_bytes(b"")  # as if the power went after the index, before the letter
    restarted = DeadLetters(letters)
    restarted.ready()
    assert restarted.write_errors("ev", [_poison("1-0")], reason="poison", keys=["p:1-0:0"])
    assert len(_lines(letters)) == 1
    # And one cut halfway (a torn line): not counted either.
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    again = DeadLetters(letters)
    again.ready()
    assert again.write_errors("ev", [_poison("1-0")], reason="poison", keys=["p:1-0:0"])
    tail = path.read_bytes()[len(whole) // 2 :]
    assert json.loads(tail)["key"] == "p:1-0:0"


def test_redis_poison_acknowledged_after_a_restart_is_not_dead_lettered_again(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    client.xadd("ev", {"other": "no data field"})
    client.close()
    letters = tmp_path / "dead-letter"
    batches: list[SpooledBatch] = []
    source = redis_source(tmp_path, redis_server.url, batches, claim_idle=0.2)
    write = poison_letters(DeadLetters(letters), "ev", "ev")

    def dead_letter(records: list[tuple[bytes, BaseException]], token: str) -> None:
        write(records, token)
        redis_server.stop()  # the dead letter is written; the acknowledgement fails

    source.dead_letter = dead_letter
    source._create_group()
    with pytest.raises(BrokerError):
        source._fetch()  # dead-letters the entry, then cannot acknowledge it
    assert len(_lines(letters)) == 1
    redis_server.start()  # AOF always: the entry is still pending
    assert redis_server.pending() == 1
    # The daemon restarted: a new source and new dead letters, nothing in memory.
    restarted = DeadLetters(letters)
    restarted.ready()
    source = redis_source(tmp_path, redis_server.url, batches, claim_idle=0.2)
    source.dead_letter = poison_letters(restarted, "ev", "ev")
    time.sleep(0.5)  # idle past claim_idle
    for _ in range(20):  # the client reconnects on first use
        try:
            source._claim()
            break
        except BrokerError:
            time.sleep(0.2)
    assert redis_server.pending() == 0  # claimed again and acknowledged
    assert len(_lines(letters)) == 1, _lines(letters)  # not dead-lettered twice
    assert batches == []
