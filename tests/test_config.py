from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from chworkers.daemon import config
from chworkers.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chworkers.toml"
    path.write_text(text)
    return path


def test_file_env_and_secret_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2\n")
    path = write(
        tmp_path,
        """
        state_dir = "/var/lib/x"
        [clickhouse]
        url = "http://h1:8123,h2:8123/db"
        password_file = "pw"
        [clickhouse.pool]
        max_connections = 4
        [clickhouse.pool.retry]
        max_attempts = 7
        initial_backoff = "50ms"
        [spool]
        max_bytes = "2GiB"
        [[pipelines]]
        name = "events"
        source = "http"
        table = "events"
        """,
    )
    cfg = config.load(path, env={"CHWORKERS_SUPERVISOR_WORKERS": "6"})
    s = cfg.settings
    assert s.clickhouse.pool.max_connections == 4
    assert s.clickhouse.pool.retry.max_attempts == 7
    assert s.clickhouse.pool.retry.initial_backoff == pytest.approx(0.05)
    assert s.spool.max_bytes == 2 * 1024**3
    assert s.supervisor.workers == 6
    conn = s.clickhouse.connection()
    assert conn.password == "hunter2" and conn.database == "db" and len(conn.hosts) == 2
    assert cfg.state_dir == Path("/var/lib/x")
    assert [p.name for p in cfg.pipelines] == ["events"]


def test_state_dir_defaults_to_systemd_state_directory() -> None:
    assert config.load(data={}, env={}).state_dir == Path("chworkers-state")
    cfg = config.load(data={}, env={"STATE_DIRECTORY": "/var/lib/chworkers"})
    assert cfg.state_dir == Path("/var/lib/chworkers")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[clickhouse.pool]\nmax_connections = 0\n", "clickhouse.pool.max_connections = 0"),
        ("[spool]\npolicy = 'drop'\n", "'drop_oldest'"),
        ("[spol]\n", "did you mean 'spool'"),
        ("[clickhouse.pool.retry]\ndeadline = 'soon'\n", "clickhouse.pool.retry.deadline"),
        ("this is not toml", "not valid TOML"),
        ("[[pipelines]]\nname = 'a'\ntable = 't'\nsource = 'file'\n", "needs paths"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        config.load(path, env={})
    assert str(path) in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load("/nonexistent/chworkers.toml", env={})


def test_defaults_file_loads_back_to_the_defaults() -> None:
    text = config.defaults_toml()
    assert "# env: CHWORKERS_CLICKHOUSE_POOL_MAX_CONNECTIONS" in text
    loaded = config.load(data=tomllib.loads(text), env={})
    assert loaded.settings == config.load(data={}, env={}).settings


def test_docs_reference_is_generated_from_the_declarations() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == config.reference_markdown(), (
        "docs/configuration.md is stale: run `chworkers config --reference > docs/configuration.md`"
    )


SHARDED = """
[clickhouse]
shards = [["http://a1:8123", "http://a2:8123"], ["http://b1:8123"]]
shard_weights = [2, 1]

[[pipelines]]
name = "events"
table = "events"
sharding_key = "sipHash64(user_id)"
"""


def test_a_sharded_cluster_and_its_weights(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, SHARDED), env={})
    ch = loaded.settings.clickhouse
    assert ch.shards == (("http://a1:8123", "http://a2:8123"), ("http://b1:8123",))
    assert ch.shard_weights == (2, 1)
    assert loaded.pipelines[0].sharding_key == "sipHash64(user_id)"
    # The environment: shards by ';', replicas by ','.
    env = {"CHWORKERS_CLICKHOUSE_SHARDS": "http://x:8123,http://y:8123;http://z:8123"}
    ch = config.load(write(tmp_path, SHARDED), env=env).settings.clickhouse
    assert ch.shards == (("http://x:8123", "http://y:8123"), ("http://z:8123",))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SHARDED.replace("[clickhouse]", "[clickhouse]\nurl = 'http://c:8123'"), "exclusive"),
        (SHARDED.replace("[clickhouse]", "[clickhouse]\nurl = 'embedded'"), "exclusive"),
        (SHARDED.replace("[2, 1]", "[2, 1, 1]"), "shard_weights: .* 3 weight"),
        (SHARDED.replace("[2, 1]", "[2, 0]"), r"shard_weights\[1\]: weight 0 is not a positive"),
        (SHARDED.replace("http://b1:8123", "http://b1:0"), r"shards\[1\]\[0\]: 'http://b1:0'"),
        (SHARDED.replace("http://b1:8123", "http://b1:8123/db"), "database and options"),
        (SHARDED.replace("[[", "[[ ]]  # ", 1), "non-empty list"),
        (SHARDED.replace('sharding_key = "sipHash64(user_id)"', ""), "has no sharding_key"),
        (SHARDED.replace('"sipHash64(user_id)"', '" "'), "has no sharding_key"),
        ("[clickhouse]\nshard_weights = [1]\n", "clickhouse.shards is not"),
        (
            SHARDED.replace("sipHash64(user_id)", "murmurHash3_64(user_id)"),
            "murmurHash3_64 is not supported",
        ),
        (SHARDED.replace("sipHash64(user_id)", "siphash64(user_id)"), "ClickHouse spells it"),
        (
            SHARDED.replace(
                'table = "events"',
                'table = "events"\nsource = "file"\npaths = ["x.parquet"]\nformat = "Parquet"',
            ),
            "sharding_key is not supported with format = 'Parquet'",
        ),
        (
            SHARDED.replace('sharding_key = "sipHash64(user_id)"', "")
            + 'source = "nats"\n[pipelines.nats]\nstream = "s"\n',
            "has no sharding_key",
        ),
    ],
)
def test_sharding_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, text), env={})


@pytest.mark.parametrize("broker", ["redis", "nats"])
def test_a_broker_pipeline_feeds_a_sharded_cluster_by_key(tmp_path: Path, broker: str) -> None:
    text = SHARDED + f'source = "{broker}"\n[pipelines.{broker}]\nstream = "s"\n'
    loaded = config.load(write(tmp_path, text), env={})
    assert loaded.pipelines[0].source == broker
    assert loaded.pipelines[0].sharding_key == "sipHash64(user_id)"


def test_one_shard_needs_no_sharding_key(tmp_path: Path) -> None:
    text = SHARDED.replace(', ["http://b1:8123"]', "").replace("[2, 1]", "[1]")
    loaded = config.load(write(tmp_path, text.replace('sharding_key = "sipHash64(user_id)"', "")))
    assert len(loaded.settings.clickhouse.shards) == 1
    assert loaded.pipelines[0].sharding_key is None
