"""The generator source: synthetic events, for demos and benchmarks."""

from __future__ import annotations

import threading
from typing import Any

from chworkers.daemon.sources import _Source

__all__ = ["GENERATOR_SCHEMA", "GeneratorSource"]


class GeneratorSource(_Source):
    """Synthetic JSONEachRow events, for demos and benchmarks.

    Rows look like ``{"ts": ..., "user_id": ..., "event": ..., "value": ..., "url": ...}``
    (see :data:`GENERATOR_SCHEMA`); ``count`` rows in all (0: until stopped) at about
    ``rate`` rows a second (0: as fast as possible). Their ``ts`` starts at ``start``
    (epoch seconds; by default an hour before the run starts) and moves a second every
    1,000 rows. The same ``seed`` and ``start`` give the same rows.
    """

    EVENTS = ("view", "click", "purchase", "signup", "logout")

    def _fitting(self, limit: int) -> int:
        return limit  # its records are a few hundred bytes: none to skip

    def __init__(
        self,
        *,
        count: int = 100_000,
        rate: float = 0.0,
        seed: int = 1,
        chunk_rows: int = 5000,
        start: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("format", "JSONEachRow")
        super().__init__(**kwargs)
        self.count = count
        self.rate = rate
        self.seed = seed
        self.chunk_rows = chunk_rows
        self.start = start

    def run(self, stop: threading.Event) -> None:
        import random
        import time

        rng = random.Random(self.seed)
        started = time.monotonic()
        base = int(time.time()) - 3600 if self.start is None else self.start
        made = 0
        while not stop.is_set() and (self.count == 0 or made < self.count):
            n = self.chunk_rows if self.count == 0 else min(self.chunk_rows, self.count - made)
            lines = []
            for i in range(made, made + n):
                ts = base + i // 1000
                user, event = rng.randrange(100_000), rng.choice(self.EVENTS)
                value, page = rng.random() * 100, rng.randrange(1000)
                lines.append(
                    f'{{"ts":{ts},"user_id":{user},"event":"{event}",'
                    f'"value":{value:.3f},"url":"/p/{page}"}}\n'
                )
            self._add("".join(lines).encode(), n)
            made += n
            if self.rate > 0:
                ahead = made / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    stop.wait(ahead)


#: The table the generator's rows fit (used by the demo pipeline).
GENERATOR_SCHEMA = (
    "ts DateTime, user_id UInt64, event LowCardinality(String), value Float64, url String"
)
