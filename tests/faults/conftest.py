"""Fixtures for the fault drills: a seeded :class:`~harness.Drill` that always cleans up.

The seed comes from ``CHWORKERS_FAULT_SEED`` when set (to replay a failure), else it is
random; it is printed with every failing test's report.
"""

from __future__ import annotations

import os
import random
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from drilltargets import OwnClickHouse, ProxiedClickHouse
from faultproxy import FaultProxy
from harness import Drill

SEED_ENV = "CHWORKERS_FAULT_SEED"


@pytest.fixture
def fault_seed(request: pytest.FixtureRequest) -> int:
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1, 2**31))
    request.node.user_properties.append(("fault seed", seed))
    print(f"fault seed {seed} (rerun with {SEED_ENV}={seed})")
    return seed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    seeds = [v for k, v in item.user_properties if k == "fault seed"]
    if report.failed and seeds:
        report.sections.append(("fault seed", f"{seeds[0]} (rerun with {SEED_ENV}={seeds[0]})"))
    return report


@pytest.fixture
def drill(
    tmp_path: Path, endpoint: Any, database: str, fault_proxy: FaultProxy, fault_seed: int
) -> Iterator[Drill]:
    """A drill against the session endpoint, through the fault proxy, in its own database."""
    d = Drill(tmp_path, ProxiedClickHouse(endpoint, database, fault_proxy), fault_seed)
    try:
        yield d
    finally:
        _clean(d)


@pytest.fixture
def own_drill(tmp_path: Path, fault_seed: int) -> Iterator[Drill]:
    """A drill whose daemon runs its own embedded ClickHouse child (``url = "embedded"``)."""
    d = Drill(tmp_path, OwnClickHouse(), fault_seed)
    try:
        yield d
    finally:
        _clean(d)


def _clean(d: Drill) -> None:
    print("what the drill did:\n  " + "\n  ".join(d.events))  # shown with -s or on failure
    d.close()
