"""A burst of large tasks reaches a worker a pipe-full at a time, and the worker starts
the first one without reading the burst to its end.

Before: a task pipe held Linux's default 64 KiB, the supervisor sent everything a worker
was given at once as one message (up to ``prefetch_bytes``, 16 MiB), and the worker read
all the messages waiting before it ran anything; a 300 KB ``insert_raw`` crossed in five
pipe-fulls, each a wake-up of the supervisor's loop and of the worker between two of its
inserts, and a burst of them was read whole (hundreds of wake-ups) before the first
insert started.
"""

from __future__ import annotations

import fcntl
import os
from concurrent.futures import Future

import multiprocess
import pytest

from chworkers.workers import channel, dispatch, tasks
from chworkers.workers.context import HEARTBEAT_SLOTS, WorkerContext
from chworkers.workers.worker import WorkerSpec, _Loop


def _task(task_id: int, size: int) -> tasks.Task:
    return tasks.encode_call(task_id, Future(), tasks.CALL, len, (b"x" * size,), {})


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_a_task_pipe_holds_a_pipe_full_of_tasks() -> None:
    reader, writer = multiprocess.Pipe(duplex=False)
    outbox = channel.Outbox(os.dup(writer.fileno()))
    writer.close()
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            allowed = int(f.read())
        size = fcntl.fcntl(outbox.fileno(), fcntl.F_GETPIPE_SZ)
        assert size >= min(channel.PIPE_SIZE, allowed)
    finally:
        os.close(outbox.fileno())
        reader.close()


def test_a_burst_is_cut_into_messages_of_a_pipe_full() -> None:
    burst = [_task(n, 300_000) for n in range(1, 41)]  # 12 MB
    parts = list(dispatch._messages(burst))
    assert [t.id for part in parts for t in part] == list(range(1, 41))
    assert len(parts) > 1
    for part in parts:
        assert len(part) == 1 or sum(t.piped_bytes() for t in part) <= channel.PIPE_SIZE
    small = [_task(n, 10) for n in range(1, 1001)]
    assert len(list(dispatch._messages(small))) == 1  # tiny tasks still go together


def test_the_worker_reads_up_to_the_first_tasks_then_runs_them() -> None:
    reader, writer = multiprocess.Pipe(duplex=False)
    heartbeat = [0.0] * HEARTBEAT_SLOTS
    worker = WorkerContext("worker-test", {}, heartbeat)
    loop = _Loop(worker, WorkerSpec("worker-test", os.getpid()), reader, None, heartbeat)  # type: ignore[arg-type]
    first = [_task(1, 100), _task(2, 100)]
    second = [_task(3, 100)]
    try:
        for batch in (first, second):
            for frame in channel.encode(channel.TASKS, [t.wire() for t in batch]):
                writer.send_bytes(frame)
        channel.send(writer, channel.CONFIGURE, {"retry": None})
        loop._read_available()
        assert [w[0] for w in loop.local] == [1, 2]  # the second message waits in the pipe
        assert "retry" not in worker.settings
        loop._read_available()
        assert [w[0] for w in loop.local] == [1, 2, 3]
        loop._read_available()  # what follows tasks is read before the next task runs
        assert worker.settings["retry"] is None
        payload, buffers = loop.local[2][2], loop.local[2][3]
        assert tasks.decode_call(payload, buffers)[1] == (b"x" * 100,)
    finally:
        loop.memory.close()
        reader.close()
        writer.close()


def test_what_crosses_the_pipe_leaves_out_shared_buffers() -> None:
    task = _task(1, 2 << 20)
    try:
        if task.shared is None:  # no memory files here: everything takes the pipe
            assert task.piped_bytes() == task.nbytes
        else:
            assert task.piped_bytes() == len(task.payload) < 4096 < task.nbytes
    finally:
        task.release()
