"""Choosing k with sweeps, export/import of models, and PNG pictures."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from api_helpers import assert_problem, fit
from api_helpers import json_dataset as dataset
from matplotlib.image import imread
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app
from tests.conftest import local_client, wait_until_done


@pytest.fixture(scope="module")
def api(tmp_path_factory, app_class: type) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("sweeps") / "data", max_concurrent_fits=2)
    with local_client(build_app(settings, app_class)) as client:
        yield client




def blobs(n_centers: int, dims: int, per: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-50, 50, size=(n_centers, dims))
    while min(np.linalg.norm(a - b) for i, a in enumerate(centers) for b in centers[i + 1 :]) < 20:
        centers = rng.uniform(-50, 50, size=(n_centers, dims))
    return np.concatenate([c + rng.normal(0, 1.0, size=(per, dims)) for c in centers])


def wait_sweep(api: TestClient, sweep_id: str, timeout: float = 60) -> dict:
    return wait_until_done(api, f"/kmeans/sweeps/{sweep_id}", timeout)


def colours(png: bytes) -> int:
    image = imread(io.BytesIO(png), format="png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    pixels = (image[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


def saturated(png: bytes) -> int:
    """How many distinct clearly coloured (not grey) pixel values the image has."""
    image = imread(io.BytesIO(png), format="png")[..., :3]
    spread = image.max(axis=2) - image.min(axis=2)
    pixels = (image[spread > 0.3] * 255).round().astype(np.uint8)
    return len(np.unique(pixels // 32, axis=0))


@pytest.fixture(scope="module")
def five(api) -> tuple[str, np.ndarray]:
    data = blobs(5, 2)
    return dataset(api, data, ["width", "height"]), data


@pytest.fixture(scope="module")
def sweep(api, five) -> dict:
    response = api.post(
        "/kmeans/sweeps", json={"dataset_id": five[0], "k_min": 2, "k_max": 9, "params": {"random_state": 0}}
    )
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/kmeans/sweeps/{response.json()['id']}"
    assert response.json()["status"] in ("queued", "running", "succeeded")
    done = wait_sweep(api, response.json()["id"])
    assert done["status"] == "succeeded", done
    return done


# -- sweeps ------------------------------------------------------------------------------


def test_sweep_finds_five_blobs(sweep):
    assert sweep["recommended_k"] == 5 and sweep["rule"] == "consensus"
    measures = ["max_silhouette", "max_calinski_harabasz", "min_davies_bouldin", "elbow"]
    assert sweep["votes"] == dict.fromkeys(measures, 5)
    assert [r["k"] for r in sweep["results"]] == list(range(2, 10))
    by_k = {r["k"]: r for r in sweep["results"]}
    assert by_k[5]["silhouette"] == max(r["silhouette"] for r in sweep["results"])
    assert by_k[5]["davies_bouldin"] == min(r["davies_bouldin"] for r in sweep["results"])
    inertias = [r["inertia"] for r in sweep["results"]]
    assert inertias[3] < inertias[2] / 10  # the elbow at 5
    assert sweep["progress"] == 1.0


def test_sweep_is_listed(api, sweep, five):
    listed = api.get(f"/kmeans/sweeps?dataset_id={five[0]}").json()
    assert [s["id"] for s in listed["items"]] == [sweep["id"]] and listed["total"] == 1


def test_sweep_with_standardize_and_columns(api):
    data = np.column_stack([blobs(3, 2, seed=4), np.random.default_rng(1).normal(0, 1000, 180)])
    ds = dataset(api, data, ["a", "b", "noise"])
    body = {"dataset_id": ds, "k_min": 1, "k_max": 6, "params": {"columns": ["a", "b"], "random_state": 0}}
    done = wait_sweep(api, api.post("/kmeans/sweeps", json=body).json()["id"])
    assert done["recommended_k"] == 3
    assert done["results"][0]["silhouette"] is None  # k=1


@pytest.mark.parametrize(
    "body,status,fragments",
    [
        ({"k_min": 5, "k_max": 3}, 422, ["k_min", "k_max"]),
        ({"k_min": 1, "k_max": 60}, 422, ["50"]),
        ({"k_min": 2, "k_max": 3, "params": {"n_clusters": 3}}, 422, ["n_clusters"]),
        ({"k_min": 2, "k_max": 3, "params": {"init": [[0, 0], [1, 1]]}}, 422, ["init"]),
        ({"k_min": 2, "k_max": 3, "params": {"columns": ["nope"]}}, 422, ["nope"]),
        ({"k_min": 0, "k_max": 3}, 400, ["k_min"]),
    ],
)
def test_bad_sweeps(api, five, body, status, fragments):
    assert_problem(api.post("/kmeans/sweeps", json={"dataset_id": five[0], **body}), status, *fragments)


def test_sweep_larger_than_the_data_or_unknown_is_an_error(api):
    ds = dataset(api, [[1, 1], [2, 2], [3, 3]])
    assert_problem(api.post("/kmeans/sweeps", json={"dataset_id": ds, "k_min": 2, "k_max": 4}), 422, "rows")
    assert_problem(api.get("/kmeans/sweeps/sw_0000000000000000"), 404, "sw_0000000000000000")
    body = {"dataset_id": "ds_0000000000000000", "k_min": 2, "k_max": 4}
    assert_problem(api.post("/kmeans/sweeps", json=body), 404, "ds_0000000000000000")


# -- export / import ------------------------------------------------------------------------


@pytest.mark.both_apps
@pytest.mark.parametrize(
    "params",
    [
        {"n_clusters": 4, "random_state": 0},
        {"n_clusters": 3, "random_state": 1, "standardize": True, "distance": "cosine", "contamination": 0.1},
        {"n_clusters": 5, "method": "minibatch", "random_state": 2, "columns": ["c", "a"]},
    ],
)
def test_import_of_an_export_predicts_identically(api, params):
    data = blobs(4, 3, seed=7) * np.array([1, 100, 0.01])
    ds = dataset(api, data, ["a", "b", "c"])
    model = fit(api, ds, **params)
    assert model["status"] == "succeeded", model
    doc = api.get(f"/kmeans/models/{model['id']}/export").json()
    assert doc["format"] == "kmeans-service/model" and doc["format_version"] == 1
    assert doc["columns"] == model["columns"] and doc["params"] == model["params"]
    assert doc["metrics"]["silhouette"] == model["silhouette"]
    response = api.post("/kmeans/models/import", json=doc)
    assert response.status_code == 201, response.text
    imported = response.json()
    assert imported["status"] == "succeeded" and imported["id"] != model["id"]
    assert response.headers["location"] == f"/kmeans/models/{imported['id']}"
    width = len(model["columns"])
    points = np.random.default_rng(3).uniform(-60, 60, size=(500, width)) * (100 if width == 3 else 1)
    query = "?distances=true&all_distances=true" + ("&anomalies=true" if "contamination" in params else "")
    a = api.post(f"/kmeans/models/{model['id']}/predictions{query}", json={"data": points.tolist()}).json()
    b = api.post(f"/kmeans/models/{imported['id']}/predictions{query}", json={"data": points.tolist()}).json()
    assert a.pop("model_id") != b.pop("model_id")
    assert a == b
    assert len(set(a["labels"])) > 1
    centers = api.get(f"/kmeans/models/{model['id']}/centers").json()["centers"]
    assert api.get(f"/kmeans/models/{imported['id']}/centers").json()["centers"] == centers
    assert api.get(f"/kmeans/models/{imported['id']}/export").json()["centers"] == doc["centers"]
    assert_problem(api.get(f"/kmeans/models/{imported['id']}/labels"), 409, "imported")


@pytest.mark.both_apps
@pytest.mark.parametrize(
    "change,status,fragment",
    [
        ({"format": "pickle"}, 400, "format"),
        ({"format_version": 2}, 400, "format_version"),
        ({"centers": [[1.0, 2.0], [3.0]]}, 422, "centers"),
        ({"preprocessing": {"mean": [0, 0], "scale": [1, 0], "distance": "euclidean"}}, 422, "scale"),
        ({"preprocessing": {"mean": [0], "scale": [1], "distance": "euclidean"}}, 422, "mean"),
    ],
)
def test_bad_import_documents(api, change, status, fragment):
    doc = {"format": "kmeans-service/model", "format_version": 1, "columns": ["x", "y"], "centers": [[0, 0], [1, 1]]}
    assert_problem(api.post("/kmeans/models/import", json={**doc, **change}), status, fragment)


def test_minimal_import_predicts(api):
    doc = {"format": "kmeans-service/model", "format_version": 1, "columns": ["x", "y"], "centers": [[0, 0], [10, 10]]}
    model = api.post("/kmeans/models/import", json=doc).json()
    body = api.post(f"/kmeans/models/{model['id']}/predictions", json={"data": [[9, 9], [1, -1]]}).json()
    assert body["labels"] == [1, 0]


def test_export_of_an_unknown_model_is_404(api):
    assert_problem(api.get("/kmeans/models/m_0000000000000000/export"), 404, "m_0000000000000000")


# -- pictures -------------------------------------------------------------------------------


@pytest.mark.both_apps
def test_model_plot_of_two_features(api, five):
    model = fit(api, five[0], n_clusters=5, random_state=0)
    response = api.get(f"/kmeans/models/{model['id']}/plot.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    assert colours(response.content) > 2
    assert saturated(response.content) >= 4  # five clusters in clearly different colours


def test_model_plot_projects_more_features_and_samples_big_data(api):
    data = blobs(3, 4, per=2000, seed=2)
    model = fit(api, dataset(api, data), n_clusters=3, random_state=0)
    response = api.get(f"/kmeans/models/{model['id']}/plot.png")
    assert response.status_code == 200
    assert saturated(response.content) >= 3


def test_sweep_plot(api, sweep):
    response = api.get(f"/kmeans/sweeps/{sweep['id']}/plot.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert saturated(response.content) >= 3


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [("application/octet-stream", "application/octet-stream"),
     ("image/png, application/octet-stream;q=0.5", "image/png"), ("*/*", "image/png"),
     ("application/octet-stream;q=0.2, image/*", "image/png")],
)
def test_plots_come_as_octet_stream_to_a_client_that_asks_for_it(api, five, sweep, accept, media_type):
    # openapi-python-client reads only octet-stream binary answers: the spec's alternative is the same PNG.
    model = fit(api, five[0], n_clusters=5, random_state=0)
    for path in (f"/kmeans/models/{model['id']}/plot.png", f"/kmeans/sweeps/{sweep['id']}/plot.png"):
        plain, asked = api.get(path), api.get(path, headers={"Accept": accept})
        assert asked.status_code == 200 and asked.headers["content-type"] == media_type
        assert asked.content == plain.content and asked.content.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.both_apps
def test_plots_of_unknown_things_are_404(api):
    assert_problem(api.get("/kmeans/models/m_0000000000000000/plot.png"), 404)
    assert_problem(api.get("/kmeans/sweeps/sw_0000000000000000/plot.png"), 404)


def test_plots_of_one_feature_and_of_a_cosine_model(api):
    one = np.concatenate([np.random.default_rng(0).normal(m, 0.3, 40) for m in (0, 5, 10)])[:, None]
    model = fit(api, dataset(api, one, ["length"]), n_clusters=3, random_state=0)
    response = api.get(f"/kmeans/models/{model['id']}/plot.png")
    assert response.status_code == 200 and saturated(response.content) >= 3
    cosine = fit(api, dataset(api, blobs(3, 3, seed=5)), n_clusters=3, random_state=0, distance="cosine")
    response = api.get(f"/kmeans/models/{cosine['id']}/plot.png")
    assert response.status_code == 200 and saturated(response.content) >= 3


def test_plot_of_an_imported_model_is_409(api):
    doc = {"format": "kmeans-service/model", "format_version": 1, "columns": ["x", "y"], "centers": [[0, 0], [1, 1]]}
    model = api.post("/kmeans/models/import", json=doc).json()
    assert_problem(api.get(f"/kmeans/models/{model['id']}/plot.png"), 409, "imported")


