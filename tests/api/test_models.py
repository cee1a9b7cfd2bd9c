"""/models: background fits, their results, predictions; plus health, spec and Swagger UI."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from api_helpers import (
    CSV,
    EXAMPLES,
    JSON,
    MODEL_CSV,
    MODEL_POINTS,
    assert_problem,
    create_csv_dataset,
    csv_lines,
    fit,
    leftovers,
    wait_for_model,
)
from sklearn.cluster import KMeans
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app
from tests.conftest import local_client

ROOT = EXAMPLES.parent
MODEL_ID = re.compile(r"m_[0-9a-f]{16}")


@dataclass
class Shared:
    client: TestClient
    settings: Settings


@pytest.fixture(scope="module")
def shared(tmp_path_factory, app_class: type) -> Iterator[Shared]:
    """One app for the tests that fit their own models and only look at those."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("models") / "data", max_upload_bytes=1_000_000, max_concurrent_fits=2
    )
    with local_client(build_app(settings, app_class)) as client:
        yield Shared(client, settings)


@pytest.fixture
def api(shared: Shared) -> TestClient:
    return shared.client


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Training points in four blobs (3 features) and new points to label."""
    rng = np.random.default_rng(42)
    centers = rng.uniform(-20, 20, size=(4, 3))
    train = np.concatenate([c + rng.normal(scale=2.0, size=(30, 3)) for c in centers])
    new = rng.uniform(-25, 25, size=(40, 3))
    return train, new


@pytest.fixture(scope="module")
def blob_model(shared, blobs) -> dict:
    """A model fitted on the blobs: n_clusters=4, random_state=7, n_init=3."""
    api = shared.client
    train, _ = blobs
    response = api.post("/kmeans/datasets", json={"data": train.tolist(), "columns": ["a", "b", "c"]})
    assert response.status_code == 201, response.text
    model = fit(api, response.json()["id"], n_clusters=4, random_state=7, n_init=3)
    assert model["status"] == "succeeded", model
    return model


@pytest.fixture(scope="module")
def sklearn_model(blobs) -> KMeans:
    train, _ = blobs
    return KMeans(n_clusters=4, random_state=7, n_init=3).fit(train)


@pytest.fixture(scope="module")
def example_model(shared) -> dict:
    """examples/model.csv fitted with n_clusters=3."""
    api = shared.client
    dataset = create_csv_dataset(api, MODEL_CSV, name="model.csv")
    model = fit(api, dataset["id"], n_clusters=3, random_state=0)
    assert model["status"] == "succeeded", model
    return model


# Minutes of work for one process: a fit that is "running" for as long as a test needs.
LONG_FIT = {"n_clusters": 20, "init": "random", "n_init": 1000, "max_iter": 100000, "tol": 0, "random_state": 0}


@dataclass
class Blocked:
    """An app that runs one fit at a time, busy with a long fit: new fits stay queued."""

    client: TestClient
    blocker: dict

    def release(self) -> None:
        """Delete the long fit (its process is stopped), so that the queue moves on."""
        assert self.client.delete(f"/kmeans/models/{self.blocker['id']}").status_code == 204


@pytest.fixture
def blocked(settings, app_class: type) -> Iterator[Blocked]:
    with local_client(build_app(Settings(data_dir=settings.data_dir, max_concurrent_fits=1), app_class)) as client:
        rows = np.random.default_rng(0).normal(size=(5000, 2)).round(4)
        dataset = client.post("/kmeans/datasets", json={"data": rows.tolist()}).json()
        blocker = client.post("/kmeans/models", json={"dataset_id": dataset["id"], "params": LONG_FIT}).json()
        deadline = time.monotonic() + 20
        while client.get(f"/kmeans/models/{blocker['id']}").json()["status"] == "queued":
            assert time.monotonic() < deadline, "the long fit never started"
        assert client.get(f"/kmeans/models/{blocker['id']}").json()["status"] == "running"
        yield Blocked(client, blocker)
        client.delete(f"/kmeans/models/{blocker['id']}")


def queue_fit(client: TestClient, dataset_id: str) -> str:
    response = client.post("/kmeans/models", json={"dataset_id": dataset_id, "params": {"n_clusters": 2}})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def failed_model(client: TestClient, data_dir: Path) -> dict:
    """A model whose fit failed: its dataset's data file vanished before the fit ran."""
    dataset = create_csv_dataset(client, MODEL_CSV)
    (data_dir / "datasets" / f"{dataset['id']}.npy").unlink()
    model = fit(client, dataset["id"], n_clusters=2)
    assert model["status"] == "failed", model
    return model


