"""The pipe protocol between supervisor and workers: frames, out-of-band buffers, and a
writer that never blocks the supervisor."""

from __future__ import annotations

import os
import pickle
import threading

import multiprocess
import pytest

from chworkers.workers import channel


def test_outbox_never_blocks_and_resumes_partial_writes() -> None:
    reader, writer = multiprocess.Pipe(duplex=False)
    outbox = channel.Outbox(writer.fileno())
    big = bytes(range(256)) * 8192  # 2 MiB: more than a pipe holds, widened or not
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


def test_receive_reads_long_headers_and_says_eof_mid_frame() -> None:
    reader, writer = multiprocess.Pipe(duplex=False)
    frames = channel.encode(channel.TASKS, [pickle.PickleBuffer(b"abc" * 30_000)])
    fd = writer.fileno()
    # The long form of the header, as for frames of 2 GiB and more; written by a thread
    # (the buffer is more than the pipe holds).
    wire = b"".join(
        b"\xff\xff\xff\xff" + len(data).to_bytes(8, "big") + data
        for data in (bytes(memoryview(frame)) for frame in frames)
    )
    thread = threading.Thread(target=os.write, args=(fd, wire))
    thread.start()
    kind, body = channel.receive(reader)
    assert kind == channel.TASKS and bytes(body[0]) == b"abc" * 30_000
    thread.join(10)
    os.write(fd, (100).to_bytes(4, "big") + b"short")
    writer.close()
    with pytest.raises(EOFError):
        channel.receive(reader)
