"""Real server processes on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dockerfile_command(port: int) -> list[str]:
    """The Dockerfile's CMD, bound to 127.0.0.1:port instead of the container's 0.0.0.0:8080."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    cmd = json.loads(next(line for line in reversed(lines) if line.startswith("CMD "))[4:])
    bind = cmd.index("--bind") + 1
    assert cmd[bind] == "0.0.0.0:8080", cmd
    cmd[bind] = f"127.0.0.1:{port}"
    return cmd


class Server(str):
    """The base URL of a running server, which also knows its process."""

    proc: subprocess.Popen


@contextmanager
def running(
    cmd: Sequence[str], data_dir: Path, port: int, log: Path, timeout: float = 60, env: dict | None = None
) -> Iterator[Server]:
    """Start ``cmd``, wait until /kmeans/ping answers, yield the base URL, then stop it."""
    env = {**os.environ, "KMEANS_DATA_DIR": str(data_dir), **(env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = Server(f"http://127.0.0.1:{port}")
    url.proc = proc
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/kmeans/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything the server left behind


@pytest.fixture
def gunicorn_server(tmp_path: Path):
    """A factory: start the Dockerfile's gunicorn command on a free port over ``data_dir``."""

    def start(data_dir: Path, **env: str):
        port = free_port()
        return running(dockerfile_command(port), data_dir, port, tmp_path / "gunicorn.log", env=env)

    return start


@pytest.fixture
def embedded_server(tmp_path: Path):
    """A factory: start ``python server.py`` (the README's command) on a free port."""

    def start(data_dir: Path):
        port = free_port()
        cmd = [sys.executable, "server.py", "--port", str(port), "--data-dir", str(data_dir)]
        return running(cmd, data_dir, port, tmp_path / "embedded.log")

    return start
