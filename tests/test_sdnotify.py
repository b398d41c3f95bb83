"""sd_notify: states reach the socket, and a socket that nobody reads, or that is gone, never
stalls or fails the daemon."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import pytest

from mailpipe.sdnotify import Notifier


@pytest.fixture
def listening(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    yield sock, path
    sock.close()


def test_ready_reaches_the_notify_socket_with_its_status(listening) -> None:
    sock, path = listening
    Notifier({"NOTIFY_SOCKET": str(path)}).ready("serving")
    assert sock.recv(4096).decode().splitlines() == ["READY=1", "STATUS=serving"]


def test_a_socket_nobody_reads_does_not_stall_the_daemon(listening) -> None:
    _, path = listening
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    sent = threading.Thread(target=lambda: [notifier.watchdog() for _ in range(5000)], daemon=True)
    sent.start()
    sent.join(120)
    assert not sent.is_alive()


def test_a_socket_that_is_gone_is_logged_once_and_raises_nothing(tmp_path: Path, caplog) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, logger="mailpipe.sdnotify"):
        notifier.ready("serving")
        notifier.watchdog()
    assert [record.message for record in caplog.records] == ["systemd notification not sent"]


def test_a_ready_that_found_the_socket_full_is_sent_with_the_next_watchdog_ping(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as other:
        while True:  # systemd busy: its queue fills up
            try:
                other.sendto(b"FILLER=1", str(path))
            except BlockingIOError:
                break
            sent += 1
    notifier.ready("serving")
    for _ in range(sent):  # systemd reads again
        receiver.recv(4096)
    with pytest.raises(BlockingIOError):
        receiver.recv(4096)  # the READY=1 was dropped...
    notifier.watchdog()
    assert receiver.recv(4096).decode().splitlines() == ["READY=1", "STATUS=serving", "WATCHDOG=1"]  # ...not lost
    notifier.watchdog()
    assert receiver.recv(4096).decode().splitlines() == ["WATCHDOG=1"]
    receiver.close()
