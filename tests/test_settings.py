from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Literal

import pytest

from chworkers.errors import ConfigError
from chworkers.settings import (
    build,
    describe,
    reloadable,
    render_defaults,
    render_reference,
    section,
    setting,
    unbounded,
    validate,
)


@dataclasses.dataclass(frozen=True)
class Inner:
    max_connections: int = setting(4, "Most connections at once.", minimum=1)
    acquire_timeout: float = setting(10.0, "Seconds to wait.", unit="seconds", minimum=0)


@dataclasses.dataclass(frozen=True)
class Outer:
    url: str = setting("embedded", "Where ClickHouse is.")
    password: str | None = setting(None, "The password.", secret=True)
    policy: Literal["block", "reject", "drop_oldest"] = setting("block", "Full spool policy.")
    max_bytes: int = setting(1024, "Spool cap.", unit="bytes", minimum=1)
    fsync: bool = setting(True, "fsync each batch.")
    hosts: tuple[str, ...] = setting((), "Hosts.")
    pool: Inner = section(Inner, "Pool.")
    codes: frozenset[int] = setting(frozenset({3, 159}), "Retryable codes.")
    history: tuple[int, ...] = dataclasses.field(default=(), compare=False)  # not a setting


def test_defaults() -> None:
    cfg = build(Outer, {})
    assert cfg == Outer()
    assert cfg.pool.max_connections == 4


def test_file_values_and_units() -> None:
    cfg = build(
        Outer,
        {"max_bytes": "64MiB", "policy": "reject", "pool": {"acquire_timeout": "250ms"}},
    )
    assert cfg.max_bytes == 64 * 1024 * 1024
    assert cfg.policy == "reject"
    assert cfg.pool.acquire_timeout == pytest.approx(0.25)


def test_environment_overrides_file() -> None:
    env = {
        "CHWORKERS_POOL_MAX_CONNECTIONS": "8",
        "CHWORKERS_FSYNC": "off",
        "CHWORKERS_HOSTS": "h1:8123, h2:8123",
    }
    cfg = build(Outer, {"pool": {"max_connections": 2}}, env=env)
    assert cfg.pool.max_connections == 8
    assert cfg.fsync is False
    assert cfg.hosts == ("h1:8123", "h2:8123")


def test_secret_from_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    assert build(Outer, {"password_file": "pw"}, base_dir=tmp_path).password == "s3cret"
    env = {"CHWORKERS_PASSWORD_FILE": str(tmp_path / "pw")}
    assert build(Outer, {}, env=env).password == "s3cret"


def test_unreadable_secret_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="password") as info:
        build(Outer, {"password_file": str(tmp_path / "missing")})
    assert info.value.key == "password"


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"pool": {"max_connections": 0}}, "pool.max_connections", ">= 1"),
        ({"pool": {"max_connections": "many"}}, "pool.max_connections", "integer"),
        ({"pool": {"acquire_timeout": "soon"}}, "pool.acquire_timeout", "duration"),
        ({"policy": "drop_newest"}, "policy", "'drop_oldest'"),
        ({"fsync": "maybe"}, "fsync", "true or false"),
        ({"max_bytes": "12 parsecs"}, "max_bytes", "size"),
        ({"pool": 3}, "pool", "table"),
    ],
)
def test_validation_errors_name_key_value_and_expectation(
    data: dict[str, object], key: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build(Outer, data, source="chworkers.toml")
    err = info.value
    assert err.key == key
    assert expected in str(err)
    assert "chworkers.toml" in str(err)


def test_unknown_key_suggests() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'pool.max_connections'"):
        build(Outer, {"pool": {"max_conections": 3}})


def test_env_error_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="CHWORKERS_POOL_MAX_CONNECTIONS"):
        build(Outer, {}, env={"CHWORKERS_POOL_MAX_CONNECTIONS": "-1"})


def test_rendered_defaults_parse_back_to_defaults() -> None:
    text = render_defaults(Outer)
    assert "# env: CHWORKERS_POOL_MAX_CONNECTIONS" in text
    assert build(Outer, tomllib.loads(text)) == Outer()


def test_reference_lists_every_setting() -> None:
    ref = render_reference(Outer)
    for info in describe(Outer):
        assert f"`{info.key}`" in ref
        assert info.env in ref


def test_integer_lists_and_internal_fields() -> None:
    cfg = build(Outer, {"codes": [1, 2]}, env={})
    assert cfg.codes == frozenset({1, 2})
    assert build(Outer, {}, env={"CHWORKERS_CODES": "7, 8"}).codes == frozenset({7, 8})
    with pytest.raises(ConfigError, match="list of integers"):
        build(Outer, {"codes": ["x"]})
    with pytest.raises(ConfigError, match="unknown key 'history'"):
        build(Outer, {"history": [1]})
    assert "history" not in render_defaults(Outer)


@dataclasses.dataclass(frozen=True)
class Validated:
    workers: int = setting(2, "Workers.", minimum=1, reload=True)
    timeout: float = setting(5.0, "Timeout.", unit="seconds")
    name: str | None = setting(None, "Name.")

    def __post_init__(self) -> None:
        validate(self)


def test_python_api_validates_like_the_config_file() -> None:
    assert Validated(timeout="250ms").timeout == pytest.approx(0.25)  # type: ignore[arg-type]
    assert Validated(timeout=3).timeout == 3.0
    with pytest.raises(ConfigError, match=r"workers = 0 .*>= 1") as info:
        Validated(workers=0)
    assert info.value.key == "workers"
    with pytest.raises(ConfigError, match="integer"):
        Validated(workers=True)
    assert reloadable(Validated) == {"workers"}


def test_unbounded_skips_only_the_bounds_and_only_the_values_it_is_given() -> None:
    base = Validated(workers=3)
    low = unbounded(base, workers=0, timeout="2ms")
    assert (low.workers, low.timeout, low.name) == (0, pytest.approx(0.002), None)
    assert base.workers == 3  # a copy: the original is untouched
    with pytest.raises(ConfigError, match="integer"):
        unbounded(base, workers="many")  # types and units are still checked
    with pytest.raises(TypeError, match="no setting 'wokers'"):
        unbounded(base, wokers=0)
    with pytest.raises(ConfigError, match=">= 1"):
        dataclasses.replace(low, name="x")  # anything built again is validated again
