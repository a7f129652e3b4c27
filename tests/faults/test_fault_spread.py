"""Tasks that each find every worker idle are spread over the workers, not all sent to one.

The dispatcher gave each task to the worker with the fewest tasks in hand, and between
equals to the first in its table: a producer that submits one task at a time and waits
(a trickle, or the daemon's batches arriving slower than workers insert them) had the
first worker run everything (1,031 tasks against 230 on two workers, in issue 11's
measurement) while the other idled. Between equals, the one given the fewest so far
takes it now.
"""

from __future__ import annotations

import os

from chworkers import Supervisor


def whoami() -> int:
    return os.getpid()


def test_a_trickle_of_tasks_is_spread_evenly() -> None:
    with Supervisor(workers=2, start_method="fork") as sup:
        pids = [sup.call(whoami).result(30) for _ in range(20)]
        done = sorted(w["done"] for w in sup.stats().workers)
    assert len(set(pids)) == 2
    assert done == [10, 10]
