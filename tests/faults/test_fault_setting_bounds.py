"""A setting under its bound says the bound as a person reads it.

Before, in a user trial of issue 16, `max_worker_memory = "1KiB"` was refused with
"supervisor.max_worker_memory = '1KiB' is invalid: expected a value >= 1.04858e+06":
the bound in float exponent notation, rounded (it is 1048576 bytes, 1 MiB).
"""

from __future__ import annotations

import pytest

from chworkers.daemon import config
from chworkers.errors import ConfigError


def _refusal(data: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as caught:
        config.load(data=data, env={})
    return str(caught.value)


def test_a_size_bound_is_exact_and_in_binary_units() -> None:
    text = _refusal({"supervisor": {"max_worker_memory": "1KiB"}})
    assert "expected a value >= 1048576 (1 MiB)" in text, text
    assert "e+" not in text


def test_other_bounds_are_written_out() -> None:
    text = _refusal({"supervisor": {"scale_down_after": 0.01}})
    assert "expected a value >= 0.1" in text, text
    text = _refusal({"supervisor": {"scale_up_min_idle_cpu": 2}})
    assert "expected a value <= 1" in text, text
    text = _refusal({"clickhouse": {"pool": {"max_connections": 0}}})
    assert "expected a value >= 1" in text, text
