"""The daemon's parts on real sockets and files: systemd's notify protocol, the JSON lines sink."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.daemon import JsonlSink, Notifier
from edge_runtime.errors import EdgeRuntimeError


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A real datagram socket where systemd's would be, at a path."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_watchdog_status_stopping_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert n.enabled and n.watchdog_s is None
    assert n.ready("serving 2 pipelines")
    assert received(sock) == {"READY": "1", "STATUS": "serving 2 pipelines"}
    assert n.watchdog() and received(sock) == {"WATCHDOG": "1"}
    assert n.status("imu: 120 results/s") and received(sock) == {"STATUS": "imu: 120 results/s"}
    assert n.stopping() and received(sock) == {"STOPPING": "1"}
    n.close()
    n.close()
    assert not n.ready(), "closed: nothing is sent"


def test_abstract_namespace_socket() -> None:
    name = f"edge_runtime_test_{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert n.ready() and received(sock) == {"READY": "1"}
        n.close()
    finally:
        sock.close()


def test_watchdog_interval_is_ours_only_for_our_pid() -> None:
    ours = Notifier.from_environ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())})
    assert ours.watchdog_s == 20.0 and not ours.enabled and not ours.watchdog()
    assert Notifier.from_environ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier.from_environ({"WATCHDOG_USEC": "20000000"}).watchdog_s == 20.0
    assert Notifier.from_environ({}).watchdog_s is None


def test_outside_systemd_and_after_systemd_left(listener: tuple[socket.socket, str]) -> None:
    assert not Notifier.from_environ({}).ready(), "no NOTIFY_SOCKET: a no-op"
    sock, path = listener
    n = Notifier(path)
    sock.close()
    os.unlink(path)
    assert not n.ready(), "the socket went away: reported, not raised"
    n.close()
    with pytest.raises(EdgeRuntimeError, match="line break"):
        Notifier("/tmp/x").status("two\nlines")
    with pytest.raises(EdgeRuntimeError, match="neither a path nor an @abstract name"):
        Notifier("relative.sock")


def test_jsonl_lines_survive_a_logrotate_move(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "imu.jsonl"
    sink = JsonlSink(path)
    for i in range(3):
        sink.write({"window_index": i})
    path.rename(tmp_path / "imu.jsonl.1")  # logrotate moves the file away ...
    sink.write({"window_index": 3})  # ... lines still go to the moved file until the reopen
    sink.reopen()  # ... then sends SIGHUP: the daemon reopens the path
    sink.write({"window_index": 4})
    sink.close()
    sink.close()
    old = [json.loads(x) for x in (tmp_path / "imu.jsonl.1").read_text().splitlines()]
    new = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["window_index"] for r in old + new] == [0, 1, 2, 3, 4] and sink.lines == 5
    with pytest.raises(EdgeRuntimeError, match="closed"):
        sink.write({"late": True})


def test_jsonl_lines_from_many_threads_are_never_interleaved(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "r.jsonl")
    payload = "x" * 5000  # longer than a pipe's atomic write: the sink's lock keeps lines whole

    def writer(k: int) -> None:
        for i in range(200):
            sink.write({"thread": k, "i": i, "pad": payload})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sink.close()
    records = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(records) == 800 and all(r["pad"] == payload for r in records)
    for k in range(4):
        assert [r["i"] for r in records if r["thread"] == k] == list(range(200))


def test_a_sink_that_cannot_open_says_where(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(EdgeRuntimeError, match="cannot open the JSON lines sink") as info:
        JsonlSink(tmp_path / "file" / "r.jsonl")
    assert info.value.path == str(tmp_path / "file" / "r.jsonl")
