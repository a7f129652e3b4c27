"""The memory files kept between large tasks are capped by a setting, by default a
fraction of the cgroup's memory limit.

Up to 128 MiB of them stayed allocated for 30 s after large ``insert_raw`` batches,
whatever the machine: they are the supervisor's memory, charged to its cgroup, so under
systemd's ``MemoryMax=1G`` an eighth of the unit's memory went to a cache the operator
could neither see in the configuration nor turn down.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chworkers.daemon import config
from chworkers.errors import ConfigError
from chworkers.ops import cgroup
from chworkers.workers import sharedbuf
from chworkers.workers.supervisor import Supervisor

MiB = 1 << 20


@pytest.fixture(autouse=True)
def default_limit_after() -> Iterator[None]:
    yield
    sharedbuf.configure(None)  # the limit is the process's: leave the default behind


def _write(root: Path, path: str, name: str, text: str) -> None:
    (root / path).mkdir(parents=True, exist_ok=True)
    (root / path / name).write_text(text + "\n")


def test_the_cgroup_limit_is_the_lowest_on_the_way_to_the_root(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    # v2: the unit's MemoryMax= (2 GiB) under a slice limited to 1 GiB.
    proc.write_text("0::/system.slice/chworkers.service\n")
    _write(root, "system.slice/chworkers.service", "memory.max", str(2 << 30))
    _write(root, "system.slice", "memory.max", str(1 << 30))
    assert cgroup.memory_limit(str(proc), str(root)) == 1 << 30
    _write(root, "system.slice", "memory.max", "max")
    assert cgroup.memory_limit(str(proc), str(root)) == 2 << 30
    _write(root, "system.slice/chworkers.service", "memory.max", "max")
    assert cgroup.memory_limit(str(proc), str(root)) is None
    # v1: the memory controller's hierarchy; 2**63 - 4096 means no limit.
    proc.write_text("4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n0::/\n")
    _write(root, "memory/docker/abc", "memory.limit_in_bytes", str(512 * MiB))
    _write(root, "memory", "memory.limit_in_bytes", "9223372036854771712")
    assert cgroup.memory_limit(str(proc), str(root)) == 512 * MiB
    assert cgroup.memory_limit(str(tmp_path / "missing"), str(root)) is None


def test_the_default_is_a_sixteenth_of_the_cgroup_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "memory_limit", lambda: 1 << 30)  # MemoryMax=1G
    assert sharedbuf.default_keep() == 64 * MiB
    assert sharedbuf.configure(None) == 64 * MiB
    monkeypatch.setattr(cgroup, "memory_limit", lambda: 8 << 30)
    # At most what three 2M-row insert_raw requests (58 MB each) in flight keep:
    # at 128 MiB the third took a fresh file in every burst.
    assert sharedbuf.default_keep() == 256 * MiB
    monkeypatch.setattr(cgroup, "memory_limit", lambda: None)
    assert sharedbuf.default_keep() == 256 * MiB
    assert sharedbuf.default_keep() >= 3 * (58_000_000 + 16)


@pytest.mark.skipif(not sharedbuf.usable(), reason="no memory files on this system")
def test_kept_files_stay_within_the_limit() -> None:
    sharedbuf.configure(3 * MiB)
    first = sharedbuf.SharedBuffer(os.urandom(2 * MiB))
    second = sharedbuf.SharedBuffer(os.urandom(2 * MiB))
    first.close()
    second.close()  # the two do not fit together: one is closed
    assert 2 * MiB < sharedbuf.kept_bytes() <= 3 * MiB
    sharedbuf.configure(0)  # lowered: closed at once
    assert sharedbuf.kept_bytes() == 0
    third = sharedbuf.SharedBuffer(os.urandom(2 * MiB))
    third.close()
    assert sharedbuf.kept_bytes() == 0


def test_the_supervisor_setting_sets_it_and_a_reload_changes_it() -> None:
    sup = Supervisor(workers=1, start_method="fork", kept_memory_files_bytes=8 * MiB)
    sup.start()
    try:
        assert sharedbuf.kept_limit() == 8 * MiB
        sup.reconfigure(kept_memory_files_bytes=0)
        assert sharedbuf.kept_limit() == 0
    finally:
        sup.stop(graceful=False)


def test_the_daemon_config_takes_it_in_bytes_or_units() -> None:
    cfg = config.load(data={"supervisor": {"kept_memory_files_bytes": "16MiB"}}, env={})
    assert cfg.settings.supervisor.kept_memory_files_bytes == 16 * MiB
    with pytest.raises(ConfigError, match="kept_memory_files_bytes"):
        config.load(data={"supervisor": {"kept_memory_files_bytes": -1}}, env={})
