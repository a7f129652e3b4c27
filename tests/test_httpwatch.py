from __future__ import annotations

import socket
import threading
import time

from waiting import wait_for

from chworkers.http.watch import ByteBudget, Closer, Deadlines


def test_byte_budget_lets_one_request_in_whatever_its_size() -> None:
    budget = ByteBudget(100)
    assert budget.reserve(500)  # alone: always
    assert not budget.reserve(1)
    budget.release(500)
    assert budget.reserve(60) and budget.reserve(40) and not budget.reserve(1)
    assert repr(budget) == "<ByteBudget 100 of 100 bytes held>"


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def test_closer_answers_a_client_that_is_still_sending_without_a_reset() -> None:
    server, client = tcp_pair()
    closer = Closer(linger=5.0)
    stop = threading.Event()

    def send() -> None:  # the client keeps sending its (refused) body
        try:
            while not stop.is_set():
                client.send(b"x" * 65536)
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    time.sleep(0.1)  # unread data waits in the server's socket
    closer.close(server, b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\n\r\n")
    client.settimeout(5)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += client.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 ")
    stop.set()
    client.close()
    wait_for(lambda: server.fileno() == -1, timeout=10)  # closed once the client was done
    closer.stop()


def test_deadlines_wake_a_blocked_reader_and_say_so() -> None:
    server, client = socket.socketpair()
    deadlines = Deadlines(tick=0.02)
    deadlines.arm(server, 0.2)
    started = time.monotonic()
    assert server.recv(10) == b""  # woken: end of file
    assert time.monotonic() - started < 10
    assert deadlines.expired(server)
    server.sendall(b"408")  # the write side still works
    assert client.recv(10) == b"408"
    assert deadlines.disarm(server) and not deadlines.expired(server)
    deadlines.stop()
    server.close()
    client.close()
