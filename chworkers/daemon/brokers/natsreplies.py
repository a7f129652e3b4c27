"""What a JetStream message's reply subject says: its stream sequence and how many times
it was delivered (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.
<timestamp>.<pending>``; with a domain and an account hash in the newer form, two tokens
later). The subject is also where the message is acknowledged, so the source keeps it
as it came (bytes)."""

from __future__ import annotations


def delivery(reply: str | bytes) -> tuple[int, int]:
    """``(stream sequence, times delivered)`` from a message's reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...``; with a domain and an
    account hash in the newer form, two tokens later)."""
    tokens = reply.encode().split(b".") if isinstance(reply, str) else reply.split(b".")
    at = 4 if len(tokens) == 9 else 6
    return int(tokens[at + 1]), int(tokens[at])


def sequences(replies: list[bytes]) -> tuple[list[str], list[int]]:
    """The stream sequences of messages (as ids) from their reply subjects, and where
    the redelivered ones are (:func:`delivery` for a run of them: the loop that runs
    for every message)."""
    ids: list[str] = []
    again: list[int] = []
    for reply in replies:
        tokens = reply.split(b".")
        at = 4 if len(tokens) == 9 else 6
        if tokens[at] != b"1":
            again.append(len(ids))
        ids.append(tokens[at + 1].decode())
    return ids, again


__all__ = ["delivery", "sequences"]
