"""Fit options (method, standardize, distance, columns, weights, explicit init), model
metrics, and predictions with distances and anomaly flags."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import yaml
from api_helpers import CSV, JSON, assert_problem, fit
from api_helpers import json_dataset as dataset
from sklearn.cluster import BisectingKMeans, KMeans, MiniBatchKMeans
from sklearn.metrics import davies_bouldin_score, silhouette_score
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app
from tests.conftest import ROOT, local_client


@pytest.fixture(scope="module")
def api(tmp_path_factory, app_class: type) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("options") / "data", max_concurrent_fits=2)
    with local_client(build_app(settings, app_class)) as client:
        yield client




def succeeded(api: TestClient, dataset_id: str, **params) -> dict:
    model = fit(api, dataset_id, **params)
    assert model["status"] == "succeeded", model
    return model


def post_model(api: TestClient, dataset_id: str, **params):
    return api.post("/kmeans/models", json={"dataset_id": dataset_id, "params": params})


@pytest.fixture(scope="module")
def scaled(api) -> tuple[str, np.ndarray]:
    """Two features on very different scales: x separates 2 groups by 1 unit, y is noise in the 1000s."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 0.05, 60), rng.normal(1, 0.05, 60)])
    y = rng.uniform(0, 3000, 120)
    data = np.column_stack([x, y])
    return dataset(api, data, ["x", "y"]), data


# -- options ---------------------------------------------------------------------------


def test_standardize_changes_the_clusters_and_reports_centers_in_original_units(api, scaled):
    ds, data = scaled
    plain = succeeded(api, ds, n_clusters=2, random_state=0, n_init=5)
    std = succeeded(api, ds, n_clusters=2, random_state=0, n_init=5, standardize=True)
    truth = (data[:, 0] > 0.5).astype(int)
    plain_labels = np.array(api.get(f"/kmeans/models/{plain['id']}/labels").json()["labels"])
    std_labels = np.array(api.get(f"/kmeans/models/{std['id']}/labels").json()["labels"])
    agree = lambda labels: max((labels == truth).mean(), (labels != truth).mean())  # noqa: E731
    assert agree(std_labels) == 1.0  # standardized, x (the real structure) counts as much as y
    assert agree(plain_labels) < 0.8  # unscaled, y's large numbers decide
    pre = std["preprocessing"]
    assert np.allclose(pre["mean"], data.mean(axis=0)) and np.allclose(pre["scale"], data.std(axis=0))
    centers = np.array(api.get(f"/kmeans/models/{std['id']}/centers").json()["centers"])
    for label in (0, 1):
        assert np.allclose(centers[label], data[std_labels == label].mean(axis=0))
    # predictions apply the same scaling: the training rows get their own labels back
    predicted = api.post(f"/kmeans/models/{std['id']}/predictions", json={"data": data.tolist()}).json()["labels"]
    assert predicted == std_labels.tolist()
    scaled_data = (data - data.mean(axis=0)) / data.std(axis=0)
    reference = KMeans(n_clusters=2, random_state=0, n_init=5).fit(scaled_data)
    assert reference.labels_.tolist() == std_labels.tolist()


def test_cosine_groups_directions_not_magnitudes(api):
    rng = np.random.default_rng(5)
    # two directions (45° and -45°), each at small and large magnitudes
    radius = np.concatenate([rng.uniform(1, 2, 40), rng.uniform(50, 60, 40)])
    angle = np.where(np.arange(80) % 2 == 0, np.pi / 4, -np.pi / 4) + rng.normal(0, 0.02, 80)
    data = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
    ds = dataset(api, data)
    direction = (np.arange(80) % 2 == 0).astype(int)
    cos = succeeded(api, ds, n_clusters=2, random_state=0, n_init=5, distance="cosine")
    euc = succeeded(api, ds, n_clusters=2, random_state=0, n_init=5)
    cos_labels = np.array(api.get(f"/kmeans/models/{cos['id']}/labels").json()["labels"])
    euc_labels = np.array(api.get(f"/kmeans/models/{euc['id']}/labels").json()["labels"])
    same = lambda a, b: (a == b).all() or (a != b).all()  # noqa: E731
    assert same(cos_labels, direction)
    assert not same(euc_labels, direction)  # Euclidean splits by magnitude instead
    # predicting scales rows to unit length: a far point in a direction joins that direction
    far = api.post(f"/kmeans/models/{cos['id']}/predictions", json={"data": [[1000, 1000], [0.1, -0.1]]}).json()
    assert far["labels"] == [cos_labels[0], cos_labels[1]]
    normalised = data / np.linalg.norm(data, axis=1, keepdims=True)
    reference = KMeans(n_clusters=2, random_state=0, n_init=5).fit(normalised)
    assert same(reference.labels_, cos_labels)