# -- creating and fitting ------------------------------------------------------------------


def test_create_model_is_202_with_location_and_queued_status(api):
    dataset = create_csv_dataset(api, MODEL_CSV)
    response = api.post("/kmeans/models", json={"dataset_id": dataset["id"], "params": {"n_clusters": 2}})
    assert response.status_code == 202, response.text
    model = response.json()
    assert MODEL_ID.fullmatch(model["id"])
    assert model["status"] in ("queued", "running")
    assert model["dataset_id"] == dataset["id"]
    assert response.headers["location"] == f"/kmeans/models/{model['id']}"
    followed = api.get(response.headers["location"])
    assert followed.status_code == 200
    assert followed.json()["id"] == model["id"]
    assert wait_for_model(api, model["id"])["status"] == "succeeded"


def test_fit_succeeds_with_results_params_and_timings(api, example_model):
    model = api.get(f"/kmeans/models/{example_model['id']}").json()
    assert model["status"] == "succeeded"
    assert model["error"] is None
    assert model["params"] == {"n_clusters": 3, "random_state": 0}
    assert (model["rows"], model["n_features"], model["columns"]) == (6, 2, ["x1", "x2"])
    assert isinstance(model["inertia"], float) and model["inertia"] >= 0
    assert isinstance(model["n_iter"], int) and model["n_iter"] >= 1
    assert len(model["cluster_sizes"]) == 3
    assert sum(model["cluster_sizes"]) == 6
    assert all(size >= 1 for size in model["cluster_sizes"])

    created, started, finished = (datetime.fromisoformat(model[k]) for k in ("created_at", "started_at", "finished_at"))
    assert created <= started <= finished
    assert 0 <= model["fit_seconds"] <= (finished - started).total_seconds() + 0.05


def test_fit_results_match_labels_and_centers(api, example_model):
    model_id = example_model["id"]
    labels = api.get(f"/kmeans/models/{model_id}/labels").json()["labels"]
    centers = np.array(api.get(f"/kmeans/models/{model_id}/centers").json()["centers"])
    points = np.array(MODEL_POINTS)
    assert np.bincount(labels, minlength=3).tolist() == example_model["cluster_sizes"]
    inertia = sum(((points[i] - centers[label]) ** 2).sum() for i, label in enumerate(labels))
    assert inertia == pytest.approx(example_model["inertia"])


def test_fit_with_every_parameter(api):
    dataset = create_csv_dataset(api, MODEL_CSV)
    params = {
        "n_clusters": 2,
        "init": "random",
        "n_init": 2,
        "max_iter": 50,
        "tol": 0.001,
        "random_state": 3,
        "algorithm": "elkan",
    }
    model = fit(api, dataset["id"], **params)
    assert model["status"] == "succeeded", model
    assert model["params"] == params


def test_fit_with_random_state_is_reproducible(api):
    dataset = create_csv_dataset(api, MODEL_CSV)
    first, second = (fit(api, dataset["id"], n_clusters=3, random_state=11) for _ in range(2))
    for endpoint in ("labels", "centers"):
        a = api.get(f"/kmeans/models/{first['id']}/{endpoint}").json()
        b = api.get(f"/kmeans/models/{second['id']}/{endpoint}").json()
        a.pop("model_id"), b.pop("model_id")
        assert a == b


def test_fit_without_params_and_too_few_rows_for_the_default_is_422(api):
    dataset = create_csv_dataset(api, MODEL_CSV)
    response = api.post("/kmeans/models", json={"dataset_id": dataset["id"]})
    problem = assert_problem(response, 422, "n_clusters", "default")
    assert problem["parameter"] == "n_clusters"


def test_fit_without_params_uses_scikit_learn_defaults(api):
    dataset = create_csv_dataset(api, b"".join(f"{i},{i % 3}\n".encode() for i in range(20)))
    response = api.post("/kmeans/models", json={"dataset_id": dataset["id"]})
    assert response.status_code == 202, response.text
    model = wait_for_model(api, response.json()["id"])
    assert model["status"] == "succeeded", model
    assert len(model["cluster_sizes"]) == 8


