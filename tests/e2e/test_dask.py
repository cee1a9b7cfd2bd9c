"""Fits on a real Dask cluster (distributed.LocalCluster with worker processes)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from kmeans.config import Settings
from server import build_app
from tests.conftest import local_client, wait_for_model

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as local:
        yield local


@pytest.fixture
def dask_client(settings: Settings, cluster):
    app = build_app(replace(settings, dask_address=cluster.scheduler_address))
    with local_client(app) as client:
        yield client


def upload(client, rows: int) -> str:
    values = np.random.default_rng(1).normal(size=(rows, 8)).round(4)
    body = "\n".join(",".join(map(str, row)) for row in values.tolist())
    response = client.post("/kmeans/datasets", content=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_fit_runs_on_the_cluster_and_predicts_like_a_local_one(dask_client, settings: Settings):
    ds = upload(dask_client, 2000)
    params = {"n_clusters": 4, "n_init": 3, "random_state": 0}
    queued = dask_client.post("/kmeans/models", json={"dataset_id": ds, "params": params}).json()
    model = wait_for_model(dask_client, queued["id"], timeout=60)
    assert model["status"] == "succeeded", model
    assert model["progress"] == 1.0 and model["attempts"] == 1
    launcher = dask_client.app.service.dispatcher.launcher
    assert type(launcher).__name__ == "DaskLauncher"

    # The same fit in a local process gives the same centers: the cluster ran the same code.
    with local_client(build_app(settings)) as local:
        local_model = wait_for_model(
            local, local.post("/kmeans/models", json={"dataset_id": ds, "params": params}).json()["id"]
        )
        local_centers = local.get(f"/kmeans/models/{local_model['id']}/centers").json()["centers"]
    centers = dask_client.get(f"/kmeans/models/{model['id']}/centers").json()["centers"]
    assert np.allclose(centers, local_centers)


def test_cancel_stops_the_task_on_the_cluster(dask_client):
    ds = upload(dask_client, 8000)
    params = {"n_clusters": 20, "init": "random", "n_init": 1000, "random_state": 0}
    queued = dask_client.post("/kmeans/models", json={"dataset_id": ds, "params": params}).json()
    launcher = dask_client.app.service.dispatcher.launcher
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = dask_client.get(f"/kmeans/models/{queued['id']}").json()
        if current["status"] == "running" and current["progress"] > 0:
            break
        time.sleep(0.1)
    assert current["status"] == "running", current
    assert any(launcher.client.processing().values()), "the fit is not running on the cluster"
    assert dask_client.post(f"/kmeans/models/{queued['id']}/cancel").json()["status"] == "cancelled"
    deadline = time.monotonic() + 5
    while any(launcher.client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(launcher.client.processing().values()), "the cluster still runs the cancelled fit"
    assert dask_client.get(f"/kmeans/models/{queued['id']}").json()["status"] == "cancelled"


def test_time_limit_holds_on_the_cluster(dask_client):
    ds = upload(dask_client, 8000)
    params = {"n_clusters": 20, "init": "random", "n_init": 1000, "random_state": 0}
    body = {"dataset_id": ds, "params": params, "time_limit": 1}
    queued = dask_client.post("/kmeans/models", json=body).json()
    model = wait_for_model(dask_client, queued["id"], timeout=30)
    assert model["status"] == "failed"
    assert "time limit of 1 s" in model["error"]["detail"]
