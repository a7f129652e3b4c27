"""The pipe protocol between supervisor and workers: frames, out-of-band buffers, and a
writer that never blocks the supervisor."""

from __future__ import annotations

import pickle
import threading

import multiprocess

from chworkers.workers import channel


def test_outbox_never_blocks_and_resumes_partial_writes() -> None:
    reader, writer = multiprocess.Pipe(duplex=False)
    outbox = channel.Outbox(writer.fileno())
    big = bytes(range(256)) * 4096  # 1 MiB: far more than a pipe buffer holds
    outbox.put(channel.encode(channel.TASKS, [(1, "call", b"x", [pickle.PickleBuffer(big)])]))
    outbox.put(channel.encode(channel.STOP, None))
    assert outbox.flush() is False  # the pipe is full; we were not blocked
    assert outbox.pending > 0

    received: list[tuple[str, object]] = []

    def read() -> None:
        received.append(channel.receive(reader))
        received.append(channel.receive(reader))

    thread = threading.Thread(target=read)
    thread.start()
    while not outbox.flush():
        pass
    thread.join(10)
    assert outbox.pending == 0
    kind, body = received[0]
    assert kind == channel.TASKS
    assert body[0][3][0] == big  # type: ignore[index]
    assert received[1] == (channel.STOP, None)


def test_blocking_send_and_receive() -> None:
    reader, writer = multiprocess.Pipe(duplex=False)
    channel.send(writer, channel.RESULTS, ([(1, True, b"", 0.5)], None))
    assert channel.receive(reader) == (channel.RESULTS, ([(1, True, b"", 0.5)], None))


def test_frame_header_for_huge_frames() -> None:
    assert channel.frame_header(10) == (10).to_bytes(4, "big")
    assert channel.frame_header(2**31) == b"\xff\xff\xff\xff" + (2**31).to_bytes(8, "big")
