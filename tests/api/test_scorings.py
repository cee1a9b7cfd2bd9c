"""Batch scoring (issue 16 item 6): POST /models/{id}/scorings labels a stored dataset as a job;
its result is stored and downloaded as JSON pages, CSV and Parquet. Labels, distances and flags
are checked against POST /models/{id}/predictions of the same rows and against scikit-learn/scipy."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.spatial.distance import cdist
from sklearn.datasets import load_wine
from sklearn.metrics import pairwise_distances_argmin
from sklearn.preprocessing import StandardScaler
from starlette.testclient import TestClient

from kmeans.config import Settings
from tests.api.api_helpers import CSV, EXAMPLES, assert_problem, create_csv_dataset, csv_lines, fit, json_dataset
from tests.conftest import wait_until_done

PARQUET = "application/vnd.apache.parquet"
LONG_FIT = {"n_clusters": 20, "init": "random", "n_init": 1000, "random_state": 0}
BIG_ROWS = 300_000  # more than two of the job's chunks (131,072 rows)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The shared settings, with room for a Parquet body of BIG_ROWS rows."""
    return Settings(data_dir=tmp_path / "data", max_upload_bytes=40_000_000, max_concurrent_fits=2)


def wine_csv() -> tuple[bytes, np.ndarray, list[str]]:
    """The bundled wine data as CSV with an id column ``w001`` …, its values and feature names."""
    wine = load_wine()
    names = [n.replace("/", "_") for n in wine.feature_names]
    lines = ["wine_id," + ",".join(names)]
    lines += [f"w{i:03d}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(wine.data)]
    return ("\n".join(lines) + "\n").encode(), wine.data, names


def score(client: TestClient, model_id: str, dataset_id: str, **extra) -> dict:
    """POST a scoring and wait until it has ended; asserts the 202 and its Location."""
    response = client.post(f"/kmeans/models/{model_id}/scorings", json={"dataset_id": dataset_id, **extra})
    assert response.status_code == 202, response.text
    created = response.json()
    assert response.headers["location"] == f"/kmeans/models/{model_id}/scorings/{created['id']}"
    assert created["model_id"] == model_id and created["dataset_id"] == dataset_id
    return wait_until_done(client, response.headers["location"], timeout=60)


def all_rows(client: TestClient, scoring: dict, page: int = 1000) -> list[dict]:
    """Every row of a scoring's result, read as JSON pages."""
    rows: list[dict] = []
    while True:
        answer = client.get(f"{scoring['result']}?offset={len(rows)}&limit={page}")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["total"] == scoring["rows"] and body["offset"] == len(rows)
        rows += body["items"]
        if len(rows) >= body["total"]:
            return rows


def test_wine_scoring_equals_predictions_and_scikit_learn(client: TestClient):
    body, values, names = wine_csv()
    dataset = client.post("/kmeans/datasets?id_column=wine_id", content=body, headers={"Content-Type": CSV}).json()
    model = fit(client, dataset["id"], n_clusters=3, random_state=0, standardize=True)
    assert model["status"] == "succeeded"
    scaler = StandardScaler().fit(values)
    centers = np.asarray(client.get(f"/kmeans/models/{model['id']}/centers").json()["centers"])
    fitted_centers = scaler.transform(centers)
    space = scaler.transform(values)
    expected_labels = pairwise_distances_argmin(space, fitted_centers)
    expected_distances = cdist(space, fitted_centers).min(axis=1)
    threshold = float(np.quantile(expected_distances, 0.9))

    scoring = score(client, model["id"], dataset["id"], threshold=threshold)
    assert scoring["status"] == "succeeded", scoring
    assert scoring["rows"] == scoring["rows_scored"] == 178 and scoring["progress"] == 1.0
    assert scoring["has_ids"] is True and scoring["threshold"] == threshold

    rows = all_rows(client, scoring, page=50)
    labels = np.array([r["label"] for r in rows])
    distances = np.array([r["distance"] for r in rows])
    flags = np.array([r["anomaly"] for r in rows])
    assert [r["row"] for r in rows] == list(range(178))
    assert [r["id"] for r in rows] == [f"w{i:03d}" for i in range(178)]
    assert np.array_equal(labels, expected_labels)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-9)
    assert np.array_equal(flags, expected_distances > threshold)
    assert scoring["cluster_sizes"] == np.bincount(expected_labels, minlength=3).tolist()
    assert scoring["anomalies"] == int((expected_distances > threshold).sum()) > 0

    # The same rows sent to POST /predictions give the same labels, distances and flags.
    predicted = client.post(
        f"/kmeans/models/{model['id']}/predictions?distances=true&threshold={threshold!r}",
        content=body, headers={"Content-Type": CSV},
    ).json()
    assert predicted["labels"] == labels.tolist()
    assert predicted["distances"] == distances.tolist()
    assert predicted["anomalies"] == flags.tolist()
    assert predicted["ids"] == [r["id"] for r in rows]
    # Scoring the training rows gives the training labels.
    assert client.get(f"/kmeans/models/{model['id']}/labels").json()["labels"] == labels.tolist()