@pytest.mark.parametrize("method,estimator", [("minibatch", MiniBatchKMeans), ("bisecting", BisectingKMeans)])
def test_methods_equal_their_scikit_learn_estimator(api, method, estimator):
    rng = np.random.default_rng(1)
    data = np.concatenate([c + rng.normal(0, 0.5, (50, 2)) for c in ([0, 0], [10, 0], [0, 10])])
    ds = dataset(api, data)
    model = succeeded(api, ds, n_clusters=3, random_state=0, method=method)
    reference = estimator(n_clusters=3, random_state=0).fit(data)
    centers = np.array(api.get(f"/kmeans/models/{model['id']}/centers").json()["centers"])
    assert np.allclose(centers, reference.cluster_centers_)
    assert model["inertia"] == pytest.approx(reference.inertia_)
    assert model["params"]["method"] == method


def test_columns_and_weight_column(api):
    rng = np.random.default_rng(2)
    a = np.concatenate([rng.normal(0, 0.1, 30), rng.normal(5, 0.1, 30)])
    junk = rng.normal(0, 100, 60)
    w = rng.uniform(0.5, 2, 60)
    b = np.concatenate([rng.normal(0, 0.1, 30), rng.normal(5, 0.1, 30)])
    data = np.column_stack([a, junk, w, b])
    ds = dataset(api, data, ["a", "junk", "w", "b"])
    model = succeeded(api, ds, n_clusters=2, random_state=0, columns=["b", "a"], weight_column="w")
    assert model["columns"] == ["b", "a"] and model["n_features"] == 2
    reference = KMeans(n_clusters=2, random_state=0).fit(data[:, [3, 0]], sample_weight=w)
    centers = np.array(api.get(f"/kmeans/models/{model['id']}/centers").json()["centers"])
    assert np.allclose(centers, reference.cluster_centers_)
    # predictions take the model's columns, in its order
    got = api.post(f"/kmeans/models/{model['id']}/predictions", json={"data": [[5, 5], [0, 0]]}).json()["labels"]
    assert got == reference.predict(np.array([[5.0, 5.0], [0.0, 0.0]])).tolist()
    bad = api.post(f"/kmeans/models/{model['id']}/predictions", json={"data": [[5, 5, 5, 5]]})
    assert_problem(bad, 422, "columns")
    # weight column left out of the features by default
    default = succeeded(api, ds, n_clusters=2, random_state=0, weight_column="w")
    assert default["columns"] == ["a", "junk", "b"]


def test_explicit_init_centers(api):
    data = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], dtype=float)
    ds = dataset(api, data)
    model = succeeded(api, ds, init=[[10, 2], [1, 2]], max_iter=1)
    assert model["cluster_sizes"] == [3, 3]
    centers = api.get(f"/kmeans/models/{model['id']}/centers").json()["centers"]
    assert centers == [[10.0, 2.0], [1.0, 2.0]]
    labels = api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"]
    assert labels == [1, 1, 1, 0, 0, 0]


@pytest.mark.both_apps
@pytest.mark.parametrize(
    "params,fragments",
    [
        ({"n_clusters": 2, "init": [[1, 2, 3], [1, 2, 3]]}, ["init", "2 x 2"]),
        ({"n_clusters": 3, "init": [[1, 2], [1, 2]]}, ["init", "3 x 2"]),
        ({"init": [[1, 2], [3, 4]], "n_init": 5}, ["n_init"]),
        ({"n_clusters": 2, "init": [[1, 2], [3, 4]], "method": "bisecting"}, ["bisecting", "init"]),
        ({"n_clusters": 2, "method": "minibatch", "algorithm": "elkan"}, ["algorithm", "minibatch"]),
        ({"n_clusters": 2, "columns": ["a", "nope"]}, ["nope"]),
        ({"n_clusters": 2, "weight_column": "nope"}, ["weight_column", "nope"]),
        ({"n_clusters": 2, "weight_column": "w"}, ["negative", "row 2"]),
        ({"n_clusters": 2, "weight_column": "w", "columns": ["a", "w"]}, ["weight_column", "feature"]),
    ],
)
def test_bad_options_are_422_naming_the_option(api, params, fragments):
    ds = dataset(api, [[1, 1], [2, -1], [3, 1], [4, 1]], ["a", "w"])
    assert_problem(post_model(api, ds, **params), 422, *fragments)


