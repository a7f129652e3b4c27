from __future__ import annotations

import pickle

import pytest

from chworkers import errors


def test_tree_has_one_root() -> None:
    for name in dir(errors):
        obj = getattr(errors, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, Exception)
            and obj.__module__ == errors.__name__
        ):
            assert issubclass(obj, errors.ChworkersError), name


@pytest.mark.parametrize(
    "err",
    [
        errors.ServerError(
            "Code: 60. DB::Exception: no table (UNKNOWN_TABLE)",
            code=60,
            name="UNKNOWN_TABLE",
            http_status=404,
            endpoint="http://127.0.0.1:8123",
            query_id="q1",
        ),
        errors.ConnectError("refused", endpoint="http://127.0.0.1:1"),
        errors.ResponseTimeoutError("timed out", endpoint="http://h:8123"),
        errors.RetriesExhaustedError(
            "gave up", attempts=3, last_error=errors.ConnectError("refused")
        ),
        errors.ConfigError("bad", key="pool.max_connections", value=-1, expected="an integer >= 1"),
        errors.PoolTimeoutError("no connection within 1.0 s"),
    ],
)
def test_errors_pickle_with_context(err: errors.ChworkersError) -> None:
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err)
    assert str(copy) == str(err)
    for key, value in vars(err).items():
        if isinstance(value, BaseException):
            assert type(getattr(copy, key)) is type(value)
            assert str(getattr(copy, key)) == str(value)
        else:
            assert getattr(copy, key) == value


def test_connect_error_is_never_sent() -> None:
    assert errors.ConnectError("refused").sent is False
    assert errors.ConnectionLostError("reset").sent is True