def test_result_as_csv_and_parquet_holds_the_same_rows(client: TestClient):
    body, _, _ = wine_csv()
    dataset = client.post("/kmeans/datasets?id_column=wine_id", content=body, headers={"Content-Type": CSV}).json()
    model = fit(client, dataset["id"], n_clusters=4, random_state=1, standardize=True)
    scoring = score(client, model["id"], dataset["id"], threshold=1.5)
    rows = all_rows(client, scoring)

    lines = csv_lines(client.get(scoring["result"], headers={"Accept": CSV}))
    assert lines[0] == "id,row,label,distance,anomaly"
    assert len(lines) == 179
    for line, row in zip(lines[1:], rows, strict=True):
        cell_id, number, label, distance, anomaly = line.split(",")
        assert (cell_id, int(number), int(label)) == (row["id"], row["row"], row["label"])
        assert float(distance) == row["distance"]  # the shortest text that reads back exactly
        assert anomaly == ("true" if row["anomaly"] else "false")

    answer = client.get(scoring["result"], headers={"Accept": PARQUET})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith(PARQUET)
    table = pq.read_table(io.BytesIO(answer.content))
    assert table.column_names == ["id", "row", "label", "distance", "anomaly"]
    assert table.schema.field("label").type == pa.int32() and table.schema.field("anomaly").type == pa.bool_()
    assert table.to_pylist() == rows

    # A page past the end is empty; JSON is the default and wins a tie.
    past = client.get(f"{scoring['result']}?offset=500&limit=10").json()
    assert past["items"] == [] and past["total"] == 178
    anything = client.get(scoring["result"], headers={"Accept": "*/*"})
    assert anything.headers["content-type"].startswith("application/json")


def test_mixed_table_scoring_equals_predictions_of_the_same_file(client: TestClient):
    """Categories, ids and gaps (filled as in training) go through the prediction preparation."""
    body = (EXAMPLES / "customers.csv").read_bytes()
    dataset = client.post(
        "/kmeans/datasets?decimal=,&id_column=customer_id", content=body, headers={"Content-Type": CSV}
    ).json()
    model = fit(client, dataset["id"], n_clusters=3, random_state=0, standardize=True, contamination=0.2)
    scoring = score(client, model["id"], dataset["id"])
    assert scoring["status"] == "succeeded", scoring
    assert scoring["threshold"] == model["anomaly_threshold"]  # the model's, when none is given
    predicted = client.post(
        f"/kmeans/models/{model['id']}/predictions?decimal=,&anomalies=true&distances=true",
        content=body, headers={"Content-Type": CSV},
    ).json()
    rows = all_rows(client, scoring)
    assert [r["id"] for r in rows] == predicted["ids"]
    assert [r["label"] for r in rows] == predicted["labels"]
    assert [r["distance"] for r in rows] == predicted["distances"]
    assert [r["anomaly"] for r in rows] == predicted["anomalies"]
    assert scoring["anomalies"] == sum(predicted["anomalies"]) > 0
    assert scoring["unknown_categories"] == {}