# -- labels and centers --------------------------------------------------------------------


def test_labels_json_one_per_row(api, example_model):
    response = api.get(f"/kmeans/models/{example_model['id']}/labels")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(JSON)
    body = response.json()
    assert body["model_id"] == example_model["id"]
    assert len(body["labels"]) == 6
    assert set(body["labels"]) == {0, 1, 2}


@pytest.mark.both_apps
def test_labels_csv_one_integer_per_line(api, example_model):
    json_labels = api.get(f"/kmeans/models/{example_model['id']}/labels").json()["labels"]
    lines = csv_lines(api.get(f"/kmeans/models/{example_model['id']}/labels", headers={"accept": CSV}))
    assert all(re.fullmatch(r"\d+", line) for line in lines), lines
    assert [int(line) for line in lines] == json_labels


def test_centers_json_shape_and_columns(api, blob_model, sklearn_model):
    body = api.get(f"/kmeans/models/{blob_model['id']}/centers").json()
    assert body["model_id"] == blob_model["id"]
    assert body["columns"] == ["a", "b", "c"]
    centers = np.array(body["centers"])
    assert centers.shape == (4, 3)
    np.testing.assert_allclose(centers, sklearn_model.cluster_centers_, rtol=1e-12, atol=1e-12)


@pytest.mark.both_apps
def test_centers_csv_header_and_rows(api, blob_model):
    json_centers = api.get(f"/kmeans/models/{blob_model['id']}/centers").json()["centers"]
    lines = csv_lines(api.get(f"/kmeans/models/{blob_model['id']}/centers", headers={"accept": CSV}))
    assert lines[0] == "a,b,c"
    assert [[float(v) for v in line.split(",")] for line in lines[1:]] == json_centers


def test_labels_equal_scikit_learn(api, blob_model, sklearn_model):
    labels = api.get(f"/kmeans/models/{blob_model['id']}/labels").json()["labels"]
    assert labels == sklearn_model.labels_.tolist()
    assert blob_model["inertia"] == pytest.approx(sklearn_model.inertia_)
    assert blob_model["n_iter"] == sklearn_model.n_iter_


# -- predictions ---------------------------------------------------------------------------


@pytest.mark.both_apps
def test_predictions_equal_scikit_learn(api, blobs, blob_model, sklearn_model):
    _, new = blobs
    response = api.post(f"/kmeans/models/{blob_model['id']}/predictions", json={"data": new.tolist()})
    assert response.status_code == 200, response.text
    assert response.json()["labels"] == sklearn_model.predict(new).tolist()


