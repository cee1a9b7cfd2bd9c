"""The original textbook flow: /upload, /fit, /predict with the files in examples/.

Tests about job_id numbering get a fresh app (``client``). Tests that fit share one app
(``api``) in which examples/model.csv was the first upload, so it is job 0 there too; each
of them fits before it predicts, since /predict uses the latest fit of the job.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from api_helpers import (
    CSV,
    JSON,
    MODEL_CSV,
    MODEL_POINTS,
    PREDICT_CSV,
    app_client,
    assert_problem,
    csv_lines,
    upload,
)
from starlette.testclient import TestClient

from server import build_app
from tests.conftest import local_client

INTEGER = re.compile(r"\d+")


@pytest.fixture(scope="module")
def api(tmp_path_factory, app_class: type) -> Iterator[TestClient]:
    with app_client(tmp_path_factory.mktemp("classic") / "data", app_class) as client:
        assert upload(client).json()["job_id"] == 0
        yield client


def classic_fit(client, job_id: int = 0, accept: str = CSV, **params):
    return client.post("/kmeans/fit", json={"job_id": job_id, "model_params": params}, headers={"accept": accept})


def classic_predict(client, job_id: int = 0, content: bytes = PREDICT_CSV, accept: str = CSV):
    return client.post(
        "/kmeans/predict",
        files={"file": ("predict.csv", content, CSV)},
        data={"job_id": str(job_id)},
        headers={"accept": accept},
    )


def integer_labels(response) -> list[int]:
    lines = csv_lines(response)
    for line in lines:
        assert INTEGER.fullmatch(line), f"label {line!r} is not an integer"
    return [int(line) for line in lines]


# -- upload and job_id numbering (fresh apps) ----------------------------------------------


def test_upload_example_returns_job_id_0(client):
    response = upload(client)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(JSON)
    body = response.json()
    assert body["job_id"] == 0
    assert body["filename"] == "model.csv"
    assert body["rows"] == 6
    assert body["n_features"] == 2
    # The upload is a dataset like any other: its rows are the file's points.
    rows = client.get(f"/kmeans/datasets/{body['dataset_id']}/rows").json()
    assert rows["items"] == MODEL_POINTS


def test_job_ids_count_up_for_different_contents(client):
    job_ids = [
        upload(client, content, "model.csv").json()["job_id"]
        for content in (MODEL_CSV, b"1,1\n2,2\n", b"5,5\n6,6\n7,7\n")
    ]
    assert job_ids == [0, 1, 2]


def test_same_filename_with_new_content_is_a_new_job_id(client):
    first = upload(client, MODEL_CSV, "points.csv").json()
    second = upload(client, b"1,1\n2,2\n3,3\n", "points.csv").json()
    assert (first["job_id"], second["job_id"]) == (0, 1)
    assert first["dataset_id"] != second["dataset_id"]
    assert second["rows"] == 3


def test_same_filename_with_same_content_is_the_same_job_id(client):
    first = upload(client).json()
    upload(client, b"9,9\n8,8\n")
    again = upload(client).json()
    assert again["job_id"] == first["job_id"] == 0
    assert again["dataset_id"] == first["dataset_id"]
    assert client.get("/kmeans/datasets").json()["total"] == 2


def test_same_content_under_another_filename_is_a_new_job_id(client):
    first = upload(client, MODEL_CSV, "a.csv").json()
    second = upload(client, MODEL_CSV, "b.csv").json()
    assert (first["job_id"], second["job_id"]) == (0, 1)
    assert second["filename"] == "b.csv"


def test_same_file_after_its_dataset_was_deleted_is_a_new_job_id(client):
    first = upload(client).json()
    assert client.delete(f"/kmeans/datasets/{first['dataset_id']}").status_code == 204
    again = upload(client).json()
    assert again["job_id"] == 1
    assert again["dataset_id"] != first["dataset_id"]
    assert client.get(f"/kmeans/datasets/{again['dataset_id']}/rows").json()["items"] == MODEL_POINTS


def test_concurrent_uploads_of_the_same_file_get_one_job_id(client):
    for round_ in range(3):
        content = f"{round_},1\n{round_},2\n9,9\n".encode()
        start = threading.Barrier(8)
        job_ids: list[int] = []

        def send(content: bytes = content, start: threading.Barrier = start, job_ids: list = job_ids) -> None:
            start.wait()
            job_ids.append(upload(client, content, "same.csv").json()["job_id"])

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(job_ids) == 8
        assert len(set(job_ids)) == 1, job_ids
    assert client.get("/kmeans/datasets").json()["total"] == 3


@pytest.mark.both_apps
def test_job_ids_survive_a_new_app_on_the_same_data_dir(client, settings, app_class):
    upload(client)
    upload(client, b"1,1\n2,2\n", "other.csv")
    model_id = classic_fit(client, n_clusters=2, random_state=0).headers["x-model-id"]
    expected = integer_labels(classic_predict(client))

    with local_client(build_app(settings, app_class)) as restarted:
        assert upload(restarted).json()["job_id"] == 0
        assert upload(restarted, b"3,3\n4,4\n", "third.csv").json()["job_id"] == 2
        # The fit made before the restart still serves /predict for job 0.
        assert integer_labels(classic_predict(restarted)) == expected
        assert restarted.get(f"/kmeans/models/{model_id}").json()["status"] == "succeeded"


@pytest.mark.both_apps
def test_predict_before_fit_is_409(client):
    upload(client)
    assert_problem(classic_predict(client), 409, "job_id 0", "fit")


def test_fit_after_the_dataset_was_deleted_is_404(client):
    job = upload(client).json()
    assert client.delete(f"/kmeans/datasets/{job['dataset_id']}").status_code == 204
    assert_problem(classic_fit(client, n_clusters=2), 404, "deleted")


# -- fit and predict (one shared app) ------------------------------------------------------


@pytest.mark.both_apps
def test_fit_answers_one_integer_label_per_row_as_csv(api):
    response = classic_fit(api, n_clusters=3)
    labels = integer_labels(response)
    assert len(labels) == 6
    assert set(labels) == {0, 1, 2}


def test_fit_groups_the_example_points_by_x(api):
    labels = integer_labels(classic_fit(api, n_clusters=2, random_state=0))
    left, right = labels[:3], labels[3:]
    assert len(set(left)) == 1 and len(set(right)) == 1
    assert left[0] not in right


@pytest.mark.both_apps
def test_predict_labels_agree_with_fit_and_centers(api):
    fitted = classic_fit(api, n_clusters=3, random_state=0)
    train_labels = integer_labels(fitted)
    centers = np.array(api.get(f"/kmeans/models/{fitted.headers['x-model-id']}/centers").json()["centers"])

    labels = integer_labels(classic_predict(api))

    points = np.array([[0.0, 0.0], [12.0, 3.0]])
    nearest = np.argmin(((points[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2), axis=1)
    assert labels == nearest.tolist()
    # (0, 0) lands with the training point (1, 0), and (12, 3) with the points at x = 10.
    assert labels[0] == train_labels[2]
    assert labels[1] in train_labels[3:]


@pytest.mark.both_apps
def test_predict_with_json_accept_returns_labels_object(api):
    model_id = classic_fit(api, n_clusters=2, random_state=0).headers["x-model-id"]
    response = classic_predict(api, accept=JSON)
    assert response.status_code == 200
    body = response.json()
    assert body["model_id"] == model_id
    assert len(body["labels"]) == 2 and all(isinstance(v, int) for v in body["labels"])


def test_fit_with_json_accept_returns_labels_object(api):
    response = classic_fit(api, accept=JSON, n_clusters=2, random_state=0)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(JSON)
    body = response.json()
    assert body["model_id"] == response.headers["x-model-id"]
    assert len(body["labels"]) == 6
    assert all(isinstance(v, int) for v in body["labels"])
    assert body["labels"][0] not in body["labels"][3:]


def test_fit_x_model_id_points_at_a_succeeded_model(api):
    job = upload(api).json()
    response = classic_fit(api, n_clusters=3, random_state=0)
    model = api.get(f"/kmeans/models/{response.headers['x-model-id']}")
    assert model.status_code == 200
    body = model.json()
    assert body["status"] == "succeeded"
    assert body["dataset_id"] == job["dataset_id"]
    assert body["params"] == {"n_clusters": 3, "random_state": 0}
    labels = api.get(f"/kmeans/models/{body['id']}/labels").json()["labels"]
    assert labels == integer_labels(response)


def test_predict_uses_the_latest_fit_of_the_job(api):
    classic_fit(api, n_clusters=2, random_state=0)
    latest = classic_fit(api, accept=JSON, n_clusters=3, random_state=0).json()["model_id"]
    assert classic_predict(api, accept=JSON).json()["model_id"] == latest


def test_fit_unknown_job_id_is_404(api):
    assert_problem(classic_fit(api, job_id=7777, n_clusters=2), 404, "job_id 7777")


def test_predict_unknown_job_id_is_404(api):
    assert_problem(classic_predict(api, job_id=7777), 404, "job_id 7777")


def test_fit_without_model_params_uses_defaults_and_names_n_clusters_when_too_few_rows(api):
    # scikit-learn's default is 8 clusters; the example has only 6 rows.
    response = api.post("/kmeans/fit", json={"job_id": 0})
    problem = assert_problem(response, 422, "n_clusters", "default")
    assert problem["parameter"] == "n_clusters"


def test_predict_after_its_model_was_deleted_is_409(api):
    job_id = upload(api, b"1,1\n2,2\n9,9\n", "deleted-model.csv").json()["job_id"]
    model_id = classic_fit(api, job_id=job_id, n_clusters=2).headers["x-model-id"]
    assert api.delete(f"/kmeans/models/{model_id}").status_code == 204
    assert_problem(classic_predict(api, job_id=job_id, content=b"1,1\n"), 409, f"job_id {job_id}")


def test_predict_still_works_after_the_dataset_was_deleted(api):
    job = upload(api, b"1,1\n2,2\n9,9\n", "deleted-dataset.csv").json()
    assert classic_fit(api, job_id=job["job_id"], n_clusters=2, random_state=0).status_code == 200
    expected = integer_labels(classic_predict(api, job_id=job["job_id"], content=b"1,1\n9,8\n"))
    assert expected[0] != expected[1]
    assert api.delete(f"/kmeans/datasets/{job['dataset_id']}").status_code == 204
    assert integer_labels(classic_predict(api, job_id=job["job_id"], content=b"1,1\n9,8\n")) == expected
