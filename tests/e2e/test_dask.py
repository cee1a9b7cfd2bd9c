"""Fits on a real Dask cluster (distributed.LocalCluster with worker processes)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from kmeans.config import Settings
from server import build_app
from tests.conftest import local_client, wait_for_model, wait_until_done

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


def blobs_csv(rows: int = 600, centers: int = 4) -> str:
    """Rows around ``centers`` well-separated points (8 columns): a sweep should recommend ``centers``."""
    rng = np.random.default_rng(2)
    means = rng.uniform(-20, 20, size=(centers, 8))
    values = (means[rng.integers(0, centers, rows)] + rng.normal(size=(rows, 8))).round(4)
    return "\n".join(",".join(map(str, row)) for row in values.tolist())


def run_sweep(client, body: str, params: dict, timeout: float) -> dict:
    response = client.post("/kmeans/datasets", content=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 201, response.text
    sweep = {"dataset_id": response.json()["id"], "k_min": 2, "k_max": 6, "params": params}
    queued = client.post("/kmeans/sweeps", json=sweep)
    assert queued.status_code == 202, queued.text
    return wait_until_done(client, f"/kmeans/sweeps/{queued.json()['id']}", timeout)


def test_sweep_runs_on_the_cluster_and_recommends_like_a_local_one(dask_client, settings: Settings, tmp_path):
    body, params = blobs_csv(), {"n_init": 3, "random_state": 0}
    sweep = run_sweep(dask_client, body, params, timeout=60)
    assert sweep["status"] == "succeeded", sweep
    assert sweep["attempts"] == 1 and sweep["progress"] == 1.0, sweep
    assert [r["k"] for r in sweep["results"]] == [2, 3, 4, 5, 6]
    launcher = dask_client.app.service.dispatcher.launcher
    assert type(launcher).__name__ == "DaskLauncher"
    # The scheduler saw the sweep's task through to the end (it ran on the cluster, not here).
    prefix = f"kmeans-sweep-{sweep['id']}-"
    ends = launcher.client.run_on_scheduler(
        lambda dask_scheduler: [t.finish for t in dask_scheduler.transition_log if str(t.key).startswith(prefix)]
    )
    assert "memory" in ends, ends

    # The same sweep of the same rows in a local process (a server of its own, on its own data dir).
    with local_client(build_app(replace(settings, data_dir=tmp_path / "local"))) as local:
        local_sweep = run_sweep(local, body, params, timeout=60)
        assert type(local.app.service.dispatcher.launcher).__name__ == "LocalLauncher"
    assert local_sweep["status"] == "succeeded", local_sweep
    assert sweep["recommended_k"] == local_sweep["recommended_k"] == 4
    assert sweep["rule"] == local_sweep["rule"] == "consensus"
    for ours, theirs in zip(sweep["results"], local_sweep["results"], strict=True):
        assert ours["k"] == theirs["k"]
        assert np.isclose(ours["inertia"], theirs["inertia"]) and np.isclose(ours["silhouette"], theirs["silhouette"])


def test_cancel_stops_a_sweep_on_the_cluster(dask_client):
    ds = upload(dask_client, 8000)
    params = {"init": "random", "n_init": 1000, "random_state": 0}  # minutes of work per k
    queued = dask_client.post("/kmeans/sweeps", json={"dataset_id": ds, "k_min": 2, "k_max": 8, "params": params})
    assert queued.status_code == 202, queued.text
    path = f"/kmeans/sweeps/{queued.json()['id']}"
    launcher = dask_client.app.service.dispatcher.launcher

    def executing() -> list[str]:
        """The keys of the tasks whose functions run in the cluster's worker threads right now."""
        running = launcher.client.run(lambda dask_worker: [str(k) for k in dask_worker.active_threads.values()])
        return [key for keys in running.values() for key in keys]

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = dask_client.get(path).json()
        if current["status"] == "running" and current["progress"] > 0:
            break
        time.sleep(0.1)
    assert current["status"] == "running" and current["progress"] > 0, current
    assert any(key.startswith(f"kmeans-sweep-{current['id']}-") for key in executing()), executing()

    cancelled = dask_client.post(f"{path}/cancel").json()
    assert cancelled["status"] == "cancelled", cancelled
    # No process to kill: the task itself notices at its next progress report and returns.
    deadline = time.monotonic() + 5
    while (executing() or any(launcher.client.processing().values())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not executing(), "a worker thread still runs the cancelled sweep"
    assert not any(launcher.client.processing().values()), "the scheduler still runs the cancelled sweep"
    after = dask_client.get(path).json()
    assert after["status"] == "cancelled", after
    assert after["results"] == cancelled["results"], after  # the stopped task wrote nothing more
