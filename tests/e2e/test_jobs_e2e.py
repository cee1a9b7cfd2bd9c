"""Fit jobs through the real production server (gunicorn, 2 uvicorn workers): live events
from any worker, abandoned event streams, and recovery after kill -9 of the server."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.e2e

# About 0.05 s per init on this dataset: n_init sets how long a fit runs.
ROWS = 8000


def make_dataset(url: str) -> str:
    values = np.random.default_rng(0).normal(size=(ROWS, 8)).round(4)
    body = "\n".join(",".join(map(str, row)) for row in values.tolist())
    response = httpx.post(f"{url}/kmeans/datasets", content=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def start_fit(url: str, dataset_id: str, n_init: int) -> str:
    params = {"n_clusters": 20, "init": "random", "n_init": n_init, "random_state": 0}
    response = httpx.post(f"{url}/kmeans/models", json={"dataset_id": dataset_id, "params": params})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def model(url: str, model_id: str) -> dict:
    return httpx.get(f"{url}/kmeans/models/{model_id}", timeout=10).json()


def wait_for(url: str, model_id: str, predicate, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = model(url, model_id)
        if predicate(current):
            return current
        time.sleep(0.1)
    raise AssertionError(f"model {model_id} never got there: {current}")


def stream_events(url: str, model_id: str, timeout: float = 60) -> list[dict]:
    """All model events of one stream, read until the server closes it."""
    events = []
    with httpx.stream("GET", f"{url}/kmeans/models/{model_id}/events", timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_events_stream_from_either_worker_until_the_fit_ends(gunicorn_server, tmp_path: Path):
    with gunicorn_server(tmp_path / "data") as url:
        model_id = start_fit(url, make_dataset(url), n_init=20)
        # Several streams on separate connections: gunicorn spreads them over both workers,
        # and each must follow the fit wherever it runs.
        with ThreadPoolExecutor(4) as pool:
            streams = list(pool.map(lambda _: stream_events(url, model_id), range(4)))
        for events in streams:
            assert events[-1]["status"] == "succeeded"
            running = [e for e in events if e["status"] == "running"]
            assert running, events
            progress = [e["progress"] for e in running]
            assert progress == sorted(progress)
            assert any("init" in (e["phase"] or "") for e in running)


def test_abandoned_event_streams_do_not_exhaust_the_server(gunicorn_server, tmp_path: Path):
    with gunicorn_server(tmp_path / "data") as url:
        model_id = start_fit(url, make_dataset(url), n_init=1000)
        for _ in range(30):  # more than each worker's request threads
            with httpx.stream("GET", f"{url}/kmeans/models/{model_id}/events", timeout=10) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        break  # hang up after the first event
        time.sleep(3)  # the streams notice the hang-ups at their next keep-alive
        started = time.monotonic()
        for _ in range(10):
            assert httpx.get(f"{url}/kmeans/ping", timeout=5).status_code == 200
        assert time.monotonic() - started < 5
        assert httpx.post(f"{url}/kmeans/models/{model_id}/cancel").json()["status"] == "cancelled"


def process_tree(root: int) -> set[int]:
    """``root`` and all its descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_server_mid_fit(server, url: str, model_id: str) -> None:
    """kill -9 the gunicorn master and workers while the fit runs; the fit's own process must
    die with them (it is never killed directly here)."""
    wait_for(url, model_id, lambda m: m["status"] == "running" and m["progress"] > 0)
    tree = process_tree(server.proc.pid)
    servers = {server.proc.pid} | {
        pid for pid in tree if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    }
    for pid in servers:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in tree if alive(pid)], "processes of the killed server are still running"


def test_kill_9_mid_fit_requeues_once_then_fails(gunicorn_server, tmp_path: Path):
    data_dir = tmp_path / "data"
    env = {"KMEANS_HEARTBEAT_TIMEOUT": "5"}
    with gunicorn_server(data_dir, **env) as url:
        dataset_id = make_dataset(url)
        model_id = start_fit(url, dataset_id, n_init=60)
        kill_server_mid_fit(url, url, model_id)
    with gunicorn_server(data_dir, **env) as url:
        # Not left "running": the new server sees no heartbeat, re-queues it, and fits it.
        done = wait_for(url, model_id, lambda m: m["status"] not in ("queued", "running"))
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2

        second = start_fit(url, dataset_id, n_init=1000)
        kill_server_mid_fit(url, url, second)
    with gunicorn_server(data_dir, **env) as url:
        wait_for(url, second, lambda m: m["status"] == "running" and m["attempts"] == 2 and m["progress"] > 0)
        kill_server_mid_fit(url, url, second)
    with gunicorn_server(data_dir, **env) as url:
        failed = wait_for(url, second, lambda m: m["status"] not in ("queued", "running"))
        assert failed["status"] == "failed"
        assert "stopped answering" in failed["error"]["detail"]
        assert "2 attempts" in failed["error"]["detail"]