def test_init_centers_with_nan_are_400_naming_the_value(api):
    ds = dataset(api, [[1, 1], [2, -1], [3, 1], [4, 1]])
    body = b'{"dataset_id": "%s", "params": {"init": [[1, 1], [1, NaN]]}}' % ds.encode()
    response = api.post("/kmeans/models", content=body, headers={"Content-Type": JSON})
    assert_problem(response, 400, "nan is not a finite number", "'params.init.1.1'")


@pytest.mark.parametrize(
    "params,fragment",
    [
        ({"method": "kmeans2"}, "method"),
        ({"distance": "manhattan"}, "distance"),
        ({"standardize": "yes"}, "standardize"),
        ({"contamination": 0.5}, "contamination"),
        ({"contamination": 0}, "contamination"),
        ({"init": "nonsense"}, "init"),
        ({"columns": []}, "columns"),
    ],
)
def test_options_outside_the_spec_are_400(api, params, fragment):
    ds = dataset(api, [[1, 1], [2, 1], [3, 1]])
    assert_problem(post_model(api, ds, **params), 400, fragment)


# -- metrics ---------------------------------------------------------------------------


def test_model_has_quality_metrics_equal_to_scikit_learn(api):
    rng = np.random.default_rng(4)
    data = np.concatenate([c + rng.normal(0, 1, (40, 3)) for c in ([0, 0, 0], [8, 8, 8], [-8, 8, 0])])
    ds = dataset(api, data)
    model = succeeded(api, ds, n_clusters=3, random_state=0)
    reference = KMeans(n_clusters=3, random_state=0).fit(data)
    assert model["inertia"] == pytest.approx(reference.inertia_)
    assert model["n_iter"] == reference.n_iter_
    assert model["silhouette"] == pytest.approx(silhouette_score(data, reference.labels_))
    assert model["davies_bouldin"] == pytest.approx(davies_bouldin_score(data, reference.labels_))
    assert model["calinski_harabasz"] > 100
    assert model["fit_seconds"] > 0 and sum(model["cluster_sizes"]) == 120
    one = succeeded(api, ds, n_clusters=1)
    assert one["silhouette"] is None and one["davies_bouldin"] is None


# -- predictions with distances ----------------------------------------------------------


@pytest.fixture(scope="module")
def square(api) -> dict:
    data = [[0, 0], [0, 2], [10, 0], [10, 2], [0, 1], [10, 1]]
    return succeeded(api, dataset(api, data), init=[[0, 1], [10, 1]], max_iter=1)


def test_default_prediction_is_labels_only(api, square):
    body = api.post(f"/kmeans/models/{square['id']}/predictions", json={"data": [[0, 0]]}).json()
    assert body == {"model_id": square["id"], "labels": [0]}


def test_distances_and_all_distances_json(api, square):
    url = f"/kmeans/models/{square['id']}/predictions?distances=true&all_distances=true"
    body = api.post(url, json={"data": [[0, 4], [13, 5]]}).json()
    assert body["labels"] == [0, 1]
    assert body["distances"] == pytest.approx([3.0, 5.0])
    assert np.allclose(body["all_distances"], [[3.0, np.hypot(10, 3)], [np.hypot(13, 4), 5.0]])


@pytest.mark.both_apps
def test_distances_csv_has_a_header_and_a_second_column(api, square):
    url = f"/kmeans/models/{square['id']}/predictions?distances=true"
    response = api.post(url, content=b"0,4\n13,5\n", headers={"Content-Type": CSV, "Accept": CSV})
    assert response.status_code == 200, response.text
    assert response.text.splitlines() == ["label,distance", "0,3.0", "1,5.0"]


