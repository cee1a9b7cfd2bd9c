"""Fit jobs: states, progress, cancel (the process is gone), time limits, events, webhooks,
idempotency, and recovery of fits whose process stopped beating."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from api_helpers import sse
from starlette.testclient import TestClient

from kmeans.config import Settings
from kmeans.jobs import MAX_ATTEMPTS, Dispatcher
from kmeans.store import Store
from server import build_app
from tests.conftest import local_client, wait_for_model

LONG_FIT = {"n_clusters": 20, "init": "random", "n_init": 1000, "random_state": 0}


@pytest.fixture
def app_client(settings: Settings, app_class: type):
    """A factory for clients over apps with changed settings (lifespan runs: fits are dispatched)."""
    clients = []

    def make(**changes) -> TestClient:
        client = local_client(build_app(replace(settings, **changes), app_class))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def dataset(client: TestClient, rows: int = 8_000) -> str:
    values = np.random.default_rng(0).normal(size=(rows, 8)).round(4)
    body = "\n".join(",".join(map(str, row)) for row in values.tolist()).encode()
    response = client.post("/kmeans/datasets", content=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def fit(client: TestClient, dataset_id: str, params: dict, **extra) -> dict:
    response = client.post("/kmeans/models", json={"dataset_id": dataset_id, "params": params, **extra})
    assert response.status_code == 202, response.text
    return response.json()


def wait_until(predicate, timeout: float = 20, every: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not true within {timeout} s")


def job_pid(client: TestClient, kind: str, job_id: str) -> int:
    """The pid of the local process running a job (a fit or a sweep)."""
    dispatcher = client.app.service.dispatcher
    key = (kind, job_id)
    return wait_until(lambda: key in dispatcher._active and dispatcher._active[key].run.process.pid)


def fit_pid(client: TestClient, model_id: str) -> int:
    """The pid of the local process running a model's fit."""
    return job_pid(client, "fit", model_id)


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.split(") ")[1].startswith("Z")  # a zombie no longer runs


def test_fit_goes_queued_running_succeeded_with_progress_and_timestamps(client: TestClient):
    ds = dataset(client, 3000)
    model = fit(client, ds, {"n_clusters": 4, "n_init": 3, "random_state": 0})
    assert model["status"] in ("queued", "running")
    assert model["progress"] < 1 and model["queued_at"]
    done = wait_for_model(client, model["id"])
    assert done["status"] == "succeeded"
    assert done["progress"] == 1.0 and done["phase"] == "done"
    assert done["attempts"] == 1
    assert done["queued_at"] <= done["started_at"] <= done["finished_at"]
    assert done["error"] is None


def test_running_fit_reports_progress_and_phase(client: TestClient):
    ds = dataset(client)
    model = fit(client, ds, LONG_FIT)
    seen = wait_until(
        lambda: (m := client.get(f"/kmeans/models/{model['id']}").json())["status"] == "running"
        and m["progress"] > 0
        and m
    )
    assert "init " in seen["phase"] and " of 1000" in seen["phase"]
    assert 0 < seen["progress"] < 1
    client.post(f"/kmeans/models/{model['id']}/cancel")


