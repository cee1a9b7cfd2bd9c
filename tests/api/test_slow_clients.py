"""Slow and stalled clients hold no thread of the handler pool (issue #14, item 1), in-process: the
app is called as the ASGI server would call it, with receive channels that stall, and the pool's
borrowed threads are counted while they do. (tests/e2e/test_slow_clients_e2e.py does the same
against real servers.)"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from kmeans.config import Settings
from kmeans.multipart import BodySpool, remove
from server import build_app

STALLED = 20  # of each kind
IDLE = 0.5  # seconds: the shortened KMEANS_BODY_IDLE_TIMEOUT of these apps


def http_scope(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    """The ASGI scope uvicorn would give a request from 127.0.0.1."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }


class Call:
    """One request to the app: what it was sent (``pieces``, then a stall until ``hang_up``) and its answer."""

    def __init__(self, method: str, path: str, headers: dict[str, str], pieces: list[bytes], complete: bool) -> None:
        self.scope = http_scope(method, path, headers)
        self.pieces, self.complete = list(pieces), complete
        self.gone = anyio.Event()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.finished = anyio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.pieces:
            piece = self.pieces.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(self.pieces) or not self.complete}
        await self.gone.wait()  # a stalled body, or a stream's client that stays: nothing more comes
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    async def run(self, app: Any) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        finally:
            self.finished.set()


def stalled_calls() -> list[Call]:
    """STALLED of each kind of body that stops arriving: raw CSV, multipart, JSON."""
    part = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n'
        b"Content-Type: text/csv\r\n\r\n1,2\n"
    )
    kinds = [
        ("/kmeans/datasets", {"content-type": "text/csv", "content-length": "100000"}, b"1,2\n3,4\n"),
        ("/kmeans/upload", {"content-type": "multipart/form-data; boundary=XyZ", "content-length": "100000"}, part),
        ("/kmeans/models", {"content-type": "application/json", "content-length": "1000"}, b'{"dataset_id": "'),
    ]
    return [Call("POST", path, headers, [start], False) for path, headers, start in kinds for _ in range(STALLED)]


async def ping(app: Any) -> float:
    """Seconds a GET /kmeans/ping takes (it must answer 200)."""
    call = Call("GET", "/kmeans/ping", {}, [b""], True)
    started = time.perf_counter()
    with anyio.fail_after(5):
        await call.run(app)
    assert call.status == 200, call.body
    return time.perf_counter() - started


async def quick_ping(app: Any) -> float:
    """The fastest of 3 pings (one slow answer on a busy machine is no stalled pool: that never answers)."""
    return min([await ping(app) for _ in range(3)])


@pytest.fixture
def app(tmp_path: Path, app_class: type) -> Any:
    return build_app(Settings(data_dir=tmp_path / "data", body_idle_timeout=IDLE, max_concurrent_fits=1), app_class)


@pytest.mark.both_apps
def test_stalled_bodies_hold_no_thread_and_get_408_after_the_idle_timeout(app: Any, tmp_path: Path) -> None:
    async def main() -> None:
        await ping(app)  # the middleware stack is built
        limiter = anyio.to_thread.current_default_thread_limiter()
        calls = stalled_calls()
        async with anyio.create_task_group() as tasks:
            for call in calls:
                tasks.start_soon(call.run, app)
            await anyio.sleep(IDLE / 5)
            # Every body is waiting for its client: none of them holds a thread of the pool.
            assert limiter.borrowed_tokens == 0
            assert await quick_ping(app) < 0.1
            ok = Call("POST", "/kmeans/datasets", {"content-type": "text/csv", "content-length": "8"}, [b"1,2\n3,4\n"],
                      True)
            await ok.run(app)
            assert ok.status == 201, ok.body
            with anyio.fail_after(IDLE * 10):
                for call in calls:
                    await call.finished.wait()
            for call in calls:
                call.gone.set()
        for call in calls:
            assert call.status == 408, (call.scope["path"], call.status, call.body)
            assert call.headers["content-type"] == "application/problem+json"
            assert call.headers["connection"] == "close"
            problem = json.loads(call.body)
            assert "KMEANS_BODY_IDLE_TIMEOUT" in problem["detail"] and f"{IDLE:g} seconds" in problem["detail"]

    anyio.run(main)
    assert sorted((tmp_path / "data" / "tmp").iterdir()) == []


@pytest.mark.both_apps
def test_open_event_streams_hold_no_thread_and_end_when_their_clients_go(app: Any) -> None:
    async def main() -> None:
        await ping(app)
        limiter = anyio.to_thread.current_default_thread_limiter()
        streams = [Call("GET", "/kmeans/events", {"accept": "text/event-stream"}, [b""], True) for _ in range(60)]
        async with anyio.create_task_group() as tasks:
            for stream in streams:
                tasks.start_soon(stream.run, app)
            await anyio.sleep(0.3)  # the handlers have run (each takes a thread for its first read)
            borrowed = []
            for _ in range(20):  # 1 s: four polls of each stream
                await anyio.sleep(0.05)
                borrowed.append(limiter.borrowed_tokens)
            # Only the short database reads of the polls take a thread, never a wait for the client
            # (before, each stream held one nearly all the time: all 40 were borrowed at every look).
            assert statistics.median(borrowed) <= 5, str(borrowed)
            assert await quick_ping(app) < 0.1
            assert all(s.status == 200 and s.body.startswith(b"retry: 1000") for s in streams)
            for stream in streams:
                stream.gone.set()
            with anyio.fail_after(2):  # they end at once, not at their next poll or keep-alive
                for stream in streams:
                    await stream.finished.wait()

    anyio.run(main)


def test_a_body_stays_in_memory_up_to_a_mib_then_goes_to_one_file_hashed(tmp_path: Path) -> None:
    import hashlib

    names = iter(range(10))
    body = b"1,2\n" * 1_000_000  # 4 MB: several batches for the writer threads

    async def main() -> None:
        small = BodySpool(lambda: tmp_path / f"{next(names)}.body")
        await small.write(b"1,2\n" * 1000)
        assert await small.result() == b"1,2\n" * 1000 and small.files == []

        large = BodySpool(lambda: tmp_path / f"{next(names)}.body")
        for i in range(0, len(body), 65536):
            await large.write(body[i : i + 65536])
        spooled = await large.result()
        assert spooled.path.read_bytes() == body and spooled.size == len(body)
        assert spooled.sha256 == hashlib.sha256(body).hexdigest() and spooled.state == "complete"
        remove(large.files)

        failed = BodySpool(lambda: tmp_path / f"{next(names)}.body")
        for i in range(0, len(body), 65536):
            await failed.write(body[i : i + 65536])
        await failed.close()  # the request failed half-way
        assert failed.files[0].state == "abandoned"
        remove(failed.files)

    anyio.run(main)
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.both_apps
def test_a_body_is_read_only_after_the_token_check(tmp_path: Path, app_class: type) -> None:
    app = build_app(Settings(data_dir=tmp_path / "data", body_idle_timeout=IDLE, auth_required=True), app_class)

    async def main() -> None:
        stalled = stalled_calls()[0]  # a raw CSV body that stops after 8 bytes, without a token
        started = time.monotonic()
        with anyio.fail_after(IDLE * 4):
            await stalled.run(app)
        assert stalled.status == 401, stalled.body  # at once: not a 408 after waiting for the body
        assert time.monotonic() - started < IDLE

    anyio.run(main)
    assert sorted((tmp_path / "data" / "tmp").iterdir()) == []
