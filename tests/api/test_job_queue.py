"""One queue for all background work: sweeps as jobs (cancel, time limit, events, recovery),
fair share between projects, the queue at /jobs and the project event stream at /events."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
from api_helpers import sse
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from kmeans import sweeps
from kmeans.config import Settings
from kmeans.store import Store, fair_order, now
from server import build_app
from tests.api.test_jobs import LONG_FIT, dataset, fit, job_pid, process_gone, wait_until
from tests.conftest import local_client, wait_until_done

LONG_SWEEP = {"init": "random", "n_init": 1000, "random_state": 0}


def sweep(client: TestClient, dataset_id: str, k_min: int = 2, k_max: int = 4, params: dict | None = None, **extra):
    body = {"dataset_id": dataset_id, "k_min": k_min, "k_max": k_max, "params": params or {"random_state": 0}}
    response = client.post("/kmeans/sweeps", json={**body, **extra})
    assert response.status_code == 202, response.text
    return response.json()


@pytest.fixture
def roomy(settings: Settings, app_class: type):
    """A client of an app that takes uploads of up to 64 MB."""
    with local_client(build_app(replace(settings, max_upload_bytes=64_000_000), app_class)) as client:
        yield client


@pytest.fixture
def one_slot(settings: Settings, app_class: type):
    with local_client(build_app(replace(settings, max_concurrent_fits=1), app_class)) as client:
        yield client


# -- sweeps are jobs --------------------------------------------------------------------------


@pytest.mark.both_apps
def test_a_sweep_is_queued_at_once_streams_its_progress_and_succeeds(client: TestClient):
    ds = dataset(client, 2000)
    started = time.monotonic()
    created = sweep(client, ds, 2, 5)
    assert time.monotonic() - started < 5 and created["status"] in ("queued", "running")
    assert created["time_limit"] == 3600 and created["attempts"] in (0, 1)
    events = sse(client.get(f"/kmeans/sweeps/{created['id']}/events").text, "sweep")
    assert events[-1]["status"] == "succeeded" and events[-1]["recommended_k"] is not None
    assert [e["event_id"] for e in events] == sorted({e["event_id"] for e in events})
    seen_results = [len(e["results"]) for e in events]
    assert seen_results == sorted(seen_results) and seen_results[-1] == 4  # results arrive k by k
    done = client.get(f"/kmeans/sweeps/{created['id']}").json()
    assert done["attempts"] == 1 and done["progress"] == 1.0 and "run_token" not in done and "worker" not in done
    again = client.get(f"/kmeans/sweeps/{created['id']}/events", headers={"Last-Event-ID": str(events[-1]["event_id"])})
    assert sse(again.text, "sweep") == []
    assert client.get("/kmeans/sweeps/sw_0000000000000000/events").status_code == 404


def test_cancelling_a_running_sweep_kills_its_process_within_two_seconds(client: TestClient):
    created = sweep(client, dataset(client), 2, 30, LONG_SWEEP)
    pid = job_pid(client, "sweep", created["id"])
    started = time.monotonic()
    response = client.post(f"/kmeans/sweeps/{created['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    wait_until(lambda: process_gone(pid), timeout=2)
    assert time.monotonic() - started < 2
    again = client.post(f"/kmeans/sweeps/{created['id']}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    assert client.post("/kmeans/sweeps/sw_0000000000000000/cancel").status_code == 404


def test_a_sweep_over_its_time_limit_fails_with_the_reason_and_frees_the_cpu(client: TestClient):
    created = sweep(client, dataset(client), 2, 30, LONG_SWEEP, time_limit=0.5)
    pid = job_pid(client, "sweep", created["id"])
    done = wait_until_done(client, f"/kmeans/sweeps/{created['id']}", timeout=10)
    assert done["status"] == "failed" and "time limit of 0.5 s" in done["error"]["detail"]
    assert done["error"]["title"] == "Sweep Failed"
    wait_until(lambda: process_gone(pid), timeout=2)


@pytest.mark.parametrize("limit", [0, -1, 1e9, "soon"])
def test_a_bad_time_limit_is_refused_by_the_spec(client: TestClient, limit):
    response = client.post("/kmeans/sweeps", json={"dataset_id": "ds_0000000000000000", "k_min": 2, "k_max": 3,
                                                   "time_limit": limit})
    assert response.status_code == 400 and "time_limit" in response.json()["detail"]


def test_deleting_a_running_sweep_cancels_it_first(client: TestClient):
    ds = dataset(client)
    created = sweep(client, ds, 2, 30, LONG_SWEEP)
    pid = job_pid(client, "sweep", created["id"])
    assert client.delete(f"/kmeans/datasets/{ds}").status_code == 409  # in use by the sweep
    assert client.delete(f"/kmeans/sweeps/{created['id']}").status_code == 204
    wait_until(lambda: process_gone(pid), timeout=2)
    assert client.get(f"/kmeans/sweeps/{created['id']}").status_code == 404
    assert client.delete(f"/kmeans/sweeps/{created['id']}").status_code == 404


def test_a_requeued_sweep_goes_on_from_the_k_values_it_finished(client: TestClient):
    service = client.app.service
    ds = service.store.get_dataset(dataset(client, 500))
    record = sweeps.new_record(ds, 2, 4, {"random_state": 0}, service.plan_fit(ds, {}, sweep=True), time_limit=60)
    # As a sweep whose process died after k=2 and that the heartbeat check put back in the queue.
    marker = {"k": 2, "inertia": 12345.0, "n_iter": 1, "silhouette": 0.5, "davies_bouldin": 1.0,
              "calinski_harabasz": 1.0, "fit_seconds": 0.0}
    record.update(results=[marker], attempts=1, phase="re-queued: the sweep process ended with exit code -9")
    service.store.add_sweep(record)
    service.dispatcher.wake()
    done = wait_until_done(client, f"/kmeans/sweeps/{record['id']}")
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert [r["k"] for r in done["results"]] == [2, 3, 4] and done["results"][0] == marker


# -- the queue --------------------------------------------------------------------------------


def test_jobs_lists_the_queue_with_places_and_fits_and_sweeps_share_it(one_slot: TestClient):
    client = one_slot
    ds = dataset(client)
    first = fit(client, ds, LONG_FIT)
    wait_until(lambda: client.get(f"/kmeans/models/{first['id']}").json()["status"] == "running")
    queued_sweep = sweep(client, ds, 2, 3)
    queued_fit = fit(client, ds, {"n_clusters": 3})
    jobs = client.get("/kmeans/jobs").json()
    assert [(j["kind"], j["id"], j["status"], j["position"]) for j in jobs["items"]] == [
        ("fit", first["id"], "running", None),
        ("sweep", queued_sweep["id"], "queued", 1),
        ("fit", queued_fit["id"], "queued", 2),
    ]
    assert jobs["total"] == 3 and jobs["items"][1]["resource"] == f"/kmeans/sweeps/{queued_sweep['id']}"
    assert [j["id"] for j in client.get("/kmeans/jobs?kind=sweep").json()["items"]] == [queued_sweep["id"]]
    client.post(f"/kmeans/models/{first['id']}/cancel")
    assert wait_until_done(client, f"/kmeans/sweeps/{queued_sweep['id']}")["status"] == "succeeded"
    assert wait_until_done(client, f"/kmeans/models/{queued_fit['id']}")["status"] == "succeeded"
    assert client.get("/kmeans/jobs").json()["items"] == []
    cancelled = client.get("/kmeans/jobs?status=cancelled").json()["items"]
    assert [j["id"] for j in cancelled] == [first["id"]]
    assert client.get("/kmeans/jobs?status=sleeping").status_code == 400


def test_the_event_stream_shows_every_job_change_and_resumes_after_last_event_id(client: TestClient, monkeypatch):
    from kmeans.api import jobs

    monkeypatch.setattr(jobs, "EVENT_STREAM_SECONDS", 1.0)  # a stream ends after this long
    ds = dataset(client, 200)
    model = fit(client, ds, {"n_clusters": 2})
    swept = sweep(client, ds, 2, 3)
    wait_until_done(client, f"/kmeans/models/{model['id']}")
    wait_until_done(client, f"/kmeans/sweeps/{swept['id']}")
    events = sse(client.get("/kmeans/events", headers={"Last-Event-ID": "0"}).text, "job")
    statuses: dict[tuple, list] = {}
    for event in events:
        statuses.setdefault((event["kind"], event["id"]), []).append(event["status"])
    assert statuses == {
        ("fit", model["id"]): ["queued", "running", "succeeded"],
        ("sweep", swept["id"]): ["queued", "running", "succeeded"],
    }
    assert events[0]["resource"] == f"/kmeans/models/{model['id']}" and events[0]["project"] == "default"
    middle = events[2]["event_id"]
    rest = sse(client.get("/kmeans/events", headers={"Last-Event-ID": str(middle)}).text, "job")
    assert rest == events[3:]
    assert sse(client.get("/kmeans/events").text, "job") == []  # without Last-Event-ID: from now on


# -- fair share -------------------------------------------------------------------------------


def queued_jobs(draw_counts: list[int]) -> list[dict]:
    jobs, stamp = [], 0
    for project, count in enumerate(draw_counts):
        for n in range(count):
            stamp += 1
            jobs.append({"kind": "fit", "id": f"{project}-{n}", "project": f"p{project}", "queued_at": f"{stamp:06d}"})
    return jobs


@given(st.lists(st.integers(0, 6), min_size=1, max_size=5), st.randoms())
def test_fair_order_is_fifo_within_a_project_and_round_robin_between_them(counts, rnd):
    jobs = queued_jobs(counts)
    shuffled = jobs[:]
    rnd.shuffle(shuffled)
    order = fair_order(shuffled, {}, {})
    assert sorted(j["id"] for j in order) == sorted(j["id"] for j in jobs)
    for project in {j["project"] for j in jobs}:
        mine = [j["id"] for j in order if j["project"] == project]
        assert mine == [j["id"] for j in jobs if j["project"] == project]  # first in, first out
    for n in range(1, len(order) + 1):  # in every prefix, projects that still wait are within one turn
        taken = {}
        for j in order[:n]:
            taken[j["project"]] = taken.get(j["project"], 0) + 1
        waiting = {p for p in (j["project"] for j in order[n:])}
        counts_waiting = [taken.get(p, 0) for p in waiting]
        if counts_waiting:
            assert max(taken.values(), default=0) - min(counts_waiting) <= 1


def test_a_project_that_runs_less_goes_first():
    jobs = queued_jobs([2, 2])
    assert fair_order(jobs, {"p0": 1}, {})[0]["project"] == "p1"
    assert fair_order(jobs, {}, {"p0": "2026-01-02", "p1": "2026-01-01"})[0]["project"] == "p1"


def test_two_projects_interleave_under_a_backlog(tmp_path):
    store = Store(tmp_path / "data")
    store.add_project("other", "")
    ds = {"id": "ds_00000000000000aa", "name": "d", "rows": 4, "n_features": 1, "columns": ["x1"],
          "sha256": "0", "size_bytes": 1, "created_at": now()}

    store.add_dataset(ds, np.zeros((4, 1)))
    names = []
    for project, count in (("default", 5), ("other", 2)):  # the default project's backlog came first
        for n in range(count):
            model_id = f"m_{project[:4]}{n:012d}"
            names.append(model_id)
            stamp = now()
            store.add_model({"id": model_id, "dataset_id": ds["id"], "status": "queued", "params": {},
                             "created_at": stamp, "queued_at": stamp, "rows": 4, "n_features": 1, "columns": ["x1"],
                             "project": project})
    started = []
    while (job := store.claim_next("here:1", 1, "token")) is not None:
        started.append(job["project"])
        store.update_model(job["id"], status="succeeded")
    assert started == ["default", "other", "default", "other", "default", "default", "default"]


# -- pause, resume, copy ----------------------------------------------------------------------


def big_dataset(client: TestClient, rows: int = 100_000) -> tuple[str, np.ndarray]:

    values = np.random.default_rng(0).normal(size=(rows, 4)).round(3)
    body = "\n".join(",".join(map(str, row)) for row in values.tolist()).encode()
    response = client.post("/kmeans/datasets", content=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 201, response.text
    return response.json()["id"], values


SLOW_KMEANS = {"n_clusters": 30, "init": "random", "n_init": 1, "tol": 0, "max_iter": 3000, "random_state": 0}


def test_a_paused_fit_frees_its_process_and_resumes_to_the_fit_from_its_checkpoint(roomy: TestClient):
    from sklearn.cluster import KMeans

    client = roomy
    ds, values = big_dataset(client)
    model = fit(client, ds, SLOW_KMEANS)
    pid = job_pid(client, "fit", model["id"])
    store = client.app.service.store
    saved = lambda: sorted((store.root / "models").glob(f"{model['id']}.checkpoint.*.npy"))  # noqa: E731
    wait_until(saved, timeout=20)
    paused = client.post(f"/kmeans/models/{model['id']}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert "run" not in paused.json()["checkpoint"] and paused.json()["checkpoint"]["paused_at"]
    wait_until(lambda: process_gone(pid), timeout=2)
    assert client.get("/kmeans/jobs?status=paused").json()["items"][0]["id"] == model["id"]
    run = store.get_model(model["id"])["checkpoint"]["run"]
    checkpoint = store.load_array(store.checkpoint_path(model["id"], run))
    assert checkpoint.shape == (30, 4)
    again = client.post(f"/kmeans/models/{model['id']}/pause")
    assert again.status_code == 409 and "paused" in again.json()["detail"]
    resumed = client.post(f"/kmeans/models/{model['id']}/resume")
    assert resumed.status_code == 202 and resumed.json()["status"] in ("queued", "running")
    done = wait_until_done(client, f"/kmeans/models/{model['id']}", timeout=60)
    assert done["status"] == "succeeded" and done["checkpoint"]["resumed_at"]
    assert saved() == []  # the checkpoints of every run are gone with success
    options = {k: v for k, v in SLOW_KMEANS.items() if k != "init"}
    uninterrupted = KMeans(**options, init=checkpoint).fit(values)
    centers = np.asarray(client.get(f"/kmeans/models/{model['id']}/centers").json()["centers"])
    np.testing.assert_allclose(centers, uninterrupted.cluster_centers_, rtol=0, atol=1e-9)
    assert done["n_iter"] == uninterrupted.n_iter_
    assert client.post(f"/kmeans/models/{model['id']}/resume").status_code == 409


def test_a_queued_fit_can_be_paused_and_resumed_and_a_paused_one_cancelled(one_slot: TestClient):
    client = one_slot
    ds = dataset(client)
    first = fit(client, ds, LONG_FIT)
    wait_until(lambda: client.get(f"/kmeans/models/{first['id']}").json()["status"] == "running")
    waiting = fit(client, ds, {"n_clusters": 3})
    assert client.post(f"/kmeans/models/{waiting['id']}/pause").json()["status"] == "paused"
    client.post(f"/kmeans/models/{first['id']}/cancel")
    time.sleep(0.5)  # a free slot: a paused fit does not take it
    assert client.get(f"/kmeans/models/{waiting['id']}").json()["status"] == "paused"
    assert client.delete(f"/kmeans/datasets/{ds}").status_code == 409  # paused fits hold their dataset
    client.post(f"/kmeans/models/{waiting['id']}/resume")
    assert wait_until_done(client, f"/kmeans/models/{waiting['id']}")["status"] == "succeeded"
    third = fit(client, ds, LONG_FIT)
    client.post(f"/kmeans/models/{third['id']}/pause")
    cancelled = client.post(f"/kmeans/models/{third['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"


def test_only_kmeans_fits_can_be_paused(client: TestClient):
    ds = dataset(client, 200)
    for method in ("minibatch", "bisecting"):
        model = fit(client, ds, {"n_clusters": 2, "method": method})
        response = client.post(f"/kmeans/models/{model['id']}/pause")
        assert response.status_code == 409 and method in response.json()["detail"]
    assert client.post("/kmeans/models/m_0000000000000000/pause").status_code == 404
    assert client.post("/kmeans/models/m_0000000000000000/resume").status_code == 404


def test_a_copy_refits_the_dataset_with_the_overrides(client: TestClient):
    ds = dataset(client, 300)
    source = wait_until_done(client, f"/kmeans/models/{fit(client, ds, {'n_clusters': 2, 'random_state': 3})['id']}")
    response = client.post(f"/kmeans/models/{source['id']}/copy", json={"params": {"n_clusters": 4}})
    assert response.status_code == 202 and response.headers["location"] == f"/kmeans/models/{response.json()['id']}"
    copy = wait_until_done(client, response.headers["location"])
    assert copy["status"] == "succeeded" and copy["copied_from"] == source["id"] and copy["dataset_id"] == ds
    assert copy["params"] == {"n_clusters": 4, "random_state": 3} and len(copy["cluster_sizes"]) == 4
    plain = wait_until_done(client, client.post(f"/kmeans/models/{source['id']}/copy").headers["location"])
    assert plain["params"] == source["params"] and plain["inertia"] == source["inertia"]
    other = dataset(client, 50)
    moved = client.post(f"/kmeans/models/{source['id']}/copy", json={"dataset_id": other}).json()
    assert moved["dataset_id"] == other and moved["rows"] == 50
    bad = client.post(f"/kmeans/models/{source['id']}/copy", json={"params": {"n_clusters": 400}})
    assert bad.status_code == 422 and "n_clusters" in bad.json()["detail"]
    assert client.post(f"/kmeans/models/{source['id']}/copy", json={"params": {"bogus": 1}}).status_code == 400
    doc = {"format": "kmeans-service/model", "format_version": 1, "columns": ["x"], "centers": [[0.0], [1.0]]}
    imported = client.post("/kmeans/models/import", json=doc).json()
    refused = client.post(f"/kmeans/models/{imported['id']}/copy")
    assert refused.status_code == 409 and "dataset_id" in refused.json()["detail"]


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/kmeans/models", b'{"dataset_id": "ds_0000000000000000", "time_limit": %s}', "time_limit"),
        ("/kmeans/sweeps", b'{"dataset_id": "ds_0000000000000000", "k_min": 2, "k_max": 3, "time_limit": %s}',
         "time_limit"),
        ("/kmeans/models/m_0000000000000000/copy", b'{"time_limit": %s}', "time_limit"),
        ("/kmeans/models", b'{"dataset_id": "ds_0000000000000000", "params": {"tol": %s}}', "tol"),
    ],
)
def test_a_non_finite_bounded_number_is_refused_by_the_spec_naming_it(client: TestClient, path, body, field, constant):
    response = client.post(path, content=body % constant, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert field in response.json()["detail"] and ("finite" in response.json()["detail"] or "imum" in response.text)


@pytest.mark.both_apps
@pytest.mark.parametrize("last", ["\u00b2", "99999999999999999999", "-1", "1e3"])
def test_a_bad_last_event_id_is_400_naming_it(client: TestClient, last: str):
    ds = dataset(client, 50)
    model = fit(client, ds, {"n_clusters": 2})
    for path in ("/kmeans/events", f"/kmeans/models/{model['id']}/events"):
        response = client.get(path, headers={"Last-Event-ID": last.encode()})
        assert response.status_code == 400 and "Last-Event-ID" in response.json()["detail"], response.text


def test_a_copy_can_leave_options_out(client: TestClient):
    ds = dataset(client, 300)
    source = fit(client, ds, {"n_clusters": 2, "init": [[0] * 8, [1] * 8], "random_state": 0})
    refused = client.post(f"/kmeans/models/{source['id']}/copy", json={"params": {"n_clusters": 3}})
    assert refused.status_code == 422
    copy = client.post(f"/kmeans/models/{source['id']}/copy", json={"params": {"n_clusters": 3}, "unset": ["init"]})
    assert copy.status_code == 202 and copy.json()["params"] == {"n_clusters": 3, "random_state": 0}
    bad = client.post(f"/kmeans/models/{source['id']}/copy", json={"unset": ["tol"]})
    assert bad.status_code == 422 and bad.json()["parameter"] == "unset" and "'tol'" in bad.json()["detail"]


def test_the_webhook_of_a_deleted_model_is_cancelled_not_sent_unsigned(settings: Settings, app_class: type):
    received = []
    with local_client(build_app(replace(settings, webhook_allow=("127.0.0.1",)), app_class)) as client:
        from tests.api.test_jobs import Receiver

        hook = Receiver()
        try:
            ds = dataset(client, 200)
            body = {"dataset_id": ds, "params": LONG_FIT, "callback_url": hook.url}
            created = client.post("/kmeans/models", json=body)
            assert created.status_code == 202 and created.json()["callback_secret"].startswith("whsec_")
            model = created.json()
            assert client.delete(f"/kmeans/models/{model['id']}").status_code == 204
            time.sleep(1.0)  # dispatcher rounds: a queued delivery would be sent by now
            received = list(hook.calls)
            cancelled = client.get("/kmeans/jobs?kind=webhook&status=cancelled").json()["items"]
        finally:
            hook.close()
    assert received == [] and len(cancelled) == 1 and "deleted" in cancelled[0]["phase"]


def test_a_delivery_given_up_after_a_crash_shows_failed_on_its_model(tmp_path):
    from kmeans.jobs import Deliveries, Dispatcher

    store = Store(tmp_path / "data")
    ds = {"id": "ds_00000000000000bb", "name": "d", "rows": 4, "n_features": 1, "columns": ["x1"],
          "sha256": "0", "size_bytes": 1, "created_at": now()}
    store.add_dataset(ds, np.zeros((4, 1)))
    store.add_model({"id": "m_00000000000000bb", "dataset_id": ds["id"], "status": "succeeded", "params": {},
                     "created_at": now(), "rows": 4, "n_features": 1, "columns": ["x1"],
                     "callback_url": "http://127.0.0.1:9/hook"})
    made = store.enqueue_deliveries(lambda kind, record: {
        "id": "wh_00000000000000bb", "project": "default", "target_kind": kind, "target_id": record["id"],
        "event": "model.succeeded", "url": record["callback_url"], "payload": {}, "status": "queued",
        "created_at": now(), "queued_at": now(),
    })
    assert [d["id"] for d in made] == ["wh_00000000000000bb"]
    dispatcher = Dispatcher(store, launcher=None, max_running=1, heartbeat_timeout=5,
                            deliveries=Deliveries(lambda job: None, max_attempts=2))
    for attempt in (1, 2):
        claimed = store.claim_next("gone-host:1", 4, f"token{attempt}", kinds=("webhook",))
        store.update_job("webhook", claimed["id"], heartbeat=time.time() - 60)  # its process died
        assert dispatcher.recover_stale() == 1
        callback = store.get_model("m_00000000000000bb")["callback"]
        assert callback["state"] == ("retrying" if attempt == 1 else "failed") and callback["attempts"] == attempt
    delivery = store.get_job("webhook", "wh_00000000000000bb")
    assert delivery["status"] == "failed" and delivery["error"]["title"] == "Webhook Delivery Failed"
    assert "stopped answering" in callback["error"]


@pytest.mark.both_apps
def test_an_event_stream_ends_soon_after_its_token_is_revoked(client: TestClient, monkeypatch):
    import threading

    from kmeans.api import jobs

    monkeypatch.setattr(jobs, "EVENT_STREAM_SECONDS", 30.0)  # bounded if the revocation were missed
    service = client.app.service
    record, secret = service.access.create_token("guest", "default", "streams")
    timer = threading.Timer(0.5, service.store.revoke_token, args=(record["id"],))
    started = time.monotonic()
    timer.start()
    try:
        response = client.get("/kmeans/events", headers={"Authorization": f"Bearer {secret}"})
    finally:
        timer.cancel()
    assert response.status_code == 200 and time.monotonic() - started < 12
    assert client.get("/kmeans/events", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