def test_cancel_running_fit_kills_its_process_within_two_seconds(client: TestClient):
    ds = dataset(client)
    model = fit(client, ds, LONG_FIT)
    pid = fit_pid(client, model["id"])
    started = time.monotonic()
    response = client.post(f"/kmeans/models/{model['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    wait_until(lambda: process_gone(pid), timeout=2)
    assert time.monotonic() - started < 2
    assert client.get(f"/kmeans/models/{model['id']}").json()["status"] == "cancelled"


def finished_pids(launcher) -> list[int]:
    """The fit processes whose latest fit the dispatcher has seen end (read, not polled: the
    dispatcher's thread alone talks to them)."""
    return [run.process.pid for run in list(launcher._runs) if run.ended is not None]


def test_a_fit_process_runs_the_next_fit_and_a_cancelled_one_is_replaced(client: TestClient):
    dataset_id = dataset(client)
    launcher = client.app.service.dispatcher.launcher
    pids = []
    for seed in (0, 1):
        model = fit(client, dataset_id, {"n_clusters": 3, "random_state": seed})
        assert wait_for_model(client, model["id"])["status"] == "succeeded"
        pids.append(wait_until(lambda: finished_pids(launcher)))
    assert pids[0] == pids[1] and len(pids[1]) == 1  # one process, reused
    first = pids[0][0]
    long = fit(client, dataset_id, LONG_FIT)
    assert fit_pid(client, long["id"]) == first
    assert client.post(f"/kmeans/models/{long['id']}/cancel").status_code == 200
    wait_until(lambda: process_gone(first), timeout=5)  # killed, or stopped by itself and gone
    model = fit(client, dataset_id, {"n_clusters": 3, "random_state": 2})
    assert wait_for_model(client, model["id"])["status"] == "succeeded"
    assert wait_until(lambda: finished_pids(launcher)) != [first]


def test_fifo_queue_is_bounded_and_a_queued_fit_can_be_cancelled(app_client):
    client = app_client(max_concurrent_fits=1)
    ds = dataset(client)
    first = fit(client, ds, LONG_FIT)
    second = fit(client, ds, {"n_clusters": 3})
    wait_until(lambda: client.get(f"/kmeans/models/{first['id']}").json()["status"] == "running")
    time.sleep(0.5)  # several dispatcher rounds: the second must keep waiting for the first
    assert client.get(f"/kmeans/models/{second['id']}").json()["status"] == "queued"
    cancelled = client.post(f"/kmeans/models/{second['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None
    third = fit(client, ds, {"n_clusters": 3})
    client.post(f"/kmeans/models/{first['id']}/cancel")
    assert wait_for_model(client, third["id"])["status"] == "succeeded"


@pytest.mark.both_apps
def test_cancel_of_a_finished_fit_is_409_and_of_an_unknown_one_404(client: TestClient):
    ds = dataset(client, 100)
    model = wait_for_model(client, fit(client, ds, {"n_clusters": 2})["id"])
    response = client.post(f"/kmeans/models/{model['id']}/cancel")
    assert response.status_code == 409
    assert "succeeded" in response.json()["detail"]
    assert client.post("/kmeans/models/m_0000000000000000/cancel").status_code == 404


def test_time_limit_fails_the_fit_with_the_reason_and_frees_the_cpu(client: TestClient):
    ds = dataset(client)
    model = fit(client, ds, LONG_FIT, time_limit=0.5)
    pid = fit_pid(client, model["id"])
    done = wait_for_model(client, model["id"], timeout=10)
    assert done["status"] == "failed"
    assert "time limit of 0.5 s" in done["error"]["detail"]
    wait_until(lambda: process_gone(pid), timeout=2)


def test_server_default_time_limit_applies(app_client):
    client = app_client(fit_time_limit=1)
    model = fit(client, dataset(client), LONG_FIT)
    assert model["time_limit"] == 1
    done = wait_for_model(client, model["id"], timeout=10)
    assert done["status"] == "failed" and "time limit of 1 s" in done["error"]["detail"]


def test_deleting_a_running_fit_cancels_it_first(client: TestClient):
    model = fit(client, dataset(client), LONG_FIT)
    pid = fit_pid(client, model["id"])
    assert client.delete(f"/kmeans/models/{model['id']}").status_code == 204
    wait_until(lambda: process_gone(pid), timeout=2)
    assert client.get(f"/kmeans/models/{model['id']}").status_code == 404


@pytest.mark.both_apps
def test_idempotency_key_returns_the_same_model_and_refuses_another_body(client: TestClient):
    ds = dataset(client, 100)
    headers = {"Idempotency-Key": "fit-once-42"}
    body = {"dataset_id": ds, "params": {"n_clusters": 2}}
    first = client.post("/kmeans/models", json=body, headers=headers)
    again = client.post("/kmeans/models", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert client.get("/kmeans/models").json()["total"] == 1
    other = client.post("/kmeans/models", json={**body, "params": {"n_clusters": 3}}, headers=headers)
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["detail"]
    fresh = client.post("/kmeans/models", json=body, headers={"Idempotency-Key": "another"})
    assert fresh.json()["id"] != first.json()["id"]


def sse_events(text: str) -> list[dict]:
    return sse(text, "model")


@pytest.mark.both_apps
def test_events_stream_changes_until_the_fit_ends_and_honour_last_event_id(client: TestClient):
    model = fit(client, dataset(client, 5000), {"n_clusters": 5, "n_init": 20, "random_state": 0})
    response = client.get(f"/kmeans/models/{model['id']}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1]["status"] == "succeeded"
    ids = [e["event_id"] for e in events]
    assert len(ids) >= 2 and ids == sorted(set(ids))
    assert {e["id"] for e in events} == {model["id"]}
    again = client.get(f"/kmeans/models/{model['id']}/events", headers={"Last-Event-ID": str(ids[-1])})
    assert sse_events(again.text) == []
    earlier = client.get(f"/kmeans/models/{model['id']}/events", headers={"Last-Event-ID": str(ids[-1] - 1)})
    assert [e["event_id"] for e in sse_events(earlier.text)] == [ids[-1]]
    assert client.get("/kmeans/models/m_0000000000000000/events").status_code == 404


class Receiver:
    """A webhook receiver on 127.0.0.1 that records what it is sent."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[dict] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 -- http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.calls.append(body)
                self.send_response(503 if len(receiver.calls) <= receiver.fail_first else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver(fail_first=1)
    yield hook
    hook.close()


def test_webhook_is_delivered_with_retries_to_an_allowed_local_receiver(app_client, receiver: Receiver):
    client = app_client(webhook_allow=("127.0.0.1",), webhook_max_wait=0.2)
    model = fit(client, dataset(client, 100), {"n_clusters": 2}, callback_url=receiver.url)
    wait_for_model(client, model["id"])
    delivered = wait_until(lambda: (m := client.get(f"/kmeans/models/{model['id']}").json())["callback"]
                           and m["callback"]["state"] == "delivered" and m)
    assert delivered["callback"]["attempts"] == 2  # the first call got a 503
    assert len(receiver.calls) == 2
    assert receiver.calls[-1]["event"] == "model.succeeded"
    assert receiver.calls[-1]["model"]["id"] == model["id"]


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://127.0.0.1:9/hook", ["private or loopback"]),
        ("http://10.1.2.3/hook", ["private or loopback"]),
        ("http://[::1]:9/hook", ["private or loopback"]),
        ("ftp://example.com/hook", ["http or https"]),
        ("file:///etc/passwd", ["http or https"]),
    ],
)
def test_webhook_to_a_private_address_or_other_scheme_is_refused(client: TestClient, url: str, words: list[str]):
    ds = dataset(client, 100)
    response = client.post("/kmeans/models", json={"dataset_id": ds, "callback_url": url})
    assert response.status_code == 422
    problem = response.json()
    assert problem["parameter"] == "callback_url"
    for word in words:
        assert word in problem["detail"]
    assert client.get("/kmeans/models").json()["total"] == 0


class NoLauncher:
    """A launcher for dispatcher unit tests: runs nothing."""

    def start(self, model):
        raise AssertionError("not expected to start fits")

    def close(self):
        pass


def test_a_fit_whose_process_stops_beating_is_requeued_once_then_failed(settings: Settings):
    store = Store(settings.data_dir)
    store.add_dataset(
        {"id": "ds_00000000000000aa", "name": "d", "rows": 4, "n_features": 1, "columns": ["x1"],
         "sha256": "0", "size_bytes": 1, "created_at": "2026-01-01T00:00:00+00:00"},
        np.zeros((4, 1)),
    )
    store.add_model({
        "id": "m_00000000000000aa", "dataset_id": "ds_00000000000000aa", "status": "queued", "params": {},
        "created_at": "2026-01-01T00:00:00+00:00", "queued_at": "2026-01-01T00:00:00+00:00",
        "rows": 4, "n_features": 1, "columns": ["x1"],
    })
    dispatcher = Dispatcher(store, NoLauncher(), max_running=1, heartbeat_timeout=5)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claimed = store.claim_next("gone-host:1", 1, f"token{attempt}")
        assert claimed["attempts"] == attempt
        store.update_model(claimed["id"], heartbeat=time.time() - 60)  # its process died a minute ago
        assert dispatcher.recover_stale() == 1
        model = store.get_model(claimed["id"])
        if attempt < MAX_ATTEMPTS:
            assert model["status"] == "queued" and "re-queued" in model["phase"]
    assert model["status"] == "failed"
    assert "stopped answering" in model["error"]["detail"] and "attempts" in model["error"]["detail"]


def test_fresh_heartbeats_are_left_alone(settings: Settings):
    store = Store(settings.data_dir)
    dispatcher = Dispatcher(store, NoLauncher(), max_running=1, heartbeat_timeout=5)
    assert dispatcher.recover_stale() == 0
    assert os.listdir(settings.data_dir / "tmp") == []
