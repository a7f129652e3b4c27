"""What a JetStream message's reply subject says: its stream sequence and how many times
it was delivered (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.
<timestamp>.<pending>``; with a domain and an account hash in the newer form, two tokens
later). The subject is also where the message is acknowledged, so the source keeps it
as it came (bytes)."""

from __future__ import annotations

#: A run of messages' stream sequences (as ids) and where the redelivered ones are (their
#: indexes): what :func:`sequences` says of their reply subjects.
Sequences = tuple[list[str], list[int]]


def delivery(reply: str | bytes) -> tuple[int, int]:
    """``(stream sequence, times delivered)`` from a message's reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...``; with a domain and an
    account hash in the newer form, two tokens later)."""
    tokens = reply.encode().split(b".") if isinstance(reply, str) else reply.split(b".")
    at = 4 if len(tokens) == 9 else 6
    return int(tokens[at + 1]), int(tokens[at])


def sequences(replies: list[bytes]) -> Sequences:
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


def read_sequences(seqs: list[bytes], delivered: list[bytes]) -> Sequences:
    """:func:`sequences` of a run whose reply subjects' stream sequences and delivery
    counts were read already (by the parser: ``natswire.take_run``)."""
    ids = b" ".join(seqs).decode().split(" ") if seqs else []
    if delivered.count(b"1") == len(delivered):
        return ids, []
    return ids, [i for i, times in enumerate(delivered) if times != b"1"]


__all__ = ["Sequences", "delivery", "read_sequences", "sequences"]
