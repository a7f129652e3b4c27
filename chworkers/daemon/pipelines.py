"""Pipeline settings: where records come from and which table they go to.

A daemon runs one or more pipelines, each ``[[pipelines]]`` in the config file::

    [[pipelines]]
    name = "app-logs"
    source = "file"                  # stdin | file | http | generator
    paths = ["/var/log/app/*.json"]
    follow = true
    table = "events"
    format = "JSONEachRow"
    max_rows = 100000
    max_delay = "1s"
    create = "ts DateTime, user_id UInt64, event String"   # optional

Declared with :mod:`chworkers.settings`, so every key is validated, documented and
listed by ``chworkers config --defaults`` from this one declaration. The array of them
is :mod:`chworkers.daemon.pipelinelist`'s.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from typing import TYPE_CHECKING, Any, Literal

from chworkers.clickhouse.insertmode import insert_settings
from chworkers.clickhouse.schema import Evolve
from chworkers.daemon.batcher import BatchLimits
from chworkers.daemon.brokers.options import NatsSourceSettings, RedisSourceSettings
from chworkers.daemon.filechunks import COLUMNAR_FORMATS
from chworkers.daemon.framing import FORMATS
from chworkers.daemon.mapping import FieldMapper
from chworkers.errors import ConfigError
from chworkers.settings import same_as, section, setting, validate
from chworkers.workers.options import TableLimit

if TYPE_CHECKING:
    # Imported where a key is parsed: it brings numpy, which a daemon without shards
    # should not load at every start (docs/daemon.md, "Start-up").
    from chworkers.clickhouse.sharding import ShardingKey

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
#: A whole statement or an engine clause where ``create`` takes the columns only.
_STATEMENT = re.compile(r"^CREATE\s+(TABLE|OR\s+REPLACE|TEMPORARY)\b|\bENGINE\s*=", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """One pipeline: a source, batching limits and a target table."""

    name: str = setting("", "Unique name; checkpoints and metrics use it.")
    source: Literal["stdin", "file", "http", "generator", "redis", "nats"] = setting(
        "stdin", "Where records come from."
    )
    table: str = setting("", "Target table, 'table' or 'database.table'.")
    format: str = setting(
        "JSONEachRow",
        "Input format: JSONEachRow, CSV, CSVWithNames, TSV or TSVWithNames; for a file "
        "source also whole Parquet, Arrow, ArrowStream or Native files (docs/daemon.md).",
    )
    paths: tuple[str, ...] = setting((), "file source: paths or glob patterns to read.")
    follow: bool = setting(False, "file source: keep tailing files (handles rotation).")
    spool_data: Literal["reference", "copy"] = setting(
        "reference",
        "file source read once (follow = false), JSONEachRow, CSV or TSV: spool where each "
        "batch's records are in the file, which the spool keeps by a hard link (saves a "
        "copy per batch; the file may be removed or renamed once read, but not truncated or "
        "rewritten in place while its batches wait by reference; a batch that has to wait "
        "is copied), or 'copy' them into the spool.",
    )
    poll_interval: float = setting(
        0.25, "file source: how often to look for new data.", unit="seconds", minimum=0.01
    )
    forget_after: float = setting(
        3600.0,
        "file source: forget the saved position of a file gone this long (deleted, or "
        "renamed to a name the paths do not match), so the positions file does not grow "
        "with every rotated file (0: keep them all).",
        unit="seconds",
        minimum=0,
    )
    max_open_files: int = setting(
        256,
        "file source with follow: most files held open at once; the others are closed "
        "and reopened where they were when they grow (read once: at most 32, or this).",
        minimum=1,
    )
    close_idle_after: float = setting(
        300.0,
        "file source with follow: close a file that has not grown for this long (reopened "
        "when it grows; 0: only to keep within max_open_files).",
        unit="seconds",
        minimum=0,
    )
    settle: float = setting(
        1.0,
        "file source of Parquet, Arrow or Native files: read a file once its size and "
        "modification time have not changed for this long (files named '.*' are skipped: "
        "write '.name.parquet', then rename it into place).",
        unit="seconds",
        minimum=0,
    )
    generator_count: int = setting(
        100_000, "generator source: rows to make (0: until stopped).", minimum=0
    )
    generator_rate: float = setting(
        0.0, "generator source: rows per second (0: as fast as possible).", minimum=0
    )
    redis: RedisSourceSettings = section(
        RedisSourceSettings,
        "redis source: the stream, its consumer group and the connection (docs/brokers.md).",
    )
    nats: NatsSourceSettings = section(
        NatsSourceSettings,
        "nats source: the JetStream stream, its durable consumer and the connection "
        "(docs/brokers.md).",
    )
    max_rows: int = same_as(BatchLimits, "max_rows")
    max_bytes: int = same_as(BatchLimits, "max_bytes")
    max_delay: float = same_as(BatchLimits, "max_delay")
    max_record_bytes: int = setting(
        16 * 1024 * 1024,
        "Longest record of a file, stdin or broker source (up to this much is held while "
        "one is read); a longer one is skipped to its end, with a warning (a broker "
        "message holding one is dead-lettered). Lowered to what the spool can ever hold "
        "when that is less.",
        unit="bytes",
        minimum=1024,
    )
    unknown_fields: Literal["ignore", "reject"] = setting(
        "ignore",
        "Fields the table lacks: ignore them, or reject the row (dead letter); with "
        "schema = 'evolve', they are added as columns instead.",
    )
    schema: Literal["fixed", "evolve"] = setting(
        "fixed",
        "JSONEachRow: 'evolve' adds a field the table lacks as a column (ALTER TABLE ... "
        "ADD COLUMN IF NOT EXISTS, its type inferred by ClickHouse from the records that "
        "carry it) and inserts the rows; 'fixed' leaves the table as it is.",
    )
    evolve_nullable: bool = setting(
        True,
        "schema = 'evolve': make added columns Nullable (rows without the field hold NULL; "
        "false: the type's default).",
    )
    timestamps: Literal["best_effort", "as_sent"] = setting(
        "best_effort",
        "DateTime/DateTime64 columns: read ISO 8601 with a zone and epoch seconds, "
        "milliseconds, microseconds or nanoseconds (date_time_input_format = best_effort; "
        "JSON numbers by their magnitude), or as_sent: the server's own settings decide.",
    )
    create: str | None = setting(
        None,
        "Create the table if missing, with these columns ('ts DateTime, user String'): the "
        "columns only, not a CREATE statement; the engine goes in engine.",
    )
    engine: str = setting(
        "MergeTree ORDER BY tuple()",
        "Engine clause for a created table; plain MergeTree gets "
        "non_replicated_deduplication_window so replays deduplicate.",
    )
    rename: tuple[str, ...] = setting(
        (),
        "JSONEachRow: rename fields to column names before batching, as "
        "'source_field=column' items.",
    )
    insert_settings: tuple[str, ...] = setting(
        (), "Extra ClickHouse settings for the inserts, as 'name=value' items."
    )
    async_insert: bool = setting(
        False,
        "Send batches as asynchronous inserts (async_insert=1, wait_for_async_insert=1, "
        "async_insert_deduplicate=1): ClickHouse batches them with other clients' before "
        "writing a part; for many daemons or pipelines sending small batches to one table.",
    )
    sharding_key: str | None = setting(
        None,
        "A sharded cluster ([clickhouse] shards): the expression over the record's fields "
        "that picks each row's shard exactly as a Distributed table with this sharding key "
        "would ('sipHash64(user_id)', 'user_id'), or 'random' (each batch whole to one "
        "shard, by weight). Required with more than one shard (docs/sharding.md).",
    )
    max_concurrent_inserts: int | None = same_as(TableLimit, "max_concurrent_inserts")
    max_inserts_per_second: float | None = same_as(TableLimit, "max_inserts_per_second")

    def __post_init__(self) -> None:
        validate(self, source=f"pipeline {self.name or '?'}")
        where = f"pipeline {self.name!r}"
        if not self.name:
            raise ConfigError(f"{where}: name is required", key="name", expected="a name")
        if not _IDENT.match(self.table):
            raise ConfigError(
                f"{where}: table = {self.table!r} is invalid: expected a table name "
                "('events' or 'db.events')",
                key="table",
                value=self.table,
                expected="a table name",
            )
        if self.format not in FORMATS and self.format not in COLUMNAR_FORMATS:
            formats = ", ".join((*FORMATS, *COLUMNAR_FORMATS))
            raise ConfigError(
                f"{where}: format = {self.format!r} is invalid: expected one of {formats}",
                key="format",
                value=self.format,
                expected="one of " + formats,
            )
        if self.columnar:
            self._check_columnar(where)
        if self.source == "file" and not self.paths:
            raise ConfigError(
                f"{where}: a file source needs paths", key="paths", expected="paths or globs"
            )
        if self.source in ("redis", "nats"):
            self._check_broker(where)
        if self.rename and self.format != "JSONEachRow":
            raise ConfigError(
                f"{where}: rename works on JSONEachRow records, not {self.format}",
                key="rename",
                value=self.rename,
                expected="format = 'JSONEachRow'",
            )
        FieldMapper.parse(self.rename, where=where)
        if self.schema == "evolve" and self.format != "JSONEachRow":
            raise ConfigError(
                f"{where}: schema = 'evolve' works on JSONEachRow records, not {self.format}",
                key="schema",
                value=self.schema,
                expected="format = 'JSONEachRow' (or schema = 'fixed')",
            )
        if self.sharding_key is not None:
            self._check_sharding_key(where)
        if self.create is not None:
            self._check_create(where)
        for item in self.insert_settings:
            if "=" not in item:
                raise ConfigError(
                    f"{where}: insert_settings item {item!r} is not 'name=value'",
                    key="insert_settings",
                    value=item,
                    expected="'name=value'",
                )
        try:  # what every insert will carry: refused now rather than at each batch
            insert_settings(self.settings, token="", table=self.table)
        except ConfigError as exc:
            raise ConfigError(
                f"{where}: {exc}", key="insert_settings", value=exc.value, expected=exc.expected
            ) from None

    def _check_create(self, where: str) -> None:
        # A whole statement here would be wrapped in our own and refused by ClickHouse at
        # every attempt, the batches waiting in the spool: say so now, at the config.
        text = self.create.strip() if self.create else ""
        if not text or _STATEMENT.search(text):
            raise ConfigError(
                f"{where}: create = {self.create!r} must be the table's columns only "
                "('ts DateTime, user String'); the engine goes in engine = "
                f"(now {self.engine!r}) and the daemon writes the CREATE TABLE statement",
                key="create",
                value=self.create,
                expected="a column list such as 'ts DateTime, user String'",
            )

    @property
    def columnar(self) -> bool:
        """Whether the pipeline reads whole columnar files (Parquet, Arrow, Native)."""
        return self.format in COLUMNAR_FORMATS

    def _check_columnar(self, where: str) -> None:
        if self.format != "Native" and importlib.util.find_spec("pyarrow") is None:
            # Else every file would be "unreadable" and dead-lettered.
            raise ConfigError(
                f"{where}: format = {self.format!r} needs pyarrow: "
                "pip install 'chworkers[columnar]'",
                key="format",
                value=self.format,
                expected="pyarrow installed (or format = 'Native')",
            )
        if self.source != "file":
            raise ConfigError(
                f"{where}: format = {self.format!r} is read from whole files: it needs "
                f"source = 'file', not {self.source!r}",
                key="source",
                value=self.source,
                expected="'file'",
            )
        if self.sharding_key is not None:
            # A chunk would have to be decoded, split by row and encoded again per shard;
            # route such files with one pipeline per shard's files instead.
            raise ConfigError(
                f"{where}: sharding_key is not supported with format = {self.format!r} "
                "(whole columnar files are not split by row); give each shard its own "
                "files, or insert into a Distributed table",
                key="sharding_key",
                value=self.sharding_key,
                expected="no sharding_key with a columnar format",
            )

    def _check_sharding_key(self, where: str) -> None:
        from chworkers.clickhouse.sharding import ShardingKey

        try:
            key = ShardingKey.parse(self.sharding_key or "")
        except ConfigError as exc:
            raise ConfigError(
                f"{where}: {exc}", key="sharding_key", value=exc.value, expected=exc.expected
            ) from None
        del key  # parsed again where it is used: a frozen setting holds the text

    @property
    def key(self) -> ShardingKey | None:
        """The parsed ``sharding_key`` (None when the pipeline has none)."""
        from chworkers.clickhouse.sharding import ShardingKey

        return None if self.sharding_key is None else ShardingKey.parse(self.sharding_key)

    def _check_broker(self, where: str) -> None:
        stream = self.redis.stream if self.source == "redis" else self.nats.stream
        if not stream:
            raise ConfigError(
                f"{where}: a {self.source} source needs {self.source}.stream",
                key=f"{self.source}.stream",
                expected="the stream's name",
            )
        if self.source == "nats" and self.max_delay * 2 > self.nats.ack_wait:
            # A batch's manifest must be written while its messages are surely still this
            # daemon's (docs/brokers.md, NATS JetStream).
            raise ConfigError(
                f"{where}: max_delay = {self.max_delay} s must be under half of "
                f"nats.ack_wait = {self.nats.ack_wait} s",
                key="max_delay",
                value=self.max_delay,
                expected=f"at most {self.nats.ack_wait / 2} s",
            )
        if self.format.endswith("WithNames"):
            raise ConfigError(
                f"{where}: format = {self.format!r} is not supported by broker sources "
                "(each entry would need its own header); use JSONEachRow, CSV or TSV",
                key="format",
                value=self.format,
                expected="JSONEachRow, CSV or TSV",
            )

    @property
    def evolve(self) -> Evolve | None:
        """How to add the columns the table lacks (None: ``schema = "fixed"``)."""
        return Evolve(nullable=self.evolve_nullable) if self.schema == "evolve" else None

    @property
    def mapper(self) -> FieldMapper | None:
        """The field mapping to apply to records, if ``rename`` asks for one."""
        return FieldMapper.parse(self.rename, where=f"pipeline {self.name!r}")

    @property
    def limits(self) -> BatchLimits:
        """The pipeline's batch limits: its settings that are :class:`BatchLimits`' (a new
        one is declared there and here with :func:`same_as`, and arrives by itself)."""
        return BatchLimits(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(BatchLimits)}
        )

    @property
    def settings(self) -> dict[str, Any]:
        """ClickHouse settings every insert of this pipeline carries."""
        out: dict[str, Any] = {
            # Evolving, ClickHouse must name the fields the table lacks.
            "input_format_skip_unknown_fields": (
                1 if self.unknown_fields == "ignore" and self.schema != "evolve" else 0
            )
        }
        if self.format == "JSONEachRow":
            # {"n": {"x": [..], "y": [..]}} fills Nested n.x and n.y; without it the field
            # is unknown and, with unknown_fields = "ignore", silently dropped.
            out["input_format_import_nested_json"] = 1
        if self.async_insert:
            out["async_insert"] = 1  # and the rest of its mode: clickhouse/insertmode.py
        if self.timestamps == "best_effort":
            # Servers before 26.5 default to 'basic', which takes neither a zone nor a 'T'.
            out["date_time_input_format"] = "best_effort"
        for item in self.insert_settings:
            key, _, value = item.partition("=")
            out[key.strip()] = value.strip()
        return out

    def create_statement(self) -> str | None:
        """``CREATE TABLE IF NOT EXISTS`` for a declared schema, dedup window included."""
        if not self.create:
            return None
        engine = self.engine.strip()
        if engine.split("(")[0].split()[0] == "MergeTree" and "deduplication_window" not in engine:
            joiner = ", " if " SETTINGS " in f" {engine.upper()} " else " SETTINGS "
            engine += f"{joiner}non_replicated_deduplication_window = 1000"
        return f"CREATE TABLE IF NOT EXISTS {self.table} ({self.create}) ENGINE = {engine}"
