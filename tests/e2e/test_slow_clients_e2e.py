"""Slow and stalled clients (issue #14, item 1) against real servers on 127.0.0.1.

100 clients of each kind — a raw CSV body sent in part, a multipart upload sent in part, an open
event stream — are added one kind after the other; with each kind open, ``GET /kmeans/ping``
answers within 100 ms and a normal raw and multipart upload answer as they do without them. Then
every stalled body gets its 408 once it has sent nothing for the (shortened) idle timeout, the
connection is closed, and nothing is left in the data dir's tmp/.
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import dockerfile_command, free_port, running

pytestmark = pytest.mark.e2e

CLIENTS = 100  # of each kind
IDLE_TIMEOUT = 15  # KMEANS_BODY_IDLE_TIMEOUT of these servers: longer than the measurements take
PINGS = 20
PING_LIMIT = 0.1  # seconds, or 3 times the p95 without stalled clients on a machine busier than that
UPLOAD_LIMIT = 1.0  # seconds, and at most a few times the upload's time without stalled clients
CSV = b"1,2\n3,4\n5,6\n7,8\n"


def stalled_raw(port: int) -> socket.socket:
    """A POST of a raw CSV body that promises 100,000 bytes and sends 8."""
    head = (
        b"POST /kmeans/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: text/csv\r\nContent-Length: 100000\r\n\r\n"
    )
    return _send(port, head + CSV[:8])


def stalled_multipart(port: int) -> socket.socket:
    """A multipart upload that promises 100,000 bytes and stops in the middle of its file part."""
    part = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\nContent-Type: text/csv\r\n\r\n'
    head = (
        b"POST /kmeans/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 100000\r\n\r\n"
    )
    return _send(port, head + part + CSV[:8])


def open_stream(port: int) -> socket.socket:
    """An event stream that stays open (its client reads nothing)."""
    return _send(port, b"GET /kmeans/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")


def _send(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(data)
    return sock


def ping_latencies(url: str) -> list[float]:
    """Seconds each of PINGS sequential pings took, on one keep-alive connection."""
    latencies = []
    with httpx.Client(timeout=3) as client:
        for _ in range(PINGS):
            started = time.perf_counter()
            response = client.get(f"{url}/kmeans/ping")
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
            time.sleep(0.02)
    return sorted(latencies)


def upload_times(url: str) -> dict[str, float]:
    """Seconds a small raw CSV and a small multipart upload take (each must succeed)."""
    times = {}
    with httpx.Client(timeout=10) as client:
        started = time.perf_counter()
        raw = client.post(f"{url}/kmeans/datasets", content=CSV, headers={"Content-Type": "text/csv"})
        times["raw"] = time.perf_counter() - started
        assert raw.status_code == 201, raw.text
        started = time.perf_counter()
        multipart = client.post(f"{url}/kmeans/upload", files={"file": ("a.csv", CSV, "text/csv")})
        times["multipart"] = time.perf_counter() - started
        assert multipart.status_code == 200, multipart.text
    return times


def answer(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends on ``sock`` until it closes it (or ``deadline`` passes)."""
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def leftovers(data_dir: Path, within: float = 5) -> list[str]:
    """The files in the data dir's tmp/ once it has had ``within`` seconds to empty."""
    deadline = time.monotonic() + within
    while True:
        names = sorted(p.name for p in (data_dir / "tmp").iterdir())
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(0.1)


def embedded(port: int) -> list[str]:
    return [sys.executable, "server.py", "--port", str(port)]


@pytest.mark.parametrize("command", [embedded, dockerfile_command], ids=["python-server", "gunicorn"])
def test_stalled_clients_of_every_kind_hold_no_thread_and_stalled_bodies_get_408(
    command: Callable[[int], list[str]], tmp_path: Path
) -> None:
    data_dir, port = tmp_path / "data", free_port()
    env = {"KMEANS_BODY_IDLE_TIMEOUT": str(IDLE_TIMEOUT)}
    kinds: dict[str, Callable[[int], socket.socket]] = {
        "raw CSV body sent in part": stalled_raw,
        "multipart upload sent in part": stalled_multipart,
        "open event stream": open_stream,
    }
    opened: dict[str, list[socket.socket]] = {}
    stalled_at: dict[str, float] = {}
    with running(command(port), data_dir, port, tmp_path / "server.log", env=env) as url:
        try:
            upload_times(url)  # the first uploads start the parse threads
            usual = upload_times(url)
            # Stalled clients hold sockets, never threads: /ping answers as fast as it does without them.
            ping_limit = max(PING_LIMIT, 3 * ping_latencies(url)[int(0.95 * PINGS) - 1])
            for kind, open_one in kinds.items():
                stalled_at[kind] = time.monotonic()
                opened[kind] = [open_one(port) for _ in range(CLIENTS)]
                time.sleep(0.5)  # the server has taken them all in
                latencies = ping_latencies(url)
                p50, p95 = statistics.median(latencies), latencies[int(0.95 * PINGS) - 1]
                assert p95 < ping_limit, f"with {CLIENTS} x {kind}: /ping p50 {p50:.3f} s, p95 {p95:.3f} s"
                times = upload_times(url)
                for name, took in times.items():
                    limit = max(UPLOAD_LIMIT, 5 * usual[name])
                    assert took < limit, f"with {CLIENTS} x {kind}: a {name} upload took {took:.2f} s"
            # The measurements above were taken while every body was still stalled.
            assert time.monotonic() - stalled_at["raw CSV body sent in part"] < IDLE_TIMEOUT

            for kind in ("raw CSV body sent in part", "multipart upload sent in part"):
                deadline = stalled_at[kind] + IDLE_TIMEOUT + 10
                for sock in opened[kind]:
                    head, _, body = answer(sock, deadline).partition(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 408 "), (kind, head[:200])
                    assert b"application/problem+json" in head.lower() and b"connection: close" in head.lower()
                    problem = json.loads(body)
                    assert problem["status"] == 408 and "KMEANS_BODY_IDLE_TIMEOUT" in problem["detail"]
                    assert f"{IDLE_TIMEOUT} seconds" in problem["detail"]
            # After them the service is as before, the event streams still open.
            assert ping_latencies(url)[int(0.95 * PINGS) - 1] < ping_limit
            upload_times(url)
        finally:
            for socks in opened.values():
                for sock in socks:
                    with suppress(OSError):
                        sock.close()
        assert leftovers(data_dir) == []
