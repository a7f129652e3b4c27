"""The broker's queue: lease requests that found no free slot, first come first served.

A request joins when its client found every slot taken, or found others already waiting
(nobody overtakes them). :meth:`LeaseQueue.decide` picks, in arrival order, as many
requests as slots are free and marks them told: the broker tells each to take a slot,
and the client answers ``got`` (it leaves the queue), ``missed`` (someone took the slot
first; it stays at its place, to be told again) or ``cancel`` (it gave up waiting).
Nothing here does I/O or locking: the broker calls it under its lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["LeaseQueue", "Request"]


@dataclass(eq=False)
class Request:
    peer: Any  # the broker's record of the client that asked
    rid: int
    told: bool = False  # told to take a slot; its answer is on the way


class LeaseQueue:
    def __init__(self) -> None:
        self._requests: deque[Request] = deque()

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._requests)

    def add(self, peer: Any, rid: int) -> None:
        self._requests.append(Request(peer, rid))

    def answer(self, peer: Any, rid: int, kind: str) -> None:
        """A client's answer about request ``rid``: ``got``, ``missed`` or ``cancel``."""
        for req in self._requests:
            if req.peer is peer and req.rid == rid:
                if kind == "missed":
                    req.told = False  # still first in line; told again when one frees
                else:
                    self._requests.remove(req)
                return

    def keep_only(self, peers: Collection[Any]) -> None:
        """Drop the requests of clients that are gone."""
        present = {id(p) for p in peers}
        self._requests = deque(r for r in self._requests if id(r.peer) in present)

    @property
    def untold(self) -> bool:
        """Whether some request waits for a slot to be free (not told to take one yet)."""
        return any(not r.told for r in self._requests)

    def decide(self, free: int) -> list[Request]:
        """The requests to tell now: the oldest untold ones, as many as ``free`` slots
        (less those already told, whose answers are on the way)."""
        free -= sum(1 for r in self._requests if r.told)
        told = []
        for req in self._requests:
            if free <= 0:
                break
            if not req.told:
                req.told = True
                free -= 1
                told.append(req)
        return told

    def clear(self) -> list[Request]:
        requests = list(self._requests)
        self._requests.clear()
        return requests

    def by_holder(self) -> dict[str, int]:
        waiting: dict[str, int] = {}
        for req in self._requests:
            waiting[req.peer.holder] = waiting.get(req.peer.holder, 0) + 1
        return waiting