@pytest.mark.both_apps
def test_threshold_flags_anomalies(api, square):
    url = f"/kmeans/models/{square['id']}/predictions?threshold=2"
    body = api.post(url, json={"data": [[0, 2], [0, 5], [10, 1]]}).json()
    assert body["anomalies"] == [False, True, False]
    assert "distances" not in body


def test_contamination_sets_a_threshold_from_training_distances(api):
    rng = np.random.default_rng(9)
    data = np.concatenate([rng.normal(0, 1, (200, 2)), rng.normal(20, 1, (200, 2))])
    model = succeeded(api, dataset(api, data), n_clusters=2, random_state=0, contamination=0.05)
    reference = KMeans(n_clusters=2, random_state=0).fit(data)
    own = np.linalg.norm(data - reference.cluster_centers_[reference.labels_], axis=1)
    assert model["anomaly_threshold"] == pytest.approx(np.quantile(own, 0.95))
    url = f"/kmeans/models/{model['id']}/predictions?anomalies=true"
    flags = api.post(url, json={"data": data.tolist()}).json()["anomalies"]
    assert 0.03 < np.mean(flags) <= 0.06
    far = api.post(url, json={"data": [[0, 0], [100, 100]]}).json()["anomalies"]
    assert far == [False, True]


def test_anomalies_without_a_threshold_is_422(api, square):
    url = f"/kmeans/models/{square['id']}/predictions?anomalies=true"
    assert_problem(api.post(url, json={"data": [[0, 0]]}), 422, "contamination")


def test_prediction_option_of_the_wrong_type_is_400(api, square):
    url = f"/kmeans/models/{square['id']}/predictions?threshold=abc"
    assert_problem(api.post(url, json={"data": [[0, 0]]}, headers={"Accept": JSON}), 400, "threshold")


# -- defaults as generated clients send them (issue 15, item 2) ---------------------------------

SPEC = yaml.safe_load((ROOT / "api.yaml").read_text())
DEFAULTS = {name: prop["default"] for name, prop in SPEC["components"]["schemas"]["ModelParams"]["properties"].items()
            if "default" in prop}
METHODS = SPEC["components"]["schemas"]["ModelParams"]["properties"]["method"]["enum"]


def test_model_params_document_defaults_that_a_client_would_send():
    assert {"algorithm", "n_clusters", "method", "init"} <= DEFAULTS.keys()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_fits_with_every_documented_default_sent(api, method):
    ds = dataset(api, [[1, 1], [1, 2], [9, 9], [9, 8], [5, 1], [5, 2], [0, 9], [1, 8], [9, 1]])
    params = {**DEFAULTS, "method": method, "n_clusters": 3, "random_state": 0}
    model = fit(api, ds, **params)
    assert model["status"] == "succeeded", model
    if method == "minibatch":  # lloyd, the documented default, does not apply to it: left out
        assert "algorithm" not in model["params"]
    elsewhere = post_model(api, ds, **{**params, "algorithm": "elkan"})
    assert (elsewhere.status_code == 422) == (method == "minibatch"), elsewhere.text


def test_the_default_n_clusters_beside_explicit_centers_is_theirs(api):
    ds = dataset(api, [[1, 1], [1, 2], [9, 9], [9, 8], [5, 1], [5, 2]])
    init = [[1, 1], [9, 9], [5, 1]]
    model = fit(api, ds, **{**DEFAULTS, "init": init, "n_init": 1})
    assert model["status"] == "succeeded" and len(model["cluster_sizes"]) == 3, model
    assert_problem(post_model(api, ds, init=init, n_init=1, n_clusters=2), 422, "init")


def test_a_sweep_takes_the_documented_defaults_of_its_params(api):
    ds = dataset(api, [[1, 1], [1, 2], [9, 9], [9, 8], [5, 1], [5, 2]])
    shared = {k: v for k, v in DEFAULTS.items() if k != "init"}
    response = api.post("/kmeans/sweeps", json={"dataset_id": ds, "k_min": 2, "k_max": 3, "params": shared})
    assert response.status_code == 202, response.text
    assert "n_clusters" not in response.json()["params"]
