"""The asynchronous insert queue's block ids: one store with chDB's, kept with the table.

Through clickhouse-connect against the embedded endpoint: an asynchronous entry carrying
a synchronous insert's token is a duplicate (ClickHouse 26.x names both with the same
unified block id); the ids live in the table's own data directory, so ``RENAME`` keeps
them, ``TRUNCATE`` resets them and ``DROP`` removes them. And, on files: a flush a crash
left pending is resolved from chDB's own log; session 7's files move into their tables'
directories at start, those of dropped tables are deleted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chclients import unique_name
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from chworkers.embedded import blockids
from chworkers.embedded.asyncdedup import FILE_NAME, AsyncDedup

pytestmark = pytest.mark.timeout(120)

FAST = {
    "async_insert": 1,
    "async_insert_use_adaptive_busy_timeout": 0,
    "async_insert_busy_timeout_max_ms": 20,
}


def make_table(client: Client, name: str | None = None) -> str:
    name = name or unique_name("ad")
    client.command(
        f"CREATE TABLE {name} (k UInt64) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    return name


def async_insert(client: Client, table: str, k: int, token: str) -> int:
    settings = {**FAST, "insert_deduplication_token": token}
    summary = client.raw_insert(
        table, None, b'{"k":%d}\n' % k, settings=settings, fmt="JSONEachRow"
    )
    return int(summary.written_rows)


def count(client: Client, table: str) -> int:
    return int(client.command(f"SELECT count() FROM {table}"))


def data_dir(client: Client, table: str) -> Path:
    return Path(
        client.command(
            "SELECT data_paths[1] FROM system.tables WHERE database = currentDatabase() "
            f"AND name = '{table}'"
        )
    )


@pytest.mark.parametrize("text", ["", "abc", "1234567", "12345678", "123456789", "é" * 11])
def test_sip_hash128_is_clickhouses(ch_client: Client, text: str) -> None:
    raw = bytes.fromhex(ch_client.command(f"SELECT hex(sipHash128('{text}'))"))
    lo, hi = blockids.sip_hash128(text.encode())
    assert (lo, hi) == (int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little"))


def test_the_token_hash_is_the_one_chdb_logs_for_a_synchronous_insert(ch_client: Client) -> None:
    table = make_table(ch_client)
    ch_client.insert(table, [[1]], settings={"insert_deduplication_token": "sync-1"})
    logged = data_dir(ch_client, table) / "deduplication_logs"
    text = "".join(p.read_text() for p in logged.glob("*.txt"))
    assert f"all_{blockids.token_hash('sync-1')}" in text
    assert blockids.token_hash("sync-1") in blockids.live_hashes(logged.parent, 100)


def test_a_synchronous_insert_s_token_drops_an_asynchronous_entry(ch_client: Client) -> None:
    table = make_table(ch_client)
    ch_client.insert(table, [[1]], settings={"insert_deduplication_token": "t1"})
    assert async_insert(ch_client, table, 1, "t1") == 0  # ClickHouse: one block-id store
    assert async_insert(ch_client, table, 2, "t2") == 1
    assert count(ch_client, table) == 2
    # A token whose part was dropped since is free again, as in chDB's own log.
    ch_client.insert(table, [[3]], settings={"insert_deduplication_token": "t3"})
    ch_client.command(f"TRUNCATE TABLE {table}")
    assert async_insert(ch_client, table, 3, "t3") == 1


def test_an_asynchronous_entry_s_token_drops_a_synchronous_insert(ch_client: Client) -> None:
    table = make_table(ch_client)
    assert async_insert(ch_client, table, 1, "a1") == 1
    # clickhouse-connect's insert (Native, lz4) and a raw JSONEachRow one, same token.
    summary = ch_client.insert(table, [[5]], settings={"insert_deduplication_token": "a1"})
    assert int(summary.written_rows) == 1  # parsed, as chDB answers its own duplicates
    ch_client.raw_insert(
        table, None, b'{"k":6}\n', settings={"insert_deduplication_token": "a1"}, fmt="JSONEachRow"
    )
    assert count(ch_client, table) == 1
    with pytest.raises(DatabaseError):  # still parsed: bad data is an error
        ch_client.raw_insert(
            table,
            None,
            b'{"k":"x"}\n',
            settings={"insert_deduplication_token": "a1"},
            fmt="JSONEachRow",
        )
    # Queued, but too large for the queue: written synchronously, and dropped the same.
    big = {**FAST, "insert_deduplication_token": "a1", "async_insert_max_data_size": 4}
    ch_client.raw_insert(table, None, b'{"k":9}\n', settings=big, fmt="JSONEachRow")
    assert count(ch_client, table) == 1
    off = {"insert_deduplication_token": "a1", "deduplicate_insert": "disable"}
    ch_client.insert(table, [[7]], settings=off)  # deduplication off: written
    ch_client.insert(table, [[8]], settings={"insert_deduplication_token": "a2"})
    assert sorted(r[0] for r in ch_client.query(f"SELECT k FROM {table}").result_rows) == [
        1,
        7,
        8,
    ]


def test_the_ids_go_with_the_table(ch_client: Client) -> None:
    table = make_table(ch_client)
    assert async_insert(ch_client, table, 1, "a") == 1
    where = data_dir(ch_client, table)
    assert (where / FILE_NAME).exists()
    renamed = unique_name("ad")
    ch_client.command(f"RENAME TABLE {table} TO {renamed}")
    assert async_insert(ch_client, renamed, 1, "a") == 0  # RENAME keeps them
    ch_client.command(f"TRUNCATE TABLE {renamed}")
    assert not (where / FILE_NAME).exists()
    assert async_insert(ch_client, renamed, 1, "a") == 1  # TRUNCATE resets them
    assert async_insert(ch_client, renamed, 1, "a") == 0
    ch_client.command(f"DROP TABLE {renamed} SYNC")
    assert not where.exists()  # DROP removes them with the table's directory
    make_table(ch_client, renamed)
    assert async_insert(ch_client, renamed, 1, "a") == 1


def test_a_dropped_database_takes_its_tables_ids(ch_client: Client) -> None:
    db = unique_name("add")
    ch_client.command(f"CREATE DATABASE {db}")
    table = make_table(ch_client, f"{db}.t")
    assert async_insert(ch_client, table, 1, "a") == 1
    where = Path(
        ch_client.command(
            f"SELECT data_paths[1] FROM system.tables WHERE database = '{db}' AND name = 't'"
        )
    )
    assert (where / FILE_NAME).exists()
    ch_client.command(f"DROP DATABASE {db} SYNC")
    assert not where.exists()


def chdb_log(table_dir: Path, *lines: str) -> None:
    (table_dir / "deduplication_logs").mkdir(parents=True)
    text = "".join(f"{line}\n" for line in lines)
    (table_dir / "deduplication_logs" / "deduplication_log_1.txt").write_text(text)


def test_a_pending_flush_counts_if_and_only_if_chdb_logged_its_part(tmp_path: Path) -> None:
    table_dir = tmp_path / "store" / "abc" / "table"
    written, lost = blockids.token_hash("flush-1"), blockids.token_hash("flush-2")
    chdb_log(table_dir, f"1\tall_1_1_0\tall_{written}")
    (table_dir / FILE_NAME).write_text(f"old\nP\t{written}\tw1\nP\t{written}\tw2\nP\t{lost}\tl1\n")
    dedup = AsyncDedup(tmp_path / "fallback")
    storage = str(table_dir) + "/"
    assert [dedup.seen(storage, 100, b) for b in ("old", "w1", "w2", "l1")] == [
        True,
        True,
        True,
        False,
    ]
    # Resolved once: the file says what counts, each id still marked with its flush.
    assert (table_dir / FILE_NAME).read_text() == (
        f"old\nP\t{written}\tw1\nP\t{written}\tw2\nC\t{written}\n"
    )


def test_a_dropped_part_s_token_is_not_live(tmp_path: Path) -> None:
    table_dir = tmp_path / "t"
    a, b = blockids.token_hash("a"), blockids.token_hash("b")
    chdb_log(
        table_dir, f"1\tall_1_1_0\tall_{a}", f"1\tall_2_2_0\tall_{b}", f"2\tall_1_1_0\tall_{a}"
    )
    assert blockids.live_hashes(table_dir, 100) == {b}
    assert blockids.live_hashes(table_dir, 1) == {b}
    chdb_log(tmp_path / "u", f"1\tall_1_1_0\tall_{a}", f"1\tall_2_2_0\tall_{b}")
    assert blockids.live_hashes(tmp_path / "u", 1) == {b}  # the window


def test_session_7_files_move_into_their_tables_or_go(tmp_path: Path) -> None:
    store = tmp_path / "store"
    alive = "0a4b2874-476a-47c3-9e6b-d50dc857f53f"
    dropped = "b945a412-3399-4eec-bcd8-d442cd74c203"
    (store / alive[:3] / alive).mkdir(parents=True)
    old = tmp_path / "chworkers_async_dedup"
    old.mkdir()
    for name in (alive, dropped, "not_a_uuid"):
        (old / f"{name}.log").write_text("id\n")
    assert AsyncDedup(old).migrate(store) == 1
    assert (store / alive[:3] / alive / FILE_NAME).read_text() == "id\n"
    assert sorted(p.name for p in old.iterdir()) == ["not_a_uuid.log"]


def test_live_hashes_read_incrementally_match_a_whole_read(tmp_path: Path) -> None:
    logs = tmp_path / "deduplication_logs"
    logs.mkdir()
    first = logs / "deduplication_log_1.txt"

    def whole() -> set[str]:
        return blockids._live_from(blockids._records(tmp_path), 3)

    first.write_text("1\tall_1_1_0\tall_1_1\n1\tall_2_2_0\tall_2_2\n")
    assert blockids.live_hashes(tmp_path, 3) == whole() == {"1_1", "2_2"}
    with open(first, "a") as out:  # appended, the last line still being written
        out.write("2\tall_1_1_0\tall_1_1\n1\tall_3_3_0\tall_3_")
    assert blockids.live_hashes(tmp_path, 3) == {"2_2"}
    with open(first, "a") as out:
        out.write("3\n")
    assert blockids.live_hashes(tmp_path, 3) == whole() == {"2_2", "3_3"}
    # Rotated: a new file, then the old one deleted.
    (logs / "deduplication_log_2.txt").write_text("1\tall_4_4_0\tall_4_4\n1\tall_5_5_0\tall_5_5\n")
    assert blockids.live_hashes(tmp_path, 3) == whole() == {"3_3", "4_4", "5_5"}
    first.unlink()
    assert blockids.live_hashes(tmp_path, 3) == whole() == {"4_4", "5_5"}
    # Rewritten shorter (the repair at start): read again whole.
    (logs / "deduplication_log_2.txt").write_text("1\tall_4_4_0\tall_4_4\n")
    assert blockids.live_hashes(tmp_path, 3) == whole() == {"4_4"}
