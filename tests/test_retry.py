"""RetryPolicy is a value: classification, backoff with full jitter, attempts, deadline."""

from __future__ import annotations

import dataclasses
import pickle
import random

import pytest

from chworkers.clickhouse.retry import RETRYABLE_CODES, RetryPolicy, Verdict, error_kind
from chworkers.errors import (
    ConfigError,
    ConnectError,
    ConnectionLostError,
    PoolTimeoutError,
    RequestError,
    ResponseTimeoutError,
    RetriesExhaustedError,
    ServerError,
)


def server(code: int | None, status: int | None = 500, **ctx: object) -> ServerError:
    return ServerError(f"Code: {code}", code=code, http_status=status, **ctx)


@pytest.mark.parametrize(
    "code", [3, 107, 159, 164, 202, 203, 209, 210, 241, 242, 252, 285, 319, 425, 999]
)
def test_the_issues_transient_codes_are_retried(code: int) -> None:
    assert code in RETRYABLE_CODES
    assert RetryPolicy().classify(server(code), idempotent=True) is Verdict.RETRY


@pytest.mark.parametrize(
    "code, name",
    [
        (62, "SYNTAX_ERROR"),
        (60, "UNKNOWN_TABLE"),
        (47, "UNKNOWN_IDENTIFIER"),
        (16, "NO_SUCH_COLUMN_IN_TABLE"),
        (53, "TYPE_MISMATCH"),
        (27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED"),
        (6, "CANNOT_PARSE_TEXT"),
        (516, "AUTHENTICATION_FAILED"),
        (497, "ACCESS_DENIED"),
    ],
)
def test_permanent_errors_fail_at_once(code: int, name: str) -> None:
    err = ServerError(f"Code: {code}. ({name})", code=code, name=name, http_status=400)
    policy = RetryPolicy()
    assert policy.classify(err, idempotent=True) is Verdict.FATAL
    with pytest.raises(ServerError) as info:
        policy.increment(err, idempotent=True)
    assert info.value is err


@pytest.mark.parametrize("status", [502, 503, 504, 429])
def test_gateway_statuses_without_a_code_are_retried(status: int) -> None:
    assert RetryPolicy().is_retryable(server(None, status), idempotent=True)


def test_a_status_without_code_outside_the_list_is_fatal() -> None:
    assert not RetryPolicy().is_retryable(server(None, 500), idempotent=True)
    assert not RetryPolicy().is_retryable(server(None, 400), idempotent=True)


def test_never_sent_is_always_retried_maybe_applied_only_when_idempotent() -> None:
    policy = RetryPolicy()
    refused = ConnectError("refused", endpoint="http://127.0.0.1:1")
    assert policy.classify(refused, idempotent=False) is Verdict.RETRY
    for err in (ResponseTimeoutError("slow"), ConnectionLostError("reset")):
        assert policy.classify(err, idempotent=False) is Verdict.UNSAFE
        assert policy.classify(err, idempotent=True) is Verdict.RETRY
        with pytest.raises(type(err)):
            policy.increment(err, idempotent=False)


def test_idempotence_is_read_from_the_error_when_not_given() -> None:
    policy = RetryPolicy()
    assert policy.is_retryable(ResponseTimeoutError("slow", idempotent=True))
    assert not policy.is_retryable(ResponseTimeoutError("slow", idempotent=False))
    assert not policy.is_retryable(ResponseTimeoutError("slow"))


def test_server_errors_that_happen_before_writing_are_safe_for_any_write() -> None:
    policy = RetryPolicy()
    assert policy.classify(server(252), idempotent=False) is Verdict.RETRY  # TOO_MANY_PARTS
    assert policy.classify(server(319), idempotent=False) is Verdict.UNSAFE  # status unknown


def test_other_errors_are_fatal() -> None:
    policy = RetryPolicy()
    for err in (PoolTimeoutError("busy"), RequestError("bad row"), ValueError("bug")):
        assert policy.classify(err, idempotent=True) is Verdict.FATAL


def test_increment_returns_a_new_value_and_never_mutates() -> None:
    policy = RetryPolicy(max_attempts=3).new(now=100.0)
    err = ConnectError("refused")
    second = policy.increment(err, now=100.5)
    assert policy.attempts == 0 and second.attempts == 1
    assert second.last_error is err
    with pytest.raises(dataclasses.FrozenInstanceError):
        second.max_attempts = 9  # type: ignore[misc]
    third = second.increment(err, now=101.0)
    with pytest.raises(RetriesExhaustedError) as info:
        third.increment(err, now=101.5)
    assert info.value.attempts == 3
    assert info.value.last_error is err
    assert info.value.__cause__ is err
    assert pickle.loads(pickle.dumps(info.value)).attempts == 3


def test_states_share_the_checked_settings_without_checking_them_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``new`` runs for every pooled operation: its settings were checked when the
    policy was built, and checking them again cost more than the operation's lease."""
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.2)
    calls: list[object] = []
    monkeypatch.setattr("chworkers.clickhouse.retry.validate", lambda *a, **k: calls.append(a))
    fresh = policy.new(now=5.0)
    later = fresh.increment(ConnectError("refused"), now=6.0)
    assert calls == []
    assert (fresh.started_at, fresh.attempts, later.started_at, later.attempts) == (5.0, 0, 5.0, 1)
    assert later.initial_backoff == 0.2 and later == policy  # the settings, equal
    assert policy.attempts == 0 and policy.started_at is None  # the original untouched


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2.0, max_backoff=1.0, max_attempts=50)
    assert [policy.backoff_ceiling(n) for n in (1, 2, 3, 4, 5, 9)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.0,
        1.0,
    ]
    rng = random.Random(7)
    state = policy.new(now=0.0)
    sleeps = []
    for n in range(1, 200):
        state = state.increment(ConnectError("x"), now=0.0, rng=rng) if n < 40 else state
        if n < 40:
            sleeps.append((n, state.sleep_time()))
    for n, sleep in sleeps:
        assert 0.0 <= sleep <= policy.backoff_ceiling(n)
    late = [s for n, s in sleeps if n >= 5]
    assert min(late) < 0.3 and max(late) > 0.7  # spread over [0, cap], not a fixed delay


def test_deadline_stops_retrying_and_clips_the_wait() -> None:
    policy = RetryPolicy(max_attempts=100, initial_backoff=5.0, max_backoff=5.0, deadline=2.0)
    state = policy.new(now=10.0).increment(ConnectError("x"), now=10.5, rng=random.Random(1))
    assert state.sleep_time() <= 1.5
    with pytest.raises(RetriesExhaustedError, match="deadline"):
        state.increment(ConnectError("x"), now=12.1)


def test_coerce_from_mapping_and_clear_errors() -> None:
    policy = RetryPolicy.coerce({"max_attempts": 2, "deadline": None})
    assert policy.max_attempts == 2 and policy.deadline is None
    assert RetryPolicy.coerce(None) == RetryPolicy()
    with pytest.raises(ConfigError, match=r"unknown key 'retry.max_attempt' \(did you mean"):
        RetryPolicy.coerce({"max_attempt": 2})
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError, match="multiplier"):
        RetryPolicy(multiplier=0.5)
    assert RetryPolicy(retry_codes=[1, 2]).retry_codes == frozenset({1, 2})


def test_error_kind_labels() -> None:
    assert error_kind(ResponseTimeoutError("x")) == "timeout"
    assert error_kind(ConnectError("x")) == "transport"
    assert error_kind(server(60)) == "server"
    assert error_kind(PoolTimeoutError("x")) == "pool"
    assert error_kind(KeyError("x")) == "task"
