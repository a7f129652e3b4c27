"""Field mapping: rename JSON fields to the table's column names before batching.

Configured per pipeline (``rename = ["userId=user_id", "ts=timestamp"]``) and applied
before a record is spooled, so the spooled bytes are what is inserted and a replay is
byte-identical. Only JSONEachRow records are mapped; a line that is not a JSON object is
passed on unchanged, so that ClickHouse rejects it and it reaches the dead letters with
ClickHouse's reason, exactly as without a mapping.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from chworkers.errors import ConfigError


class FieldMapper:
    """Renames top-level fields of JSONEachRow records."""

    def __init__(self, renames: Mapping[str, str]) -> None:
        self.renames = dict(renames)

    @classmethod
    def parse(cls, items: Iterable[str], *, where: str = "rename") -> FieldMapper | None:
        """From ``"source=column"`` items; ``None`` when there is nothing to rename."""
        renames: dict[str, str] = {}
        for item in items:
            source, sep, column = (part.strip() for part in item.partition("="))
            if not sep or not source or not column:
                raise ConfigError(
                    f"{where}: {item!r} is not 'source_field=column'",
                    key="rename",
                    value=item,
                    expected="'source_field=column'",
                )
            if source in renames:
                raise ConfigError(
                    f"{where}: field {source!r} is renamed twice",
                    key="rename",
                    value=item,
                    expected="each source field once",
                )
            renames[source] = column
        return cls(renames) if renames else None

    def __call__(self, records: bytes) -> bytes:
        out: list[bytes] = []
        for line in records.splitlines(keepends=True):
            out.append(self._map_line(line))
        return b"".join(out)

    def _map_line(self, line: bytes) -> bytes:
        if not line.strip():
            return line
        try:
            obj = json.loads(line)
        except ValueError:
            return line  # ClickHouse will reject it, with its own reason
        if not isinstance(obj, dict) or not self.renames.keys() & obj.keys():
            return line
        mapped = {self.renames.get(k, k): v for k, v in obj.items()}
        return json.dumps(mapped, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
