"""``chworkers check``: validate a configuration file, then reach what it names (the
ClickHouse or each replica of each shard, with the pipelines' tables; the files a file
pipeline reads; each broker's stream) and say what was found, one line each. Exits 1
when something ``run`` could not get past is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chworkers.daemon import config as config_module
from chworkers.daemon.clickhousesettings import EMBEDDED
from chworkers.errors import ChworkersError, ConfigError, RetriesExhaustedError
from chworkers.ops import logs
from chworkers.settings import flags, redact_url
from chworkers.wording import plural

if TYPE_CHECKING:
    from chworkers.clickhouse.pool import ConnectionPool
    from chworkers.clickhouse.pooloptions import PoolOptions

__all__ = ["check", "require_pipelines"]

#: Tables ``check`` names before it only counts the rest.
_LISTED = 20


def require_pipelines(cfg: config_module.Config) -> None:
    """A daemon's file must declare what to ingest: `run` and `check` refuse it alike."""
    if not cfg.pipelines:
        raise ConfigError(
            f"{cfg.source}: no [[pipelines]] configured; nothing to ingest "
            "(`chworkers config --defaults` ends with an example; docs/daemon.md has more)",
            key="pipelines",
            expected="at least one [[pipelines]] table",
            source=cfg.source,
        )


def check(args: argparse.Namespace) -> int:
    cfg = config_module.load(args.config, overrides=flags.given(args))
    require_pipelines(cfg)
    logs.configure(cfg.settings.log.level, cfg.settings.log.format)  # as `run` will
    print(f"{args.config}: configuration is valid ({plural(len(cfg.pipelines), 'pipeline')})")
    _check_push_limit(cfg)
    for warning in config_module.ignored_sharding_keys(cfg):
        print(f"{cfg.source}: WARNING: {warning}")
    problems = max(_check_files(cfg), _check_brokers(cfg))
    ch = cfg.settings.clickhouse
    if ch.shards:
        return max(_check_shards(cfg), problems)
    if ch.url != EMBEDDED:
        return max(_check_clickhouse(cfg, ch.connection()), problems)
    from chworkers.daemon.statelock import state_lock
    from chworkers.errors import StateDirInUseError

    with contextlib.ExitStack() as stack:
        data = cfg.state_dir / "clickhouse"
        if data.exists():
            try:
                stack.enter_context(state_lock(cfg.state_dir))
            except StateDirInUseError as exc:
                print(
                    f"clickhouse: the embedded endpoint in {cfg.state_dir} belongs to the "
                    f"running daemon ({exc.holder}); not started again"
                )
                return problems
            log_dir = cfg.state_dir
        else:  # nothing to look at yet: try a scratch one, leave no state behind
            print(f"clickhouse: no embedded data in {cfg.state_dir} yet; trying a scratch one")
            log_dir = data = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="chworkers-check-"))
            )
        # Started as `run` starts it (the same credentials), for as long as the check takes.
        endpoint = ch.embedded_endpoint(data, port=0, log_path=log_dir / "clickhouse.log")
        endpoint.start()
        stack.callback(endpoint.close)
        print(f"clickhouse: the embedded endpoint started (data in {data})")
        return max(_check_clickhouse(cfg, ch.connection(endpoint.url)), problems)


def _check_push_limit(cfg: config_module.Config) -> None:
    """Warn when a push that ``http.max_body_bytes`` lets in could never be spooled: it
    would be read whole, then refused 413 by the spool."""
    from chworkers.daemon.batchfile import batch_overhead
    from chworkers.daemon.spoolroom import capacity_of

    pushed = [p for p in cfg.pipelines if p.source == "http"]
    if not pushed:
        return
    limit = cfg.settings.http.max_body_bytes
    capacity, what = capacity_of(cfg.state_dir / "spool", cfg.settings.spool.max_bytes)
    fits = capacity - max(batch_overhead(p.table, p.name) for p in pushed)
    if limit > fits:
        print(
            f"http: WARNING: max_body_bytes = {limit:,} is more than the spool can ever hold: "
            f"{what} is {capacity:,} bytes, so a push of more than about {max(fits, 0):,} "
            "bytes is read whole, then answered 413; set http.max_body_bytes to at most "
            f"{max(fits, 0):,}, or give the spool more room"
        )


