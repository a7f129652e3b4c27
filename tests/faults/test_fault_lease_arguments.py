"""A lease timeout that is not a number >= 0 is refused as a ConfigError, before anything.

``LeaseClient.acquire`` checked ``timeout < 0`` only: NaN (every comparison is false)
and ``True`` (a bool is an int) went through as if they were timeouts, and a NaN one
reached the broker, which turned it into "no wait at all". Both are caller mistakes
and are now told as such, naming the argument, like a negative timeout or a string.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from chworkers.clickhouse.lease import LeaseBroker
from chworkers.errors import ConfigError


@pytest.fixture
def full_broker() -> Iterator[LeaseBroker]:
    broker = LeaseBroker(1)
    broker.start()
    broker.client("holder").acquire(5)  # nothing left: a bad timeout must not be waited out
    yield broker
    broker.close()


@pytest.mark.parametrize("bad", [math.nan, True, -1, "1", math.inf * -1])
def test_bad_lease_timeouts_are_config_errors(full_broker: LeaseBroker, bad: object) -> None:
    client = full_broker.client("caller")
    with pytest.raises(ConfigError, match="lease timeout") as info:
        client.acquire(bad)  # type: ignore[arg-type]
    assert info.value.key == "lease timeout"
    assert full_broker.stats().waiting == 0  # nothing was queued at the broker
