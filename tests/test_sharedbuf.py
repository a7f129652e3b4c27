"""Large task buffers through shared memory (chworkers.workers.sharedbuf)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from typing import Any

import multiprocess
import numpy as np
import pytest

from chworkers.errors import SerializationError
from chworkers.workers import channel, sharedbuf, tasks

pytestmark = pytest.mark.skipif(not sharedbuf.usable(), reason="no shared memory files here")


def _read_in_child(ref: sharedbuf.SharedRef, out: Any) -> None:
    out.send_bytes(bytes(ref.open()))


def test_only_large_buffers_are_shared_and_a_child_maps_them() -> None:
    big = os.urandom(sharedbuf.THRESHOLD + 5)
    assert sharedbuf.share([b"small"]) is None
    shared = sharedbuf.share([b"small", big])
    assert shared is not None and shared[0] is None and shared[1] is not None
    ref = shared[1].ref
    reader, writer = multiprocess.get_context("spawn").Pipe(duplex=False)
    child = multiprocess.get_context("spawn").Process(target=_read_in_child, args=(ref, writer))
    child.start()
    assert reader.recv_bytes() == big
    child.join(30)
    shared[1].close()
    with pytest.raises(SerializationError, match="its task is done"):
        ref.open()


def test_a_reused_descriptor_is_not_taken_for_the_buffer() -> None:
    first = sharedbuf.SharedBuffer(b"a" * 100)
    ref = first.ref
    first.close()
    second = sharedbuf.SharedBuffer(b"b" * 100)  # most likely the same descriptor number
    try:
        with pytest.raises(SerializationError):
            ref.open()
        assert bytes(second.ref.open()) == b"b" * 100
    finally:
        second.close()


def test_a_forked_child_does_not_keep_the_files() -> None:
    buf = sharedbuf.SharedBuffer(b"x" * 10)
    pid = os.fork()
    if pid == 0:  # the child: the inherited descriptor is closed
        os._exit(0 if not os.path.exists(f"/proc/self/fd/{buf.ref.fd}") else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert bytes(buf.ref.open()) == b"x" * 10  # the parent still has it
    buf.close()


def test_a_kept_file_takes_the_next_batch_through_its_mapping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = sharedbuf._Pool()
    monkeypatch.setattr(sharedbuf, "_POOL", pool)
    first = sharedbuf.SharedBuffer(b"a" * 5000)
    old = first.ref
    first.close()  # kept, and mapped here
    (kept,) = pool._free
    assert kept._maps and len(kept._maps[0]) == 5000 + sharedbuf._TAG + sharedbuf._MARK
    second = sharedbuf.SharedBuffer(b"b" * 3000)  # copied into the mapped pages
    assert second.ref.name == old.name
    with pytest.raises(SerializationError, match="its task is done"):
        old.open()
    assert bytes(second.ref.open()) == b"b" * 3000
    pid = os.fork()
    if pid == 0:  # the child unmaps the kept pages as it closes the files
        with open("/proc/self/maps") as maps:
            os._exit(0 if old.name not in maps.read() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    second.close()
    third = sharedbuf.SharedBuffer(b"c" * 9000)  # larger: written, then mapped again
    assert bytes(third.ref.open()) == b"c" * 9000
    third.close()
    assert len(pool._free[0]._maps[0]) == 9000 + sharedbuf._TAG + sharedbuf._MARK
    pool.sweep(0)
    assert not kept._maps and kept.closed


def test_tasks_carry_references_to_large_buffers_and_workers_decode_them() -> None:
    body = os.urandom(3 * sharedbuf.THRESHOLD)
    task = tasks.encode_insert(1, Future(), "t", body, None, None, None, fmt="Native", rows=5)
    frames = channel.encode(channel.TASKS, [task.wire()])
    assert sum(memoryview(f).nbytes for f in frames) < 4096  # no copy of the body in the pipe
    _, [(_, _, payload, buffers)] = channel.decode(frames[0], frames[1:])
    spec = tasks.decode_insert(payload, buffers)
    assert bytes(spec.data) == body and spec.rows == 5
    task.release()  # the task is done: its memory file goes at once
    with pytest.raises(SerializationError):
        tasks.decode_insert(payload, buffers)
    column = np.arange(sharedbuf.THRESHOLD // 4, dtype=np.int64)
    call = tasks.encode_call(2, Future(), tasks.CALL, np.sum, (column,), {})
    assert call.shared is not None
    _, [(_, _, payload, buffers)] = channel.decode(
        *_split(channel.encode(channel.TASKS, [call.wire()]))
    )
    fn, args, _, _ = tasks.decode_call(payload, buffers)
    assert int(fn(*args)) == int(column.sum())


def _split(frames: list[Any]) -> tuple[Any, list[Any]]:
    return frames[0], frames[1:]


def test_large_inserts_through_the_supervisor(endpoint: Any, database: str, ch_client: Any) -> None:
    from chworkers import Supervisor

    ch_client.command("CREATE TABLE t (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
    body = b"".join(b'{"id":%d,"s":"%s"}\n' % (i, b"x" * 40) for i in range(40_000))
    assert len(body) > sharedbuf.THRESHOLD
    with Supervisor(f"{endpoint.url}/{database}", workers=1, start_method="fork") as sup:
        assert sup.insert_raw("t", body, "JSONEachRow", rows=40_000).result(60) == 40_000
        ids = np.arange(40_000, 200_000, dtype=np.uint64)
        columns = {"id": ids, "s": np.array(["y"] * len(ids), dtype=object)}
        assert sup.insert("t", columns).result(60) == len(ids)
    assert ch_client.command("SELECT count(), uniqExact(id) FROM t") == ["200000", "200000"]


def _sum_once_crashing(marker: str, column: Any) -> int:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)  # the worker dies holding the task: it runs again on another
    return int(column.sum())


def test_a_task_rerun_after_its_worker_died_maps_its_buffer_again(tmp_path: Any) -> None:
    from chworkers import Supervisor

    column = np.arange(sharedbuf.THRESHOLD // 2, dtype=np.int64)
    with Supervisor(workers=1, start_method="fork") as sup:
        future = sup.call(_sum_once_crashing, str(tmp_path / "crashed"), column)
        assert future.result(60) == int(column.sum())
    assert (tmp_path / "crashed").exists()


def test_without_memory_files_large_buffers_take_the_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(name: str, flags: int = 0) -> int:
        raise PermissionError(1, "Operation not permitted")  # as under a seccomp filter

    monkeypatch.setattr(os, "memfd_create", refused)
    monkeypatch.setattr(sharedbuf, "_POOL", sharedbuf._Pool())  # none kept from before
    monkeypatch.setitem(sharedbuf._usable, os.getpid(), True)
    big = b"z" * sharedbuf.THRESHOLD
    assert sharedbuf.share([big]) is None
    assert sharedbuf._usable[os.getpid()] is False  # not tried again for every batch
    task = tasks.encode_insert(1, Future(), "t", big, None, None, None, fmt="Native")
    assert task.shared is None
    frames = channel.encode(channel.TASKS, [task.wire()])
    _, [(_, _, payload, buffers)] = channel.decode(frames[0], frames[1:])
    assert bytes(tasks.decode_insert(payload, buffers).data) == big


def test_a_large_body_is_copied_while_it_is_hashed_with_the_same_result() -> None:
    body = os.urandom(tasks.SHARE_ALONGSIDE + 7)
    task = tasks.encode_insert(1, Future(), "t", body, None, None, None, fmt="Native", rows=3)
    assert task.token == tasks.raw_token("t", body, "Native")  # what a caller can derive
    assert task.shared is not None
    _, [(_, _, payload, buffers)] = channel.decode(
        *_split(channel.encode(channel.TASKS, [task.wire()]))
    )
    assert bytes(tasks.decode_insert(payload, buffers).data) == body
    task.release()
    # A token given by the caller: nothing to hash, the copy is made as before.
    given = tasks.encode_insert(2, Future(), "t", body, None, None, "tok", fmt="Native", rows=3)
    assert given.token == "tok" and given.shared is not None
    given.release()


def test_a_task_that_fails_to_encode_gives_its_memory_files_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sharedbuf, "_POOL", sharedbuf._Pool())  # none kept from before
    body = os.urandom(tasks.SHARE_ALONGSIDE)

    class Unpicklable:
        def __reduce__(self) -> Any:
            raise TypeError("not this one")

    with pytest.raises(SerializationError):  # the settings are pickled after the copy began
        tasks.encode_insert(
            1, Future(), "t", body, None, {"x": Unpicklable()}, None, fmt="Native", rows=1
        )
    assert len(sharedbuf._POOL) == 1  # the copy's file is back, ready for the next batch
    assert not [t for t in threading.enumerate() if t.name == "chworkers-share"]