def _check_clickhouse(cfg: config_module.Config, conn: Any) -> int:
    """Reach ClickHouse and say which pipelines' tables exist; 1 when one is missing
    (and `run` would not create it, or ClickHouse refuses the pipeline's `create`)."""
    from chworkers.clickhouse.pool import ConnectionPool
    from chworkers.daemon.tables import refused_create

    pool = ConnectionPool(conn, _one_attempt(cfg.settings.clickhouse.pool))
    missing = 0
    try:
        try:
            version = _version(pool)
        except ChworkersError as exc:
            print(f"clickhouse: {conn.url} DOES NOT ANSWER{_why(exc)}")
            return 1
        print(f"clickhouse: {conn.url} answers (version {version})")
        tables = pool.with_connection(
            lambda c: [row[0] for row in c.query("SHOW TABLES").result_rows]
        )
        shown = ", ".join(tables[:_LISTED]) + (
            f" and {len(tables) - _LISTED} more" if len(tables) > _LISTED else ""
        )
        print(f"clickhouse: {len(tables)} table(s) in {conn.database or 'default'}: {shown or '-'}")
        makers = _makers(cfg)
        for p in cfg.pipelines:
            maker = makers.get(p.table)
            if _exists(pool, p.table):
                state = "exists"
                for view, target, engine in pool.with_connection(
                    lambda c, t=p.table: _doubling_views(c, t)  # type: ignore[misc]
                ):
                    print(
                        f"pipeline {p.name}: materialized view {view} writes to {target} "
                        f"({engine}), which does not deduplicate: a replayed batch adds its "
                        "rows there again (create it with SETTINGS "
                        "non_replicated_deduplication_window = 1000)"
                    )
            elif maker is not None and (
                refused := pool.with_connection(
                    lambda c, m=maker: refused_create(c, m.create, m.create_statement())  # type: ignore[misc]
                )
            ):
                state = f"MISSING, and ClickHouse refuses {_whose(maker, p)}`create`: {refused}"
                missing += 1
            elif maker is not None:
                state = f"missing; `run` creates it{_by(maker, p)}"
            else:
                state = "MISSING (create it, or declare `create` in the pipeline)"
                missing += 1
            print(f"pipeline {p.name}: table {p.table} {state}")
    finally:
        pool.close()
    return 1 if missing else 0


def _makers(cfg: config_module.Config) -> dict[str, Any]:
    """The pipeline whose `create` makes each table, as `run` picks it (the last one
    that declares one): a pipeline without `create` may feed a table another creates."""
    return {p.table: p for p in cfg.pipelines if p.create}


def _whose(maker: Any, pipeline: Any) -> str:
    return "its " if maker is pipeline else f"pipeline {maker.name}'s "


def _by(maker: Any, pipeline: Any) -> str:
    return "" if maker is pipeline else f" (pipeline {maker.name}'s `create`)"


def _one_attempt(options: PoolOptions) -> PoolOptions:
    """The pool's options for `check`: no connection opened ahead, one attempt per
    request (say what is wrong, do not wait for it to pass)."""
    return dataclasses.replace(
        options, min_connections=0, retry=dataclasses.replace(options.retry, max_attempts=1)
    )


def _version(pool: ConnectionPool) -> str:
    """The first request to a ClickHouse: its version (raises what keeps it from answering)."""
    with _said_by_check():
        return str(pool.with_connection(lambda c: c.command("SELECT version()")))


def _exists(pool: ConnectionPool, table: str) -> bool:
    answer = pool.with_connection(lambda c: c.command(f"EXISTS TABLE {table}"))
    return bool(int(str(answer)))  # 0 or 1


@contextlib.contextmanager
def _said_by_check() -> Iterator[None]:
    """Around the first request to a ClickHouse: the pool's warnings about its failure
    ("host marked down", "giving up") say again what `check` prints right after, in a
    line of its own; they are kept for --log-level DEBUG."""
    logger = logging.getLogger("chworkers.clickhouse")
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _why(exc: ChworkersError) -> str:
    """Why a ClickHouse did not answer `check`'s one attempt: the error itself, not the
    retry policy's "giving up after 1 attempt(s)" around it."""
    if isinstance(exc, RetriesExhaustedError) and exc.last_error is not None:
        attempts = exc.attempts
        cause: BaseException = exc.last_error
        where = f" ({plural(attempts, 'attempt')})"
    else:
        cause, where = exc, ""
    return f"{where}: {str(cause).splitlines()[0][:200]}"


def _doubling_views(conn: Any, table: str) -> list[tuple[str, str, str]]:
    """The materialized views fed by ``table`` whose targets do not deduplicate."""
    from chworkers.clickhouse.views import undeduplicated_views

    database, _, name = table.rpartition(".")
    database = database or str(conn.command("SELECT currentDatabase()"))
    try:
        return list(undeduplicated_views(conn, database, name))
    except Exception:  # advisory (an older server lacks system.tables.target_table)
        return []


def _check_shards(cfg: config_module.Config) -> int:
    """Reach every replica of every shard and say which pipelines' tables each has; 1
    when a replica does not answer or lacks a table that `run` would not create."""
    from chworkers.clickhouse.pool import ConnectionPool

    ch = cfg.settings.clickhouse
    options = _one_attempt(ch.pool)
    weights = ch.shard_weights or (1,) * len(ch.shards)
    makers = _makers(cfg)
    failed = 0
    for index, (replicas, weight) in enumerate(zip(ch.shards, weights, strict=True)):
        print(f"shard {index} (weight {weight}): {len(replicas)} replica(s)")
        for url in replicas:
            conn = ch.connection(url)
            pool = ConnectionPool(conn, options)
            where = f"  shard {index} replica {redact_url(url)}"
            try:
                version = _version(pool)
                states = []
                for p in cfg.pipelines:
                    maker = makers.get(p.table)
                    if _exists(pool, p.table):
                        states.append(f"{p.table} exists" + _key_fits(pool, p))
                        failed = max(failed, int("KEY" in states[-1]))
                    elif maker is not None:
                        state, ok = _to_create(pool, p, maker)
                        states.append(f"{p.table} {state}")
                        failed = max(failed, int(not ok))
                    else:
                        states.append(f"{p.table} MISSING")
                        failed = 1
                print(f"{where}: answers (version {version}); " + (", ".join(states) or "-"))
            except ChworkersError as exc:
                print(f"{where}: DOES NOT ANSWER{_why(exc)}")
                failed = 1
            finally:
                pool.close()
    return failed


