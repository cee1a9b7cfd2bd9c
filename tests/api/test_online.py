"""Online updates of minibatch models, versions, predicting with a version, restore,
concurrent pushes (none lost), and pushes and restores in the project event stream."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from api_helpers import CSV, assert_problem, fit, sse
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app
from tests.conftest import local_client

TRAIN = [[0, 0], [0, 2], [10, 0], [10, 2]]


@pytest.fixture(scope="module")
def api(tmp_path_factory, app_class: type) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("online") / "data", max_concurrent_fits=2)
    with local_client(build_app(settings, app_class)) as client:
        yield client


def minibatch(api: TestClient, data=TRAIN, **params) -> dict:
    ds = api.post("/kmeans/datasets", json={"data": data}).json()["id"]
    model = fit(api, ds, method="minibatch", init=[[0, 1], [10, 1]], n_init=1, random_state=0, **params)
    assert model["status"] == "succeeded", model
    return model


@pytest.mark.both_apps
def test_push_moves_centers_by_the_minibatch_rule_and_makes_versions(api):
    model = minibatch(api)
    mid = model["id"]
    v1 = api.get(f"/kmeans/models/{mid}/versions/1").json()
    assert v1["source"] == "fit" and v1["counts"] == [2, 2]
    c0, c1 = np.array(v1["centers"])
    response = api.post(f"/kmeans/models/{mid}/data", json={"data": [[3, 1], [12, 4], [13, 1]]})
    assert response.status_code == 200, response.text
    v2 = response.json()
    assert v2["version"] == 2 and v2["rows_added"] == 3 and v2["counts"] == [3, 4]
    assert np.allclose(v2["centers"][0], (c0 * 2 + [3, 1]) / 3)
    assert np.allclose(v2["centers"][1], (c1 * 2 + [12, 4] + [13, 1]) / 4)
    assert api.get(f"/kmeans/models/{mid}").json()["center_version"] == 2
    assert np.allclose(api.get(f"/kmeans/models/{mid}/centers").json()["centers"], v2["centers"])
    # CSV pushes too
    response = api.post(f"/kmeans/models/{mid}/data", content=b"0,-5\n", headers={"Content-Type": CSV})
    assert response.status_code == 200 and response.json()["version"] == 3
    listed = api.get(f"/kmeans/models/{mid}/versions").json()
    assert listed["current"] == 3 and [v["version"] for v in listed["items"]] == [1, 2, 3]


def test_predict_with_a_version_and_restore(api):
    model = minibatch(api)
    mid = model["id"]
    # drag center 0 (x=0) to x~4.3: a point at x=6 changes cluster between versions
    api.post(f"/kmeans/models/{mid}/data", json={"data": [[4.5, 1]] * 40})
    point = {"data": [[6, 1]]}
    assert api.post(f"/kmeans/models/{mid}/predictions?version=1", json=point).json()["labels"] == [1]
    assert api.post(f"/kmeans/models/{mid}/predictions", json=point).json()["labels"] == [0]
    current = api.post(f"/kmeans/models/{mid}/predictions?version=2&distances=true", json=point).json()
    v2 = np.array(api.get(f"/kmeans/models/{mid}/versions/2").json()["centers"])
    assert current["distances"][0] == pytest.approx(np.linalg.norm(v2[current["labels"][0]] - [6, 1]))
    restored = api.post(f"/kmeans/models/{mid}/versions/1/restore").json()
    assert restored["version"] == 3 and restored["source"] == "restore of 1"
    assert api.get(f"/kmeans/models/{mid}/versions/1").json()["centers"] == restored["centers"]
    assert api.post(f"/kmeans/models/{mid}/predictions", json=point).json()["labels"] == [1]
    assert_problem(api.post(f"/kmeans/models/{mid}/predictions?version=9", json=point), 404, "version 9")
    assert_problem(api.get(f"/kmeans/models/{mid}/versions/9"), 404, "version 9")
    assert_problem(api.post(f"/kmeans/models/{mid}/versions/9/restore"), 404, "version 9")


def test_concurrent_pushes_are_all_applied(api):
    model = minibatch(api)
    mid = model["id"]
    rng = np.random.default_rng(0)
    batches = [rng.normal([0, 1], 0.5, size=(5, 2)).tolist() for _ in range(24)]
    errors: list[str] = []

    def push(batch):
        response = api.post(f"/kmeans/models/{mid}/data", json={"data": batch})
        if response.status_code != 200:
            errors.append(response.text)

    threads = [threading.Thread(target=push, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    listed = api.get(f"/kmeans/models/{mid}/versions").json()
    assert listed["current"] == 25 and len(listed["items"]) == 25
    last = api.get(f"/kmeans/models/{mid}/versions/25").json()
    assert sum(last["counts"]) == 4 + 24 * 5
    # every row went to center 0 (all near [0, 1]): its center is the count-weighted mean
    first = np.array(api.get(f"/kmeans/models/{mid}/versions/1").json()["centers"][0])
    pushed = np.concatenate([np.array(b) for b in batches])
    assert last["counts"][0] == 2 + 120
    assert np.allclose(last["centers"][0], (first * 2 + pushed.sum(axis=0)) / 122)


def test_pushes_need_a_minibatch_model_and_the_right_width(api):
    ds = api.post("/kmeans/datasets", json={"data": TRAIN}).json()["id"]
    plain = fit(api, ds, n_clusters=2, random_state=0)
    assert_problem(api.post(f"/kmeans/models/{plain['id']}/data", json={"data": [[1, 1]]}), 409, "minibatch")
    model = minibatch(api)
    assert_problem(api.post(f"/kmeans/models/{model['id']}/data", json={"data": [[1, 1, 1]]}), 422, "columns")
    assert_problem(api.post("/kmeans/models/m_0000000000000000/data", json={"data": [[1, 1]]}), 404)


def test_standardized_minibatch_updates_in_the_fitted_space(api):
    model = minibatch(api, standardize=True)
    mid = model["id"]
    v1 = np.array(api.get(f"/kmeans/models/{mid}/versions/1").json()["centers"])
    v2 = np.array(api.post(f"/kmeans/models/{mid}/data", json={"data": [[0, 4]]}).json()["centers"])
    # original units: center 0 (x=0) moves toward (0, 4) by a third of the way (count 2 -> 3)
    assert np.allclose(v2[0], v1[0] + (np.array([0, 4]) - v1[0]) / 3)
    assert np.allclose(v2[1], v1[1])


def test_an_imported_minibatch_model_continues_from_the_exported_counts(api):
    model = minibatch(api)
    mid = model["id"]
    api.post(f"/kmeans/models/{mid}/data", json={"data": [[1, 1], [11, 1]]})
    doc = api.get(f"/kmeans/models/{mid}/export").json()
    assert doc["counts"] == [3, 3]
    imported = api.post("/kmeans/models/import", json=doc).json()
    batch = {"data": [[2, 2], [9, 0], [12, 3]]}
    a = api.post(f"/kmeans/models/{mid}/data", json=batch).json()
    b = api.post(f"/kmeans/models/{imported['id']}/data", json=batch).json()
    assert a["counts"] == b["counts"] == [4, 5]
    assert a["centers"] == b["centers"]
    bad = {**doc, "counts": [1]}
    assert_problem(api.post("/kmeans/models/import", json=bad), 422, "counts")


@pytest.mark.both_apps
def test_pushes_and_restores_are_in_the_project_event_stream(api, monkeypatch):
    from kmeans.api import jobs

    monkeypatch.setattr(jobs, "EVENT_STREAM_SECONDS", 1.0)  # a stream ends after this long
    model = minibatch(api)
    mid = model["id"]
    pushed = api.post(f"/kmeans/models/{mid}/data", json={"data": [[3, 1], [12, 4], [13, 1]]}).json()
    again = api.post(f"/kmeans/models/{mid}/data", json={"data": [[1, 1]]}).json()
    restored = api.post(f"/kmeans/models/{mid}/versions/1/restore").json()
    events = sse(api.get("/kmeans/events", headers={"Last-Event-ID": "0"}).text, "job")
    mine = [e for e in events if e["id"] == mid and e["kind"] in ("push", "restore")]
    assert [(e["kind"], e["data"]) for e in mine] == [
        ("push", {"version": pushed["version"], "rows_added": 3}),
        ("push", {"version": again["version"], "rows_added": 1}),
        ("restore", {"version": restored["version"], "rows_added": 0}),
    ]
    assert [pushed["version"], again["version"], restored["version"]] == [2, 3, 4]
    assert all(e["project"] == "default" and e["status"] == "succeeded" for e in mine)
    # after the fit's own events, in the order they happened
    fit_events = [e["event_id"] for e in events if e["id"] == mid and e["kind"] == "fit"]
    assert fit_events and max(fit_events) < mine[0]["event_id"] < mine[1]["event_id"] < mine[2]["event_id"]
    # a push that fails (wrong width) makes no version and no event
    api.post(f"/kmeans/models/{mid}/data", json={"data": [[1, 1, 1]]})
    later = sse(api.get("/kmeans/events", headers={"Last-Event-ID": str(mine[-1]["event_id"])}).text, "job")
    assert [e for e in later if e["id"] == mid] == []
    assert api.get(f"/kmeans/models/{mid}/versions").json()["current"] == 4
