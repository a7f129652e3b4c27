from __future__ import annotations

import json

import pytest

from chworkers.daemon.mapping import FieldMapper
from chworkers.daemon.pipelinelist import build_pipelines
from chworkers.errors import ConfigError


def test_renames_fields_and_keeps_the_rest() -> None:
    mapper = FieldMapper.parse(["userId=user_id", "ts=timestamp"])
    assert mapper is not None
    out = mapper(b'{"userId":1,"ts":5,"other":"x"}\n\n{"nothing":"to do"}\n')
    first, blank, second = out.splitlines(keepends=True)
    assert json.loads(first) == {"user_id": 1, "timestamp": 5, "other": "x"}
    assert blank == b"\n"
    assert second == b'{"nothing":"to do"}\n'  # untouched bytes when nothing matches


def test_lines_that_are_not_objects_pass_unchanged_for_clickhouse_to_reject() -> None:
    mapper = FieldMapper.parse(["a=b"])
    assert mapper is not None
    assert mapper(b'{"a":\n[1]\n') == b'{"a":\n[1]\n'


def test_unicode_survives() -> None:
    mapper = FieldMapper.parse(["name=who"])
    assert mapper is not None
    assert json.loads(mapper('{"name":"Zoë ✓"}\n'.encode())) == {"who": "Zoë ✓"}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"rename": ["nocolumn"]}, "not 'source_field=column'"),
        ({"rename": ["a=b", "a=c"]}, "renamed twice"),
        ({"rename": ["a=b"], "format": "CSV"}, "JSONEachRow records, not CSV"),
    ],
)
def test_bad_rename_settings(item: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_pipelines([{"name": "p", "table": "t", **item}], env={}, source="f.toml")


def test_no_rename_means_no_mapper() -> None:
    (p,) = build_pipelines([{"name": "p", "table": "t"}], env={}, source="f.toml")
    assert p.mapper is None