def _to_create(pool: Any, pipeline: Any, maker: Any) -> tuple[str, bool]:
    """A table missing here that `run` creates (by ``maker``'s `create`): whether
    ClickHouse takes that `create`, and whether ``pipeline``'s sharding key fits the
    columns it declares; the state to print, and whether `run` can get past it."""
    from chworkers.daemon.tables import refused_create

    refused = pool.with_connection(
        lambda c: refused_create(c, maker.create, maker.create_statement())
    )
    if refused:
        return (
            f"MISSING, and ClickHouse refuses {_whose(maker, pipeline)}`create`: {refused}",
            False,
        )
    fits = _key_fits(pool, pipeline, declared=maker.create)
    return f"missing (`run` creates it){_by(maker, pipeline)}{fits}", "KEY" not in fits


def _key_fits(pool: Any, pipeline: Any, declared: str | None = None) -> str:
    """Whether the pipeline's sharding key can be read from its table's columns here
    (or, with ``declared``, from the columns of a `create` that would make the table)."""
    from chworkers.daemon.keycolumns import Column, column_kind
    from chworkers.daemon.workertasks import table_columns

    key = pipeline.key
    if key is None or key.is_random:
        return ""
    if declared is None:
        rows = pool.with_connection(lambda c: table_columns(c, pipeline.table))
    else:
        rows = pool.with_connection(lambda c: _declared_columns(c, declared))
    columns = [Column(*row) for row in rows]
    try:
        key.bind({c.name: c.type for c in columns})
        by_name = {c.name: c for c in columns}
        for field in key.fields:
            column_kind(by_name[field])
    except ChworkersError as exc:
        return f" (SHARDING KEY DOES NOT FIT: {exc})"
    return f" (sharding key {key.expression} fits its columns)"


def _declared_columns(conn: Any, columns: str) -> list[tuple[str, str, str]]:
    """The columns a `create` declares (name, type, default kind), as ClickHouse reads
    them, without creating anything."""
    literal = "'" + columns.replace("\\", "\\\\").replace("'", "\\'") + "'"
    result = conn.query(f"DESCRIBE TABLE null({literal})")
    return [(str(row[0]), str(row[1]), str(row[2])) for row in result.result_rows]


def _check_files(cfg: config_module.Config) -> int:
    """Say what each file pipeline's paths match; 1 when a one-shot pipeline has nothing
    to read (a followed one may wait for its files to appear)."""
    failed = 0
    for p in cfg.pipelines:
        if p.source != "file":
            continue
        matches = {m for pattern in p.paths for m in glob.glob(pattern) if os.path.isfile(m)}
        patterns = ", ".join(p.paths)
        if matches:
            print(f"pipeline {p.name}: {len(matches)} file(s) match {patterns}")
            apart = _apart_from_spool(cfg.state_dir / "spool", matches)
            if apart and not p.follow and p.spool_data == "reference":
                print(
                    f"pipeline {p.name}: {len(apart)} of them on another file system than "
                    f"the spool: spooled as copies, not by reference (e.g. {min(apart)})"
                )
        elif p.follow:
            print(
                f"pipeline {p.name}: no file matches {patterns} yet (followed: read once they appear)"
            )
        else:
            print(f"pipeline {p.name}: NO FILE matches {patterns}; nothing would be read")
            failed = 1
    return failed


def _apart_from_spool(spool: Path, files: set[str]) -> list[str]:
    """The files a hard link from the spool cannot reach: on another file system than
    the spool (or its nearest folder that exists yet)."""
    where = spool
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        device = os.stat(where).st_dev
    except OSError:
        return []
    apart = []
    for path in files:
        with contextlib.suppress(OSError):
            if os.stat(path).st_dev != device:
                apart.append(path)
    return apart


def _check_brokers(cfg: config_module.Config) -> int:
    """Reach each broker pipeline's Redis or NATS and describe its stream; 1 when one
    fails."""
    from chworkers.errors import BrokerError

    failed = 0
    for p in cfg.pipelines:
        where = f"pipeline {p.name!r}"
        try:
            if p.source == "redis":
                from chworkers.daemon.brokers import redisclient

                print(f"pipeline {p.name}: {redisclient.describe(p.redis, where)}")
            elif p.source == "nats":
                from chworkers.daemon.brokers import natsclient

                print(f"pipeline {p.name}: {natsclient.describe(p.nats, where)}")
        except BrokerError as exc:
            print(f"pipeline {p.name}: {p.source.upper()} FAILS: {exc}")
            failed = 1
    return failed
