"""The soak test (issue 14): the Dockerfile's gunicorn command (two workers) on 127.0.0.1 under a
bounded mix of uploads (raw and multipart), fits, sweeps, predictions, SSE streams and stalled
clients, with one worker killed (SIGKILL) part-way. Afterwards: zero 5xx, every acknowledged
upload readable with its sha256, every job terminal, ``PRAGMA integrity_check`` ok, tmp/ clean.

Bounded: ``KMEANS_SOAK_SECONDS`` of load (default 30), every client loop bounded in count and
time, loopback only. Its figures are printed (``pytest -s``) for the closing note.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.e2e.conftest import dockerfile_command, free_port, running
from tests.e2e.test_jobs_crash_e2e import parent
from tests.e2e.test_jobs_e2e import process_tree

SECONDS = float(os.environ.get("KMEANS_SOAK_SECONDS", "30"))
MAX_REQUESTS_PER_CLIENT = 2000
STALLED = 20  # of each kind: partial raw bodies and partial multipart bodies


class Tally:
    """Counts of answers by status, and of connection errors, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.server_errors: list[str] = []
        self.uploads: dict[str, str] = {}  # dataset id -> sha256 of what was sent
        self.models: list[str] = []
        self.sweeps: list[str] = []

    def seen(self, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[response.status_code] += 1
            if response.status_code >= 500:
                where = f"{response.request.method} {response.request.url.path}"
                self.server_errors.append(f"{where}: {response.text[:300]}")

    def pick(self, rng: random.Random, kind: str) -> str | None:
        """A random one of what was made so far (``uploads``, ``models``), or None (after a pause) if none yet."""
        with self.lock:
            made = list(getattr(self, kind))
        if not made:
            time.sleep(0.1)
            return None
        return rng.choice(made)

    def failed(self, exc: Exception) -> None:
        with self.lock:
            self.errors[type(exc).__name__] += 1


def table(rng: random.Random, rows: int) -> bytes:
    centers = [(0, 0), (8, 8), (0, 8)]
    lines = ["x,y,segment"]
    for _ in range(rows):
        cx, cy = rng.choice(centers)
        lines.append(f"{cx + rng.gauss(0, 1):.4f},{cy + rng.gauss(0, 1):.4f},{rng.choice('ab')}")
    return ("\n".join(lines) + "\n").encode()


def client_loop(base: str, stop: float, tally: Tally, work, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=30) as http:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() > stop:
                return
            try:
                work(http, rng, tally)
            except httpx.TransportError as exc:  # the killed worker's connections
                tally.failed(exc)
                time.sleep(0.05)


def upload(http: httpx.Client, rng: random.Random, tally: Tally) -> None:
    content = table(rng, rng.randint(20, 3000))
    if rng.random() < 0.5:
        response = http.post("/kmeans/datasets", content=content, headers={"Content-Type": "text/csv"})
    else:
        response = http.post("/kmeans/datasets", files={"file": ("t.csv", content, "text/csv")})
    tally.seen(response)
    if response.status_code == 201:
        with tally.lock:
            tally.uploads[response.json()["id"]] = hashlib.sha256(content).hexdigest()


def fit_or_sweep(http: httpx.Client, rng: random.Random, tally: Tally) -> None:
    dataset = tally.pick(rng, "uploads")
    if dataset is None:
        return
    if rng.random() < 0.75:
        body = {"dataset_id": dataset, "params": {"n_clusters": rng.randint(2, 4), "random_state": 0}}
        response = http.post("/kmeans/models", json=body)
        tally.seen(response)
        if response.status_code == 202:
            with tally.lock:
                tally.models.append(response.json()["id"])
    else:
        response = http.post("/kmeans/sweeps", json={"dataset_id": dataset, "k_min": 2, "k_max": 4})
        tally.seen(response)
        if response.status_code == 202:
            with tally.lock:
                tally.sweeps.append(response.json()["id"])
    time.sleep(0.2)


def predict(http: httpx.Client, rng: random.Random, tally: Tally) -> None:
    model = tally.pick(rng, "models")
    if model is None:
        return
    points = {"data": [{"x": rng.uniform(0, 8), "y": rng.uniform(0, 8), "segment": "a"} for _ in range(20)]}
    response = http.post(f"/kmeans/models/{model}/predictions", json=points)
    tally.seen(response)  # 409 while the model is not fitted yet: fine
    tally.seen(http.get("/kmeans/models", params={"limit": 5}))


def listen(http: httpx.Client, rng: random.Random, tally: Tally) -> None:
    """An SSE stream of the project's events, held for a second or two."""
    until = time.monotonic() + rng.uniform(0.5, 2.0)
    with http.stream("GET", "/kmeans/events", headers={"Accept": "text/event-stream"}) as response:
        tally.seen(response)
        for _ in response.iter_lines():
            if time.monotonic() > until:
                break


def stalled_clients(port: int) -> list[socket.socket]:
    """Clients that send the start of a body and then stop (raw CSV and multipart)."""
    sockets = []
    for i in range(2 * STALLED):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            head = (
                "POST /kmeans/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                "Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
                "filename=\"s.csv\"\r\nContent-Type: text/csv\r\n\r\nx,y\n1,2\n"
            )
        else:
            head = (
                "POST /kmeans/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
                "Content-Length: 100000\r\n\r\nx,y\n1,2\n"
            )
        sock.sendall(head.encode())
        sockets.append(sock)
    return sockets


def workers(master: int) -> list[int]:
    """The pids of gunicorn's worker processes (the master's children)."""
    return sorted(pid for pid in process_tree(master) if parent(pid) == master)


def test_soak_two_workers_one_killed(tmp_path: Path):
    data_dir = tmp_path / "data"
    port = free_port()
    env = {"KMEANS_HEARTBEAT_TIMEOUT": "3", "KMEANS_FIT_TIME_LIMIT": "120"}
    with running(dockerfile_command(port), data_dir, port, tmp_path / "gunicorn.log", env=env) as base:
        tally = Tally()
        started = time.monotonic()
        stop = started + SECONDS
        kinds = [upload, upload, fit_or_sweep, predict, predict, listen, listen]
        threads = [
            threading.Thread(target=client_loop, args=(base, stop, tally, work, seed), daemon=True)
            for seed, work in enumerate(kinds)
        ]
        for thread in threads:
            thread.start()
        stalled = stalled_clients(port)
        ping_times = []
        killed = None
        for _ in range(int(SECONDS * 10) + 10):  # /ping while all of that goes on, and the kill
            now = time.monotonic()
            if now > stop:
                break
            if killed is None and now > started + SECONDS / 2:
                victims = workers(base.proc.pid)
                assert len(victims) == 2, victims
                killed = victims[0]
                os.kill(killed, signal.SIGKILL)
            try:
                t0 = time.monotonic()
                response = httpx.get(f"{base}/kmeans/ping", timeout=10)
                ping_times.append(time.monotonic() - t0)
                tally.seen(response)
            except httpx.TransportError as exc:
                tally.failed(exc)
            time.sleep(0.1)
        for thread in threads:
            thread.join(timeout=60)
        for sock in stalled:
            sock.close()
        assert killed is not None and killed not in workers(base.proc.pid)

        with httpx.Client(base_url=base, timeout=30) as http:
            deadline = time.monotonic() + 120  # every job ends: fits and sweeps of the dead worker included
            pending = {("models", m) for m in tally.models} | {("sweeps", s) for s in tally.sweeps}
            while pending and time.monotonic() < deadline:
                for kind, job in sorted(pending):
                    shown = http.get(f"/kmeans/{kind}/{job}")
                    tally.seen(shown)
                    if shown.status_code == 200 and shown.json()["status"] in ("succeeded", "failed", "cancelled"):
                        pending.discard((kind, job))
                time.sleep(0.5)
            assert not pending, f"{len(pending)} jobs not terminal, e.g. {sorted(pending)[:3]}"
            for dataset, digest in tally.uploads.items():
                shown = http.get(f"/kmeans/datasets/{dataset}")
                assert shown.status_code == 200 and shown.json()["sha256"] == digest, (dataset, shown.text)
            failed = [m for m in tally.models if http.get(f"/kmeans/models/{m}").json()["status"] != "succeeded"]
        ping_times.sort()
        print(
            f"\nsoak {SECONDS:.0f} s: answers {dict(sorted(tally.statuses.items()))}, connection errors"
            f" {dict(tally.errors)}, uploads {len(tally.uploads)}, fits {len(tally.models)} ({len(failed)} not"
            f" succeeded), sweeps {len(tally.sweeps)}, /ping p50 {ping_times[len(ping_times) // 2] * 1000:.0f} ms"
            f" p99 {ping_times[int(len(ping_times) * 0.99)] * 1000:.0f} ms, worker {killed} killed"
        )
        assert tally.server_errors == [], tally.server_errors[:5]
        assert len(tally.uploads) > 10 and len(tally.models) > 5
    with sqlite3.connect(data_dir / "kmeans.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert sorted(p.name for p in (data_dir / "tmp").iterdir()) == []
