"""Epoch numbers in JSON records (chworkers/clickhouse/epochs.py), without a server."""

from __future__ import annotations

import pytest

from chworkers.clickhouse.epochs import is_timestamp_type, rewrite, to_iso


@pytest.mark.parametrize(
    ("number", "iso"),
    [
        ("1796119200", "2026-12-01T10:00:00Z"),
        ("1796119200123", "2026-12-01T10:00:00.123000000Z"),
        ("1796119200123456", "2026-12-01T10:00:00.123456000Z"),
        ("1796119200123456789", "2026-12-01T10:00:00.123456789Z"),
        ("1796119200.000000001", "2026-12-01T10:00:00.000000001Z"),  # no float rounding
        ("1.7961192e9", "2026-12-01T10:00:00Z"),
        ("0", "1970-01-01T00:00:00Z"),
        ("-1.5", "1969-12-31T23:59:58.500000000Z"),
        ("99999999999", "5138-11-16T09:46:39Z"),  # below 10^11: seconds
        ("100000000000", "1973-03-03T09:46:40Z"),  # 10^11 and up: milliseconds
        ("1e30", None),  # beyond the year 9999
    ],
)
def test_magnitude_tells_the_unit(number: str, iso: str | None) -> None:
    assert to_iso(number) == iso


def test_only_top_level_numbers_of_timestamp_columns_change() -> None:
    data = (
        b'{"ts": 1796119200123 , "n": 5, "o": {"ts": 7}, "s": "\\u00e9"}\n'
        b'{"ts":"2026-12-01T10:00:00Z","n":1796119200}\n'
        b'not json {"ts":1}\n'
        b'{"other":1,"ts":null}'
    )
    assert rewrite(data, ["ts"]) == (
        b'{"ts": "2026-12-01T10:00:00.123000000Z" , "n": 5, "o": {"ts": 7}, "s": "\\u00e9"}\n'
        + data.split(b"\n", 1)[1]
    )


def test_a_batch_without_numbers_is_the_same_object() -> None:
    data = b'{"ts":"2026-12-01T10:00:00Z"}\n' * 3
    assert rewrite(data, ["ts"]) is data


@pytest.mark.parametrize(
    ("type_name", "yes"),
    [
        ("DateTime", True),
        ("DateTime('UTC')", True),
        ("DateTime64(3, 'Asia/Tokyo')", True),
        ("Nullable(DateTime64(9))", True),
        ("Date", False),
        ("Array(DateTime)", False),
        ("String", False),
    ],
)
def test_timestamp_types(type_name: str, yes: bool) -> None:
    assert is_timestamp_type(type_name) is yes


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # after a nested value: the top level is walked
        (b'{"o":{"ts":1},"ts":2}\n', b'{"o":{"ts":1},"ts":"1970-01-01T00:00:02Z"}\n'),
        (b'{"a":[1],"ts":2}', b'{"a":[1],"ts":"1970-01-01T00:00:02Z"}'),
        # only a nested one is a number
        (b'{"ts":"x","o":{"ts":1}}', b'{"ts":"x","o":{"ts":1}}'),
        (b'{"o":{"ts":1}}', b'{"o":{"ts":1}}'),
        # the key's text inside a string is no key
        (b'{"m":"\\"ts\\": 5","ts":3}', b'{"m":"\\"ts\\": 5","ts":"1970-01-01T00:00:03Z"}'),
        # a key name written with escapes is not looked for (no producer writes one)
        (b'{"t\\u0073":4}', b'{"t\\u0073":4}'),
        # twice at the top level: each one
        (b'{"ts":1,"ts":2}', b'{"ts":"1970-01-01T00:00:01Z","ts":"1970-01-01T00:00:02Z"}'),
        (b'  {"ts": 5e0 }\r\n', b'  {"ts": "1970-01-01T00:00:05Z" }\r\n'),
    ],
)
def test_top_level_is_told_apart(line: bytes, expected: bytes) -> None:
    assert rewrite(line, ["ts"]) == expected


def test_whole_seconds_in_a_datetime_column_go_as_they_are() -> None:
    """Plain DateTime reads a JSON number as whole seconds, as meant: a batch of them is
    not rewritten (the same object), while milliseconds, fractions and negative numbers
    there, and any number in a DateTime64 column, still are."""
    data = b'{"ts":1796119200,"n":1}\n{"ts":86399,"n":2}\n'
    assert rewrite(data, ["ts"], seconds={"ts"}) is data
    assert rewrite(data, ["ts"]) == (
        b'{"ts":"2026-12-01T10:00:00Z","n":1}\n{"ts":"1970-01-01T23:59:59Z","n":2}\n'
    )
    for number, iso in (
        (b"1796119200123", b"2026-12-01T10:00:00.123000000Z"),
        (b"1796119200.5", b"2026-12-01T10:00:00.500000000Z"),
        (b"1.7961192e9", b"2026-12-01T10:00:00Z"),
        (b"-1", b"1969-12-31T23:59:59Z"),
    ):
        line = b'{"ts":' + number + b"}\n"
        assert rewrite(line, ["ts"], seconds={"ts"}) == b'{"ts":"' + iso + b'"}\n'
    both = b'{"ts":1796119200,"t64":1796119200}\n'
    assert rewrite(both, ["ts", "t64"], seconds={"ts"}) == (
        b'{"ts":"2026-12-01T10:00:00Z","t64":"2026-12-01T10:00:00Z"}\n'
    )


def test_a_view_is_scanned_in_place_and_copied_only_when_rewritten() -> None:
    """A worker's batch is a view of its memory file: a batch without such numbers goes
    as that view (no copy); one with some is rewritten as bytes would be."""
    plain = b'{"ts":1796119200,"n":1}\n' * 50
    view = memoryview(plain)
    assert rewrite(view, ["ts"], {"ts"}) is view
    millis = plain + b'{"ts":1796119200123,"n":2}\n'
    assert rewrite(memoryview(millis), ["ts"], {"ts"}) == rewrite(millis, ["ts"], {"ts"})