@pytest.mark.both_apps
def test_predictions_from_multipart_file(api, blobs, blob_model, sklearn_model):
    _, new = blobs
    content = "".join(",".join(repr(v) for v in row) + "\n" for row in new.tolist()).encode()
    response = api.post(f"/kmeans/models/{blob_model['id']}/predictions", files={"file": ("new.csv", content, CSV)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(JSON)
    assert response.json() == {"model_id": blob_model["id"], "labels": sklearn_model.predict(new).tolist()}


@pytest.mark.both_apps
def test_predictions_from_raw_csv(api, blobs, blob_model, sklearn_model):
    _, new = blobs
    content = b"a,b,c\r\n" + "".join(", ".join(repr(v) for v in row) + "\r\n" for row in new.tolist()).encode()
    response = api.post(
        f"/kmeans/models/{blob_model['id']}/predictions", content=content, headers={"Content-Type": CSV}
    )
    assert response.status_code == 200, response.text
    assert response.json()["labels"] == sklearn_model.predict(new).tolist()


@pytest.mark.both_apps
@pytest.mark.parametrize("rows", [1, 6000])
def test_json_predictions_small_and_large_equal_csv_predictions(api, blob_model, rows):
    # A small JSON body is handled on the event loop, one over 64 KiB in a worker thread.
    points = np.random.default_rng(rows).normal(scale=5, size=(rows, 3)).round(6)
    body = {"data": points.tolist()}
    assert (len(json.dumps(body)) > 65536) == (rows > 1)
    path = f"/kmeans/models/{blob_model['id']}/predictions"
    as_json = api.post(path, json=body)
    content = "".join(",".join(repr(v) for v in row) + "\n" for row in points.tolist()).encode()
    as_csv = api.post(path, content=content, headers={"Content-Type": CSV})
    assert as_json.status_code == as_csv.status_code == 200, (as_json.text, as_csv.text)
    assert as_json.headers["content-type"].startswith(JSON)
    assert as_json.json() == as_csv.json() and len(as_json.json()["labels"]) == rows


def test_predictions_from_json(api, example_model):
    centers = np.array(api.get(f"/kmeans/models/{example_model['id']}/centers").json()["centers"])
    points = [[0.0, 0.0], [12.0, 3.0], [1.0, 4.0]]
    response = api.post(f"/kmeans/models/{example_model['id']}/predictions", json={"data": points})
    assert response.status_code == 200, response.text
    nearest = [int(np.argmin(((centers - p) ** 2).sum(axis=1))) for p in points]
    assert response.json() == {"model_id": example_model["id"], "labels": nearest}


def test_predictions_as_csv(api, example_model):
    url = f"/kmeans/models/{example_model['id']}/predictions"
    points = [[0, 0], [12, 3]]
    expected = api.post(url, json={"data": points}).json()["labels"]
    responses = [
        api.post(url, json={"data": points}, headers={"accept": CSV}),
        api.post(url, content=b"0,0\n12,3\n", headers={"Content-Type": CSV, "accept": CSV}),
        api.post(url, files={"file": ("p.csv", b"0,0\n12,3\n", CSV)}, headers={"accept": CSV}),
    ]
    for response in responses:
        assert [int(line) for line in csv_lines(response)] == expected


def test_predictions_of_training_points_equal_their_labels(api, blobs, blob_model):
    train, _ = blobs
    labels = api.get(f"/kmeans/models/{blob_model['id']}/labels").json()["labels"]
    predicted = api.post(f"/kmeans/models/{blob_model['id']}/predictions", json={"data": train.tolist()})
    assert predicted.json()["labels"] == labels


@pytest.mark.both_apps
def test_model_fitted_through_one_app_predicts_through_another(app_class, shared):
    api = shared.client
    dataset = create_csv_dataset(api, MODEL_CSV)
    model = fit(api, dataset["id"], n_clusters=2, random_state=0)
    url = f"/kmeans/models/{model['id']}/predictions"
    expected = api.post(url, json={"data": [[0, 0], [12, 3]]}).json()["labels"]
    labels = api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"]

    # Another worker process, or the service after a restart: a new app on the same data dir.
    with local_client(build_app(shared.settings, app_class)) as other:
        assert other.get(f"/kmeans/models/{model['id']}").json()["status"] == "succeeded"
        assert other.post(url, json={"data": [[0, 0], [12, 3]]}).json()["labels"] == expected
        assert other.get(f"/kmeans/models/{model['id']}/labels").json()["labels"] == labels
        # and the other way round: a fit through the second app is seen by the first
        second = fit(other, dataset["id"], n_clusters=3, random_state=0)
    assert api.get(f"/kmeans/models/{second['id']}").json()["status"] == "succeeded"


@pytest.mark.both_apps
def test_labels_of_more_rows_than_one_response_piece(api):
    # Label responses above 262144 labels are streamed in pieces; both formats must stay whole.
    n = 262_144 + 5
    dataset = create_csv_dataset(api, b"0\n1\n" * (n // 2) + b"9\n")
    model = fit(api, dataset["id"], n_clusters=2, random_state=0, n_init=1, max_iter=5)
    assert model["status"] == "succeeded", model
    body = api.get(f"/kmeans/models/{model['id']}/labels").json()
    assert body["model_id"] == model["id"]
    labels = body["labels"]
    assert len(labels) == n
    lines = csv_lines(api.get(f"/kmeans/models/{model['id']}/labels", headers={"accept": CSV}))
    assert [int(v) for v in lines] == labels
    assert labels[0] != labels[-1]  # 0 and 9 are in different clusters
    assert len(set(labels[: n - 1 : 2])) == 1
    # predictions of as many points are streamed the same way
    predicted = api.post(
        f"/kmeans/models/{model['id']}/predictions",
        content=b"0\n1\n" * (n // 2) + b"9\n",
        headers={"Content-Type": CSV},
    )
    assert predicted.status_code == 200, predicted.text
    assert predicted.json() == {"model_id": model["id"], "labels": labels}


# -- listing and deleting ------------------------------------------------------------------


def test_list_models_filtered_by_dataset_id(api):
    first = create_csv_dataset(api, MODEL_CSV)
    second = create_csv_dataset(api, b"1,1\n2,2\n3,3\n")
    on_first = [fit(api, first["id"], n_clusters=k)["id"] for k in (1, 2)]
    on_second = fit(api, second["id"], n_clusters=1)["id"]

    page = api.get(f"/kmeans/models?dataset_id={first['id']}").json()
    assert (page["total"], page["offset"], page["limit"]) == (2, 0, 100)
    assert [m["id"] for m in page["items"]] == on_first[::-1]  # newest first
    assert page["items"][0] == api.get(f"/kmeans/models/{on_first[1]}").json()
    page = api.get(f"/kmeans/models?dataset_id={first['id']}&offset=1&limit=1").json()
    assert (page["total"], page["offset"], page["limit"]) == (2, 1, 1)
    assert [m["id"] for m in page["items"]] == [on_first[0]]
    page = api.get(f"/kmeans/models?dataset_id={second['id']}").json()
    assert [m["id"] for m in page["items"]] == [on_second]
    assert api.get("/kmeans/models?dataset_id=ds_0000000000000000").json()["total"] == 0


def test_list_models_filtered_by_status(shared):
    api = shared.client
    dataset = create_csv_dataset(api, MODEL_CSV)
    succeeded = fit(api, dataset["id"], n_clusters=2)
    (shared.settings.data_dir / "datasets" / f"{dataset['id']}.npy").unlink()
    failed = fit(api, dataset["id"], n_clusters=2)
    assert failed["status"] == "failed"

    def listed(query: str) -> list[str]:
        return [m["id"] for m in api.get(f"/kmeans/models?dataset_id={dataset['id']}&{query}").json()["items"]]

    assert listed("status=succeeded") == [succeeded["id"]]
    assert listed("status=failed") == [failed["id"]]
    assert listed("status=running") == []
    everywhere = api.get("/kmeans/models?status=failed&limit=1000").json()["items"]
    assert failed["id"] in [m["id"] for m in everywhere]
    assert {m["status"] for m in everywhere} == {"failed"}


def test_delete_model_then_404(shared):
    api, data_dir = shared.client, shared.settings.data_dir
    dataset = create_csv_dataset(api, MODEL_CSV)
    model = fit(api, dataset["id"], n_clusters=2)
    assert sorted(p.name for p in (data_dir / "models").glob(f"{model['id']}.*"))
    response = api.delete(f"/kmeans/models/{model['id']}")
    assert response.status_code == 204
    assert response.content == b""
    for url in (f"/kmeans/models/{model['id']}", f"/kmeans/models/{model['id']}/labels"):
        assert_problem(api.get(url), 404, model["id"])
    assert_problem(api.delete(f"/kmeans/models/{model['id']}"), 404, model["id"])
    assert model["id"] not in [m["id"] for m in api.get(f"/kmeans/models?dataset_id={dataset['id']}").json()["items"]]
    assert list((data_dir / "models").glob(f"{model['id']}.*")) == []
    # its dataset is untouched
    assert api.get(f"/kmeans/datasets/{dataset['id']}").status_code == 200


# -- models that have not succeeded --------------------------------------------------------


def test_queued_and_running_models_have_no_labels_centers_or_predictions_409(blocked):
    client = blocked.client
    dataset = create_csv_dataset(client, MODEL_CSV)
    queued = queue_fit(client, dataset["id"])
    assert client.get(f"/kmeans/models/{queued}").json()["status"] == "queued"
    for model_id, status in ((queued, "queued"), (blocked.blocker["id"], "running")):
        assert_problem(client.get(f"/kmeans/models/{model_id}/labels"), 409, status)
        assert_problem(client.get(f"/kmeans/models/{model_id}/centers"), 409, status)
        assert_problem(client.post(f"/kmeans/models/{model_id}/predictions", json={"data": [[0, 0]]}), 409, status)

    blocked.release()
    assert wait_for_model(client, queued)["status"] == "succeeded"
    assert len(client.get(f"/kmeans/models/{queued}/labels").json()["labels"]) == 6


def test_dataset_with_a_queued_fit_cannot_be_deleted_409(blocked):
    client = blocked.client
    dataset = create_csv_dataset(client, MODEL_CSV)
    queued = queue_fit(client, dataset["id"])
    assert_problem(client.delete(f"/kmeans/datasets/{dataset['id']}"), 409, queued)
    assert client.get(f"/kmeans/datasets/{dataset['id']}").status_code == 200

    blocked.release()
    assert wait_for_model(client, queued)["status"] == "succeeded"
    assert client.delete(f"/kmeans/datasets/{dataset['id']}").status_code == 204


def test_model_deleted_while_queued_is_never_fitted(blocked, settings):
    client = blocked.client
    dataset = create_csv_dataset(client, MODEL_CSV)
    queued = queue_fit(client, dataset["id"])
    assert client.delete(f"/kmeans/models/{queued}").status_code == 204
    blocked.release()
    later = queue_fit(client, dataset["id"])  # fits run first come, first served
    assert wait_for_model(client, later)["status"] == "succeeded"
    assert_problem(client.get(f"/kmeans/models/{queued}"), 404, queued)
    assert list((settings.data_dir / "models").glob(f"{queued}.*")) == []


def test_failed_fit_keeps_its_error_and_has_no_labels_409(shared):
    api = shared.client
    model = failed_model(api, shared.settings.data_dir)
    error = model["error"]
    assert isinstance(error, dict)
    assert isinstance(error.get("detail"), str) and error["detail"].strip()
    assert model["finished_at"] is not None
    assert model["cluster_sizes"] is None
    assert_problem(api.get(f"/kmeans/models/{model['id']}/labels"), 409, "failed")
    assert_problem(api.get(f"/kmeans/models/{model['id']}/centers"), 409, "failed")
    assert_problem(api.post(f"/kmeans/models/{model['id']}/predictions", json={"data": [[0, 0]]}), 409, "failed")
    assert leftovers(shared.settings.data_dir) == []


def test_classic_fit_that_fails_is_a_problem_naming_the_model(shared):
    api = shared.client
    job = api.post("/kmeans/upload", files={"file": ("doomed.csv", b"1,1\n2,2\n3,3\n", CSV)}).json()
    (shared.settings.data_dir / "datasets" / f"{job['dataset_id']}.npy").unlink()
    response = api.post("/kmeans/fit", json={"job_id": job["job_id"], "model_params": {"n_clusters": 2}})
    problem = assert_problem(response, 500, "data file")
    model = api.get(f"/kmeans/models/{problem['model_id']}").json()
    assert model["status"] == "failed"
    assert model["error"]["detail"] == problem["detail"]


# -- health, spec, UI ----------------------------------------------------------------------


@pytest.mark.both_apps
def test_ping(api):
    response = api.get("/kmeans/ping")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(JSON)
    assert response.json()["status"] == "ok"
    assert isinstance(response.json()["version"], str)


@pytest.mark.both_apps
def test_openapi_json_has_every_path(api):
    response = api.get("/kmeans/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    expected = yaml.load((ROOT / "api.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert set(spec["paths"]) == set(expected["paths"])
    for path, operations in expected["paths"].items():
        for method, operation in operations.items():
            if method != "parameters":
                assert spec["paths"][path][method]["operationId"] == operation["operationId"]


@pytest.mark.both_apps
def test_swagger_ui_is_html(api):
    response = api.get("/kmeans/ui/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger" in response.text.lower()


@pytest.mark.both_apps
def test_unknown_path_is_404_problem(api):
    assert_problem(api.get("/kmeans/nothing-here"), 404)


@pytest.mark.both_apps
def test_delete_model_answers_204_without_a_problem_content_type(api):
    dataset = create_csv_dataset(api, MODEL_CSV)
    model = fit(api, dataset["id"], n_clusters=2)
    response = api.delete(f"/kmeans/models/{model['id']}")
    assert response.status_code == 204
    assert "problem" not in response.headers.get("content-type", "")