def test_a_dataset_of_many_chunks_scores_like_predictions_and_scikit_learn(client: TestClient):
    rng = np.random.default_rng(7)
    values = rng.normal(size=(BIG_ROWS, 3)) + rng.integers(0, 4, size=(BIG_ROWS, 1)) * np.array([5.0, 50.0, 0.5])
    table = pa.table({"key": [f"k{i}" for i in range(BIG_ROWS)], "a": values[:, 0], "b": values[:, 1],
                      "c": values[:, 2]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    created = client.post("/kmeans/datasets?id_column=key", content=sink.getvalue(),
                          headers={"Content-Type": PARQUET})
    assert created.status_code == 201, created.text
    dataset = created.json()
    model = fit(client, dataset["id"], n_clusters=4, random_state=0, standardize=True, n_init=1)
    scoring = score(client, model["id"], dataset["id"])
    assert scoring["status"] == "succeeded" and scoring["rows_scored"] == BIG_ROWS, scoring
    assert scoring["threshold"] is None and scoring["anomalies"] is None

    result = pq.read_table(io.BytesIO(client.get(scoring["result"], headers={"Accept": PARQUET}).content))
    assert result.column_names == ["id", "row", "label", "distance"]  # no threshold: no anomaly column
    labels = result.column("label").to_numpy()
    scaler = StandardScaler().fit(values)
    centers = scaler.transform(np.asarray(client.get(f"/kmeans/models/{model['id']}/centers").json()["centers"]))
    assert np.array_equal(labels, pairwise_distances_argmin(scaler.transform(values), centers))
    np.testing.assert_allclose(result.column("distance").to_numpy(), cdist(scaler.transform(values), centers).min(1),
                               rtol=1e-9)
    assert result.column("id").to_pylist() == table.column("key").to_pylist()
    predicted = client.post(f"/kmeans/models/{model['id']}/predictions", content=sink.getvalue(),
                            headers={"Content-Type": PARQUET}).json()
    assert predicted["labels"] == labels.tolist()
    lines = csv_lines(client.get(scoring["result"], headers={"Accept": CSV}))
    assert len(lines) == BIG_ROWS + 1 and lines[0] == "id,row,label,distance"
    assert lines[-1] == f"k{BIG_ROWS - 1},{BIG_ROWS - 1},{labels[-1]},{result.column('distance')[-1].as_py()!r}"


def test_bad_requests_name_what_is_wrong_and_store_nothing(client: TestClient):
    points = [[1.0, 2.0], [1.5, 1.8], [8.0, 8.0], [9.0, 9.5]]
    ds = json_dataset(client, points, ["x", "y"])
    model = fit(client, ds, n_clusters=2, random_state=0, missing="error")
    url = f"/kmeans/models/{model['id']}/scorings"

    other = json_dataset(client, points, ["x", "z"])
    assert_problem(client.post(url, json={"dataset_id": other}), 422, "'y'")
    text = client.post("/kmeans/datasets", json={"data": [[1.0, "a"], [2.0, "b"]], "columns": ["x", "y"]}).json()["id"]
    assert_problem(client.post(url, json={"dataset_id": text}), 422, "'a'", "numeric")
    gaps = json_dataset(client, [[1.0, None], [2.0, 3.0]], ["x", "y"])
    assert_problem(client.post(url, json={"dataset_id": gaps}), 422, "'y'", "missing")
    assert_problem(client.post(url, json={"dataset_id": "ds_0000000000000000"}), 404, "ds_0000000000000000")
    assert_problem(client.post("/kmeans/models/m_0000000000000000/scorings", json={"dataset_id": ds}), 404)
    assert_problem(client.post(url, json={"dataset_id": ds, "threshold": -1}), 400, "threshold")
    assert_problem(client.post(url, json={"dataset_id": ds, "threshold": "far"}), 400, "threshold")
    assert_problem(client.post(url, json={"dataset_id": ds, "rows": 3}), 400, "rows")
    assert_problem(client.post(url, json={}), 400, "dataset_id")
    nan = client.post(url, content=b'{"dataset_id": "%s", "threshold": NaN}' % ds.encode(),
                      headers={"Content-Type": "application/json"})
    assert nan.status_code == 400 and nan.headers["content-type"].startswith("application/problem+json")
    assert client.get(url).json()["total"] == 0  # nothing was queued

    unfitted = client.post("/kmeans/models", json={"dataset_id": ds, "params": LONG_FIT | {"n_clusters": 3}}).json()
    client.post(f"/kmeans/models/{unfitted['id']}/cancel")
    assert_problem(client.post(f"/kmeans/models/{unfitted['id']}/scorings", json={"dataset_id": ds}), 409,
                   "cancelled")


def test_a_queued_scoring_has_no_result_and_can_be_cancelled(client: TestClient):
    rows = np.random.default_rng(0).normal(size=(3000, 4)).round(4).tolist()
    ds = json_dataset(client, rows)
    model = fit(client, ds, n_clusters=2, random_state=0)
    blockers = [client.post("/kmeans/models", json={"dataset_id": ds, "params": LONG_FIT}).json() for _ in range(2)]
    assert [wait_running(client, f"/kmeans/models/{b['id']}") for b in blockers] == ["running", "running"]
    scored = json_dataset(client, rows[:100])
    created = client.post(f"/kmeans/models/{model['id']}/scorings", json={"dataset_id": scored}).json()
    where = f"/kmeans/models/{model['id']}/scorings/{created['id']}"
    queued = client.get("/kmeans/jobs?kind=scoring").json()["items"]
    assert [(j["id"], j["status"], j["resource"]) for j in queued] == [(created["id"], "queued", where)]
    assert queued[0]["position"] == 1
    assert_problem(client.get(f"{where}/result"), 409, "queued")
    # The dataset it reads stays while it waits.
    assert_problem(client.delete(f"/kmeans/datasets/{scored}"), 409, created["id"])
    cancelled = client.post(f"{where}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert_problem(client.post(f"{where}/cancel"), 409, "cancelled")
    assert_problem(client.get(f"{where}/result"), 409, "cancelled")
    for blocker in blockers:
        client.post(f"/kmeans/models/{blocker['id']}/cancel")


def wait_running(client: TestClient, path: str, timeout: float = 20) -> str:
    """Poll until the job at ``path`` runs (or has ended); its status."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        status = client.get(path).json()["status"]
        if status != "queued" or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


def test_list_events_jobs_and_delete(client: TestClient, settings: Settings):
    ds = create_csv_dataset(client, (EXAMPLES / "model.csv").read_bytes())["id"]
    model = fit(client, ds, n_clusters=2, random_state=0)
    first = score(client, model["id"], ds)
    second = score(client, model["id"], ds, threshold=0.5)
    listed = client.get(f"/kmeans/models/{model['id']}/scorings").json()
    assert listed["total"] == 2 and {s["id"] for s in listed["items"]} == {first["id"], second["id"]}
    assert client.get(f"/kmeans/models/{model['id']}/scorings?limit=1").json()["items"][0]["id"] in (
        first["id"], second["id"])

    events = client.get(f"/kmeans/models/{model['id']}/scorings/{first['id']}/events")
    assert events.headers["content-type"].startswith("text/event-stream")
    assert '"status":"succeeded"' in events.text and "event: scoring" in events.text
    last = [line for line in events.text.splitlines() if line.startswith("data: ")][-1]
    assert f'"result":"/kmeans/models/{model["id"]}/scorings/{first["id"]}/result"' in last
    assert '"has_ids":false' in last and "callback" not in last

    done = client.get("/kmeans/jobs?kind=scoring&status=succeeded").json()["items"]
    assert {(j["id"], j["resource"]) for j in done} == {
        (s["id"], f"/kmeans/models/{model['id']}/scorings/{s['id']}") for s in (first, second)}

    # Another model's path does not find the scoring.
    other = fit(client, ds, n_clusters=3, random_state=0)
    assert_problem(client.get(f"/kmeans/models/{other['id']}/scorings/{first['id']}"), 404, first["id"])

    # The result outlives its dataset ...
    stored = client.get(first["result"], headers={"Accept": CSV}).text
    files = settings.data_dir / "scorings"
    assert sorted(p.name for p in files.iterdir() if p.name.startswith(first["id"]))
    # ... and goes with the scoring.
    assert client.delete(f"/kmeans/models/{model['id']}/scorings/{first['id']}").status_code == 204
    assert_problem(client.get(f"/kmeans/models/{model['id']}/scorings/{first['id']}"), 404, first["id"])
    assert not [p for p in files.iterdir() if p.name.startswith(first["id"])]
    assert stored.splitlines()[0] == "row,label,distance"  # model.csv has no id column
    # Deleting the model deletes its scorings.
    assert client.delete(f"/kmeans/models/{model['id']}").status_code == 204
    assert not [p for p in files.iterdir() if p.name.startswith(second["id"])]
    assert_problem(client.get(f"/kmeans/models/{model['id']}/scorings"), 404)


def test_the_result_survives_its_dataset(client: TestClient):
    body, _, _ = wine_csv()
    dataset = client.post("/kmeans/datasets?id_column=wine_id", content=body, headers={"Content-Type": CSV}).json()
    model = fit(client, dataset["id"], n_clusters=3, random_state=0)
    scoring = score(client, model["id"], dataset["id"])
    before = client.get(scoring["result"], headers={"Accept": CSV}).text
    assert client.delete(f"/kmeans/datasets/{dataset['id']}").status_code == 204
    assert client.get(scoring["result"], headers={"Accept": CSV}).text == before
    assert before.splitlines()[1].startswith("w000,0,")


class NoLauncher:
    """A launcher for a dispatcher that only recovers: it runs nothing."""

    def start(self, job):
        raise AssertionError("not expected to start jobs")

    def close(self):
        pass


def test_a_scoring_whose_process_stopped_beating_is_requeued_and_scores_every_row(tmp_path: Path):
    import time

    from kmeans import scorejob
    from kmeans.jobs import Dispatcher
    from kmeans.store import Store
    from tests.api.api_helpers import app_client

    data_dir = tmp_path / "data"
    rows = np.random.default_rng(3).normal(size=(500, 3)).round(3).tolist()
    with app_client(data_dir) as api:
        ds = json_dataset(api, rows)
        model = fit(api, ds, n_clusters=3, random_state=0)
        labels = api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"]
    store = Store(data_dir)
    record = scorejob.new_record(store.get_model(model["id"]), store.get_dataset(ds), None, 60)
    store.add_scoring(record)
    claimed = store.claim_next("gone-host:1", 2, "token1")
    assert (claimed["kind"], claimed["id"]) == ("scoring", record["id"])
    # Its process died a minute ago, half-way through.
    store.update_job("scoring", record["id"], heartbeat=time.time() - 60, rows_scored=250)
    assert Dispatcher(store, NoLauncher(), max_running=2, heartbeat_timeout=5).recover_stale() == 1
    assert store.get_scoring(record["id"])["status"] == "queued"
    with app_client(data_dir) as api:
        done = wait_until_done(api, f"/kmeans/models/{model['id']}/scorings/{record['id']}")
        assert done["status"] == "succeeded" and done["attempts"] == 2 and done["rows_scored"] == 500, done
        assert [r["label"] for r in all_rows(api, done)] == labels
