"""Constructors take their settings objects, or their defaults from the declarations.

A default written twice drifts (``HostSelector(cooldown=5.0)`` while the setting said
2.0), and a setting copied field by field into a constructor has to be copied again for
every new one. So the daemon's components take their settings object whole
(``Spool(directory, SpoolSettings(...))``) and have no parameter of their own for a
setting; the constructors that still mirror settings as separate parameters must
default each one to the declared value.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any

import pytest

from chworkers.clickhouse.hosts import HostSelector
from chworkers.clickhouse.pooloptions import PoolOptions
from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.clickhousesettings import EmbeddedSettings
from chworkers.daemon.dispatch import Dispatcher
from chworkers.daemon.ingest import IngestServer
from chworkers.daemon.options import HttpSettings, SpoolSettings
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.daemon.spool import Spool
from chworkers.embedded import EmbeddedClickHouse
from chworkers.ops import logs
from chworkers.ops.logs import LogSettings

#: (constructor, the settings it mirrors, parameter -> setting where the names differ,
#: parameters that share a setting's name but are not that setting, and why).
MIRRORS: list[tuple[Callable[..., Any], type[Any], dict[str, str], dict[str, str]]] = [
    (EmbeddedClickHouse, EmbeddedSettings, {}, {}),
    (logs.configure, LogSettings, {}, {}),
]


#: (constructor, the settings object it takes, parameters it had for them before).
TAKES: list[tuple[Callable[..., Any], type[Any], frozenset[str]]] = [
    (Spool, SpoolSettings, frozenset()),
    (Dispatcher, SpoolSettings, frozenset({"max_backoff", "permanent_backoff"})),
    (IngestServer, HttpSettings, frozenset()),
    (HostSelector, PoolOptions, frozenset({"cooldown", "max_cooldown"})),
    (Batcher, BatchLimits, frozenset()),
]


@pytest.mark.parametrize("ctor, settings, former", TAKES, ids=[t[0].__name__ for t in TAKES])
def test_constructors_take_their_settings_object_whole(
    ctor: Callable[..., Any], settings: type[Any], former: frozenset[str]
) -> None:
    hints = typing.get_type_hints(ctor.__init__ if isinstance(ctor, type) else ctor)
    takes = [
        name for name, tp in hints.items() if tp is settings or settings in typing.get_args(tp)
    ]
    assert len(takes) == 1, f"{ctor.__name__} takes no {settings.__name__}"
    copied = set(inspect.signature(ctor).parameters) & (set(_declared(settings)) | former)
    assert not copied, f"{ctor.__name__} takes {sorted(copied)} apart from its {settings.__name__}"


def _declared(cls: type[Any]) -> dict[str, Any]:
    return {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if "help" in f.metadata and f.default is not dataclasses.MISSING
    }


@pytest.mark.parametrize(
    "ctor, settings, renamed, exempt", MIRRORS, ids=[m[0].__name__ for m in MIRRORS]
)
def test_constructor_defaults_are_the_declared_ones(
    ctor: Callable[..., Any], settings: type[Any], renamed: dict[str, str], exempt: dict[str, str]
) -> None:
    declared = _declared(settings)
    checked = []
    for name, param in inspect.signature(ctor).parameters.items():
        key = renamed.get(name, name)
        if key not in declared or name in exempt or param.default is inspect.Parameter.empty:
            continue
        assert param.default == declared[key], (
            f"{ctor.__name__}({name}={param.default!r}) but {settings.__name__}.{key} "
            f"is declared with {declared[key]!r}"
        )
        checked.append(name)
    # The pairing is real: every renamed parameter exists and was compared.
    assert set(renamed) <= set(checked), f"{ctor.__name__}: {set(renamed) - set(checked)} unchecked"
    assert checked, f"{ctor.__name__} shares no setting with {settings.__name__}"


def test_a_pipelines_batch_limits_are_batch_limits_declarations() -> None:
    pipeline = {f.name: f for f in dataclasses.fields(PipelineSettings)}
    for f in dataclasses.fields(BatchLimits):
        assert pipeline[f.name].default == f.default
        assert pipeline[f.name].metadata == f.metadata
    p = PipelineSettings(name="p", table="t", max_rows=7, max_delay="250ms")  # type: ignore[arg-type]
    assert p.limits == BatchLimits(max_rows=7, max_delay=0.25)
