"""The settings an insert carries besides the caller's: its mode and its deduplication.

Every insert chworkers sends (:meth:`Connection.insert <chworkers.clickhouse.connection.Connection.insert>`,
``raw_insert``: the Python API and the daemon alike) gets its settings from
:func:`insert_settings`, so an insert means the same on every server version:

* **Synchronous** (the default): ``async_insert=0``. ClickHouse 26.2 turned asynchronous
  inserts on by default (``system.settings_changes``); chworkers batches on the client
  and confirms a batch only once ClickHouse wrote it, so it says so instead of inheriting
  the server's choice. ``deduplicate_blocks_in_dependent_materialized_views=1`` (the
  default since 26.2 only): an insert replayed with the same deduplication token is then
  dropped by the target's dependent materialized views too, instead of doubling their
  rows. It costs nothing on a table without views, so it is sent with every synchronous
  insert, and a view created while chworkers runs is covered at once.
* **Asynchronous** (the caller's settings hold ``async_insert=1``; a daemon pipeline's
  ``async_insert = true``): ``wait_for_async_insert=1``, so that the insert returns only
  once the server flushed it, with its error if it failed (never fire-and-forget: a
  caller asking for ``wait_for_async_insert=0`` gets a :class:`~chworkers.errors.ConfigError`),
  and ``async_insert_deduplicate=1``, so that the token still deduplicates. The views'
  setting is not sent: the server glues asynchronous inserts together in an order of its
  own, so their blocks cannot be deduplicated in the views (ClickHouse's own comment in
  ``executeQuery``), and servers 24.3 to 26.0 refuse the two together
  (``throw_if_deduplication_in_dependent_materialized_views_enabled_with_async_insert``).

The caller's own settings win over these defaults. A default the server does not know
(an older server, e.g. one from before ``async_insert``, 21.11), or that the user may not
change (a settings profile's constraint makes it ``readonly`` in ``system.settings``), is
left out instead of failing every insert (UNKNOWN_SETTING; clickhouse-connect's "Setting
... is readonly"); the caller's own settings are sent as given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from chworkers.errors import ConfigError

__all__ = ["ASYNC_DEFAULTS", "SYNC_DEFAULTS", "insert_settings", "is_async"]

#: What a synchronous insert carries unless the caller says otherwise.
SYNC_DEFAULTS: Mapping[str, int] = {
    "async_insert": 0,
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
}

#: What an asynchronous insert carries unless the caller says otherwise.
ASYNC_DEFAULTS: Mapping[str, int] = {
    "wait_for_async_insert": 1,
    "async_insert_deduplicate": 1,
    "insert_deduplicate": 1,
}

_TRUE = {"1", "true", "yes", "on"}


def is_async(settings: Mapping[str, object] | None) -> bool:
    """Whether ``settings`` ask for an asynchronous insert (``async_insert`` true)."""
    value = (settings or {}).get("async_insert")
    return value is not None and str(value).strip().lower() in _TRUE


def insert_settings(
    settings: Mapping[str, object] | None,
    *,
    token: str,
    known: Callable[[str], bool] = lambda name: True,
    table: str = "",
) -> dict[str, Any]:
    """The caller's ``settings`` with the mode's defaults and the deduplication ``token``.

    ``known(name)`` says whether the server has a setting (a default it lacks is left out).
    Raises :class:`~chworkers.errors.ConfigError` for an asynchronous insert that would not
    wait for its flush.
    """
    out: dict[str, Any] = dict(settings or {})
    if is_async(out):
        wait = out.get("wait_for_async_insert")
        if wait is not None and str(wait).strip().lower() not in _TRUE:
            where = f"insert into {table}" if table else "insert"
            raise ConfigError(
                f"{where}: wait_for_async_insert = {wait!r} would confirm the insert before "
                "ClickHouse has written it (its errors would be lost); chworkers always waits "
                "for asynchronous inserts",
                key="wait_for_async_insert",
                value=wait,
                expected="1 (or leave it out)",
            )
        defaults = ASYNC_DEFAULTS
    else:
        defaults = SYNC_DEFAULTS
    for name, value in defaults.items():
        if name not in out and known(name):
            out[name] = value
    out["insert_deduplication_token"] = token
    # No progress headers, whoever asked (clickhouse-connect does on every request): the
    # first one sends a 200 status, and an insert failing after it has its exception
    # only in the body, which would count as a success (a batch leaving the spool).
    if known("send_progress_in_http_headers"):
        out["send_progress_in_http_headers"] = 0
    return out
