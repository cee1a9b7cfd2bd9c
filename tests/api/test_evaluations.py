"""Evaluations of a model on a dataset (a job kind) and comparisons of two models, through HTTP.

Every number is checked against scikit-learn / scipy on the wine data (its class a column of
the dataset, as a number and as text), fitted standardized with k=3.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from api_helpers import app_client, assert_problem, sse
from conftest import wait_for_model, wait_until_done
from scipy.optimize import linear_sum_assignment
from scipy.stats import ks_2samp
from sklearn import metrics
from sklearn.datasets import load_wine
from sklearn.metrics.cluster import contingency_matrix
from sklearn.preprocessing import StandardScaler
from starlette.testclient import TestClient

WINE = load_wine()
FEATURES = [n.replace("/", "_") for n in WINE.feature_names]
X, Y = WINE.data, WINE.target
CULTIVARS = np.array(["barolo", "grignolino", "barbera"])
TRAIN = np.arange(len(X)) % 2 == 0  # fit on the even rows, hold out the odd ones


def rows_of(x: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    """JSON rows: the 13 features, the class as a number and the cultivar as text."""
    return [
        {**dict(zip(FEATURES, map(float, r), strict=True)), "class": int(c), "cultivar": str(CULTIVARS[c])}
        for r, c in zip(x, y, strict=True)
    ]


def add_dataset(api: TestClient, rows: list[dict[str, Any]]) -> str:
    response = api.post("/kmeans/datasets", json={"data": rows})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def fitted(api: TestClient, dataset_id: str, **params: Any) -> dict[str, Any]:
    body = {"dataset_id": dataset_id, "params": {"standardize": True, "features": FEATURES, **params}}
    response = api.post("/kmeans/models", json=body)
    assert response.status_code == 202, response.text
    model = wait_for_model(api, response.json()["id"], timeout=120)
    assert model["status"] == "succeeded", model
    return model


def evaluated(api: TestClient, model_id: str, dataset_id: str, label_column: str | None = None) -> dict[str, Any]:
    body = {"dataset_id": dataset_id, **({"label_column": label_column} if label_column else {})}
    response = api.post(f"/kmeans/models/{model_id}/evaluations", json=body)
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    assert location == f"/kmeans/models/{model_id}/evaluations/{response.json()['id']}"
    evaluation = wait_until_done(api, location, timeout=120)
    assert evaluation["status"] == "succeeded", evaluation
    return evaluation


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One app with the wine halves and all of it as datasets, two k=3 models and a k=4 one."""
    with app_client(Path(tmp_path_factory.mktemp("evaluations"))) as api:
        train = add_dataset(api, rows_of(X[TRAIN], Y[TRAIN]))
        held_out = add_dataset(api, rows_of(X[~TRAIN], Y[~TRAIN]))
        model = fitted(api, train, n_clusters=3, random_state=0)
        other = fitted(api, train, n_clusters=3, random_state=5, init="random", n_init=1)
        four = fitted(api, train, n_clusters=4, random_state=0)
        yield {"api": api, "train": train, "held_out": held_out, "model": model, "other": other, "four": four}


def reference(train_x: np.ndarray, x: np.ndarray, api: TestClient, model_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``x`` standardized by the training rows, and the model's centers in that space."""
    centers = np.asarray(api.get(f"/kmeans/models/{model_id}/centers").json()["centers"])
    scaler = StandardScaler().fit(train_x)
    return scaler.transform(x), scaler.transform(centers)


def nearest(space: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distances = np.sqrt(((space[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2))
    labels = distances.argmin(axis=1)
    return labels, distances[np.arange(len(space)), labels]


def test_held_out_evaluation_matches_scikit_learn_and_scipy(wine: dict[str, Any]) -> None:
    api, model = wine["api"], wine["model"]
    evaluation = evaluated(api, model["id"], wine["held_out"], "cultivar")
    result = evaluation["result"]
    space, centers = reference(X[TRAIN], X[~TRAIN], api, model["id"])
    labels, distances = nearest(space, centers)
    train_space, _ = reference(X[TRAIN], X[TRAIN], api, model["id"])
    _, train_distances = nearest(train_space, centers)

    assert result["rows"] == int((~TRAIN).sum()) and result["rows_left_out"] == 0 and result["n_clusters"] == 3
    assert result["mean_squared_distance"] == pytest.approx(np.mean(distances**2), rel=1e-9)
    assert result["inertia"] == pytest.approx(np.sum(distances**2), rel=1e-9)
    assert result["silhouette"] == pytest.approx(metrics.silhouette_score(space, labels), rel=1e-9)
    assert result["davies_bouldin"] == pytest.approx(metrics.davies_bouldin_score(space, labels), rel=1e-9)
    assert result["calinski_harabasz"] == pytest.approx(metrics.calinski_harabasz_score(space, labels), rel=1e-9)

    counts = np.bincount(labels, minlength=3)
    sizes = np.asarray(model["cluster_sizes"])
    assert [c["rows"] for c in result["clusters"]] == counts.tolist()
    assert [c["training_rows"] for c in result["clusters"]] == sizes.tolist()
    assert [c["share"] for c in result["clusters"]] == pytest.approx(counts / counts.sum())
    assert [c["training_share"] for c in result["clusters"]] == pytest.approx(sizes / sizes.sum())

    p, q = np.maximum(counts / counts.sum(), 1e-4), np.maximum(sizes / sizes.sum(), 1e-4)
    drift = result["drift"]
    assert drift["psi"] == pytest.approx(np.sum((p - q) * np.log(p / q)), rel=1e-6, abs=1e-12)
    ks = ks_2samp(distances, train_distances)
    assert drift["ks_statistic"] == pytest.approx(ks.statistic, rel=1e-9)
    assert drift["ks_pvalue"] == pytest.approx(ks.pvalue, rel=1e-6)
    assert drift["shares_drifted"] is (drift["psi"] > 0.2)
    assert drift["distances_drifted"] is bool(ks.pvalue < 0.01 and ks.statistic >= 0.1)
    assert drift["mean_distance"] == pytest.approx(distances.mean(), rel=1e-9)
    assert drift["training_mean_distance"] == pytest.approx(train_distances.mean(), rel=1e-9)

    truth = Y[~TRAIN]
    scores = result["labels"]
    assert scores["column"] == "cultivar" and scores["rows"] == len(truth) and scores["rows_without_label"] == 0
    assert scores["adjusted_rand"] == pytest.approx(metrics.adjusted_rand_score(truth, labels), rel=1e-9)
    assert scores["nmi"] == pytest.approx(metrics.normalized_mutual_info_score(truth, labels), rel=1e-9)
    h, c, v = metrics.homogeneity_completeness_v_measure(truth, labels)
    assert (scores["homogeneity"], scores["completeness"], scores["v_measure"]) == pytest.approx((h, c, v), rel=1e-9)
    # Labels are sorted by name: barbera (2), barolo (0), grignolino (1).
    order = [2, 0, 1]
    assert scores["contingency"]["labels"] == ["barbera", "barolo", "grignolino"]
    table = contingency_matrix(labels, truth)[:, order]
    assert scores["contingency"]["counts"] == table.tolist()
    assert scores["purity"] == pytest.approx(table.max(axis=1).sum() / len(truth), rel=1e-12)
    names = np.array(["barbera", "barolo", "grignolino"])
    assert [m["label"] for m in scores["majority"]] == names[table.argmax(axis=1)].tolist()
    assert [m["rows"] for m in scores["majority"]] == table.max(axis=1).tolist()
    # A held-out half of the wine data is the same population: its clusters agree with the cultivars.
    assert scores["adjusted_rand"] > 0.8


def test_evaluating_the_training_data_shows_no_drift_and_numeric_labels(wine: dict[str, Any]) -> None:
    api, model = wine["api"], wine["model"]
    result = evaluated(api, model["id"], wine["train"], "class")["result"]
    training_labels = np.asarray(api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"])
    truth = Y[TRAIN]
    assert [c["rows"] for c in result["clusters"]] == model["cluster_sizes"]
    assert result["inertia"] == pytest.approx(model["inertia"], rel=1e-9)
    assert result["silhouette"] == pytest.approx(model["silhouette"], rel=1e-9)
    assert result["drift"]["psi"] == 0.0 and result["drift"]["shares_drifted"] is False
    assert result["drift"]["ks_statistic"] == 0.0 and result["drift"]["distances_drifted"] is False
    scores = result["labels"]
    assert scores["contingency"]["labels"] == ["0", "1", "2"]  # a numeric column's values, as text
    assert scores["contingency"]["counts"] == contingency_matrix(training_labels, truth).tolist()
    assert scores["adjusted_rand"] == pytest.approx(metrics.adjusted_rand_score(truth, training_labels), rel=1e-9)


def test_shifted_data_is_flagged_as_drifted(wine: dict[str, Any]) -> None:
    api, model = wine["api"], wine["model"]
    # One cultivar only, every feature moved by two of its standard deviations.
    pick = ~TRAIN & (Y == 0)
    shifted = X[pick] + 2 * X[TRAIN].std(axis=0)
    dataset = add_dataset(api, rows_of(shifted, Y[pick]))
    drift = evaluated(api, model["id"], dataset)["result"]["drift"]
    space, centers = reference(X[TRAIN], shifted, api, model["id"])
    labels, distances = nearest(space, centers)
    _, train_distances = nearest(reference(X[TRAIN], X[TRAIN], api, model["id"])[0], centers)
    counts = np.bincount(labels, minlength=3)
    sizes = np.asarray(model["cluster_sizes"])
    p, q = np.maximum(counts / counts.sum(), 1e-4), np.maximum(sizes / sizes.sum(), 1e-4)
    assert drift["psi"] == pytest.approx(np.sum((p - q) * np.log(p / q)), rel=1e-6)
    ks = ks_2samp(distances, train_distances)
    assert drift["ks_statistic"] == pytest.approx(ks.statistic, rel=1e-9)
    assert drift["psi"] > 0.2 and drift["shares_drifted"] is True
    assert ks.pvalue < 0.01 and ks.statistic >= 0.1 and drift["distances_drifted"] is True


def test_evaluation_is_a_job_listed_cancellable_streamed_and_deletable(wine: dict[str, Any]) -> None:
    api, model = wine["api"], wine["model"]
    evaluation = evaluated(api, model["id"], wine["held_out"])
    path = f"/kmeans/models/{model['id']}/evaluations/{evaluation['id']}"
    assert evaluation["result"]["labels"] is None and evaluation["label_column"] is None
    listed = api.get(f"/kmeans/models/{model['id']}/evaluations").json()
    assert evaluation["id"] in [e["id"] for e in listed["items"]] and listed["total"] >= 1
    jobs = api.get("/kmeans/jobs?status=succeeded&kind=evaluation").json()["items"]
    assert {"id": evaluation["id"], "resource": path} in [{"id": j["id"], "resource": j["resource"]} for j in jobs]
    events = sse(api.get(f"{path}/events").text, "evaluation")
    assert events[-1]["status"] == "succeeded" and events[-1]["result"] == evaluation["result"]
    assert "callback_url" not in events[-1] and "callback_url" not in evaluation  # evaluations take no webhook
    assert_problem(api.post(f"{path}/cancel"), 409, "already succeeded")
    # Another model's path to it does not find it.
    assert_problem(api.get(f"/kmeans/models/{wine['other']['id']}/evaluations/{evaluation['id']}"), 404)
    assert api.delete(path).status_code == 204
    assert_problem(api.get(path), 404, evaluation["id"])


def test_bad_evaluation_requests_name_what_is_wrong(wine: dict[str, Any]) -> None:
    api, model = wine["api"], wine["model"]
    url = f"/kmeans/models/{model['id']}/evaluations"
    before = api.get(url).json()["total"]
    narrow = add_dataset(api, [{k: v for k, v in r.items() if k != "proline"} for r in rows_of(X[:5], Y[:5])])
    problem = assert_problem(api.post(url, json={"dataset_id": narrow}), 422, "'proline'")
    assert problem["parameter"] == "dataset_id"
    problem = assert_problem(api.post(url, json={"dataset_id": wine["held_out"], "label_column": "grape"}), 422,
                             "'grape'")
    assert problem["parameter"] == "label_column"
    assert_problem(api.post(url, json={"dataset_id": wine["held_out"], "label_column": "alcohol"}), 422,
                   "'alcohol' is a feature")
    text = add_dataset(api, [{**r, "alcohol": "high"} for r in rows_of(X[:5], Y[:5])])
    assert_problem(api.post(url, json={"dataset_id": text}), 422, "'alcohol'", "numeric")
    assert_problem(api.post(url, json={"dataset_id": "ds_0000000000000000"}), 404, "ds_0000000000000000")
    assert_problem(api.post("/kmeans/models/m_0000000000000000/evaluations", json={"dataset_id": narrow}), 404)
    assert_problem(api.post(url, json={"dataset_id": narrow, "colour": "red"}), 400, "colour")
    assert_problem(api.post(url, json={}), 400, "dataset_id")
    queued = api.post("/kmeans/models", json={"dataset_id": wine["train"], "params": {"n_clusters": 2}}).json()
    api.post(f"/kmeans/models/{queued['id']}/cancel")
    assert_problem(api.post(f"/kmeans/models/{queued['id']}/evaluations", json={"dataset_id": narrow}), 409,
                   "cancelled")
    assert api.get(url).json()["total"] == before  # nothing was stored


def test_rows_a_drop_rows_model_cannot_fill_are_left_out(wine: dict[str, Any]) -> None:
    api = wine["api"]
    model = fitted(api, wine["train"], n_clusters=3, random_state=0, missing="drop_rows")
    rows = rows_of(X[~TRAIN], Y[~TRAIN])
    rows[0]["alcohol"] = None
    rows[1]["cultivar"] = None
    dataset = add_dataset(api, rows)
    result = evaluated(api, model["id"], dataset, "cultivar")["result"]
    assert result["rows"] == len(rows) - 1 and result["rows_left_out"] == 1
    assert result["labels"]["rows"] == len(rows) - 2 and result["labels"]["rows_without_label"] == 1
    space, centers = reference(X[TRAIN], X[~TRAIN][1:], api, model["id"])
    labels, distances = nearest(space, centers)
    assert result["mean_squared_distance"] == pytest.approx(np.mean(distances**2), rel=1e-9)
    truth = Y[~TRAIN][2:]
    assert result["labels"]["adjusted_rand"] == pytest.approx(metrics.adjusted_rand_score(truth, labels[1:]), rel=1e-9)


def test_comparison_matches_scikit_learn_and_linear_sum_assignment(wine: dict[str, Any]) -> None:
    api, model = wine["api"], wine["model"]
    for other in (wine["other"], wine["four"]):
        response = api.post(f"/kmeans/models/{model['id']}/comparisons",
                            json={"other_model_id": other["id"], "dataset_id": wine["held_out"]})
        assert response.status_code == 200, response.text
        got = response.json()
        space, centers = reference(X[TRAIN], X[~TRAIN], api, model["id"])
        first = nearest(space, centers)[0]
        second = nearest(*reference(X[TRAIN], X[~TRAIN], api, other["id"]))[0]
        k = len(other["cluster_sizes"])
        assert got["rows"] == len(first) and got["n_clusters"] == 3 and got["other_n_clusters"] == k
        assert got["adjusted_rand"] == pytest.approx(metrics.adjusted_rand_score(first, second), rel=1e-9)
        assert got["nmi"] == pytest.approx(metrics.normalized_mutual_info_score(first, second), rel=1e-9)
        table = np.zeros((3, k), dtype=int)
        np.add.at(table, (first, second), 1)
        assert got["contingency"]["counts"] == table.tolist()
        rows, cols = linear_sum_assignment(table, maximize=True)
        assert [(m["cluster"], m["other_cluster"], m["rows"]) for m in got["matching"]] == [
            (int(r), int(c), int(table[r, c])) for r, c in zip(rows, cols, strict=True)
        ]
        changed = len(first) - int(table[rows, cols].sum())
        assert got["changed_rows"] == changed and got["changed_share"] == pytest.approx(changed / len(first))
        assert got["unmatched_other_clusters"] == sorted(set(range(k)) - set(cols.tolist()))
    assert got["unmatched_other_clusters"] and got["changed_rows"] > 0  # k=4 against k=3: one cluster is left over


def test_comparison_defaults_to_the_training_data_and_refuses_bad_input(wine: dict[str, Any]) -> None:
    api, model = wine["api"], wine["model"]
    url = f"/kmeans/models/{model['id']}/comparisons"
    same = api.post(url, json={"other_model_id": model["id"]}).json()
    assert same["dataset_id"] == wine["train"] and same["rows"] == int(TRAIN.sum())
    assert same["adjusted_rand"] == 1.0 and same["changed_rows"] == 0
    assert_problem(api.post(url, json={"other_model_id": "m_0000000000000000"}), 404, "other_model_id")
    narrow = add_dataset(api, [{k: v for k, v in r.items() if k != "hue"} for r in rows_of(X[:5], Y[:5])])
    assert_problem(api.post(url, json={"other_model_id": model["id"], "dataset_id": narrow}), 422, "'hue'")
    assert_problem(api.post(url, json={"other_model_id": model["id"], "rows": 3}), 400, "rows")
    assert_problem(api.post(url, json={}), 400, "other_model_id")


def test_categorical_features_are_matched_as_predictions_are(wine: dict[str, Any]) -> None:
    api = wine["api"]
    rng = np.random.default_rng(0)
    train = [{"a": float(a), "b": float(b), "colour": str(c)}
             for a, b, c in zip(rng.normal(size=60), rng.normal(size=60), rng.choice(["red", "blue"], 60),
                                strict=True)]
    dataset = add_dataset(api, train)
    response = api.post("/kmeans/models", json={"dataset_id": dataset, "params": {"n_clusters": 2, "random_state": 0}})
    model = wait_for_model(api, response.json()["id"])
    # New rows in another column order, one colour never seen, and a column the model does not use.
    new = [{"colour": c, "extra": 1.0, "b": b, "a": a} for a, b, c in
           zip(rng.normal(size=20).tolist(), rng.normal(size=20).tolist(), ["red", "green"] * 10, strict=True)]
    result = evaluated(api, model["id"], add_dataset(api, new))["result"]
    predicted = api.post(f"/kmeans/models/{model['id']}/predictions?distances=true", json={"data": new}).json()
    assert result["unknown_categories"] == {"colour": 10} == predicted["unknown_categories"]
    counts = np.bincount(predicted["labels"], minlength=2)
    assert [c["rows"] for c in result["clusters"]] == counts.tolist()
    distances = np.asarray(predicted["distances"])
    assert result["mean_squared_distance"] == pytest.approx(np.mean(distances**2), rel=1e-9)


def test_an_imported_model_is_evaluated_without_a_training_baseline(wine: dict[str, Any]) -> None:
    api, model = wine["api"], wine["model"]
    document = api.get(f"/kmeans/models/{model['id']}/export").json()
    same = evaluated(api, model["id"], wine["held_out"])["result"]
    # Imported where its training dataset is: that dataset is the baseline, as for the original.
    imported = api.post("/kmeans/models/import", json=document).json()
    assert evaluated(api, imported["id"], wine["held_out"])["result"]["drift"] == same["drift"]
    # Imported without it: cluster shares still come from the document's cluster_sizes.
    imported = api.post("/kmeans/models/import", json={**document, "dataset_id": None}).json()
    result = evaluated(api, imported["id"], wine["held_out"])["result"]
    assert [c["rows"] for c in result["clusters"]] == [c["rows"] for c in same["clusters"]]
    assert result["mean_squared_distance"] == pytest.approx(same["mean_squared_distance"], rel=1e-12)
    assert result["drift"]["psi"] == same["drift"]["psi"]
    assert result["drift"]["ks_statistic"] is None and result["drift"]["distances_drifted"] is None


def test_deleting_a_model_deletes_its_evaluations(wine: dict[str, Any]) -> None:
    api = wine["api"]
    model = fitted(api, wine["train"], n_clusters=2, random_state=0)
    evaluation = evaluated(api, model["id"], wine["held_out"])
    assert api.delete(f"/kmeans/models/{model['id']}").status_code == 204
    jobs = api.get("/kmeans/jobs?status=succeeded&kind=evaluation").json()["items"]
    assert evaluation["id"] not in [j["id"] for j in jobs]


def test_an_evaluation_waits_in_the_one_queue_and_can_be_cancelled_there(wine: dict[str, Any]) -> None:
    api, model = wine["api"], wine["model"]
    # Two long fits take both slots (max_concurrent_fits 2): the evaluation queues behind them.
    noise = np.random.default_rng(0).normal(size=(8000, 8)).round(4).tolist()
    long_dataset = api.post("/kmeans/datasets", json={"data": noise}).json()["id"]
    slow = {"n_clusters": 20, "init": "random", "n_init": 1000, "random_state": 0}
    fits = [api.post("/kmeans/models", json={"dataset_id": long_dataset, "params": slow}).json()["id"]
            for _ in range(2)]
    try:
        held_out = add_dataset(api, rows_of(X[~TRAIN], Y[~TRAIN]))
        response = api.post(f"/kmeans/models/{model['id']}/evaluations", json={"dataset_id": held_out})
        evaluation = response.json()
        path = f"/kmeans/models/{model['id']}/evaluations/{evaluation['id']}"
        queue = api.get("/kmeans/jobs").json()["items"]
        mine = next(j for j in queue if j["id"] == evaluation["id"])
        assert mine["kind"] == "evaluation" and mine["status"] == "queued" and mine["resource"] == path
        assert mine["position"] >= 1
        # Its dataset is in use meanwhile, and the refusal names the evaluation.
        assert_problem(api.delete(f"/kmeans/datasets/{held_out}"), 409, evaluation["id"])
        cancelled = api.post(f"{path}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert api.get(path).json()["status"] == "cancelled" and api.get(path).json()["result"] is None
        assert api.delete(f"/kmeans/datasets/{held_out}").status_code == 204
    finally:
        for fit_id in fits:
            api.post(f"/kmeans/models/{fit_id}/cancel")


def test_labels_of_any_type_with_gaps(wine: dict[str, Any]) -> None:
    api, model = wine["api"], wine["model"]
    rows = rows_of(X[~TRAIN], Y[~TRAIN])
    for i, row in enumerate(rows):
        row["code"] = f"W{i:03d}"  # an id column: text, unique, with digits
        row["score"] = None if i % 10 == 0 else float(Y[~TRAIN][i]) + 0.5  # numbers with gaps
    response = api.post("/kmeans/datasets?id_column=code", json={"data": rows})
    assert response.status_code == 201, response.text
    dataset = response.json()["id"]
    space, centers = reference(X[TRAIN], X[~TRAIN], api, model["id"])
    labels = nearest(space, centers)[0]
    scores = evaluated(api, model["id"], dataset, "score")["result"]["labels"]
    has = np.arange(len(rows)) % 10 != 0
    truth = Y[~TRAIN][has]
    assert scores["rows"] == int(has.sum()) and scores["rows_without_label"] == int((~has).sum())
    assert scores["contingency"]["labels"] == ["0.5", "1.5", "2.5"]
    assert scores["adjusted_rand"] == pytest.approx(metrics.adjusted_rand_score(truth, labels[has]), rel=1e-9)
    assert scores["nmi"] == pytest.approx(metrics.normalized_mutual_info_score(truth, labels[has]), rel=1e-9)
    ids = evaluated(api, model["id"], dataset, "code")["result"]["labels"]
    # Every row its own label: each cluster's majority is one row, and purity is k / n.
    assert len(ids["contingency"]["labels"]) == len(rows) and ids["completeness"] == pytest.approx(1.0)
    assert ids["purity"] == pytest.approx(3 / len(rows))
    assert ids["homogeneity"] == pytest.approx(metrics.homogeneity_score(np.arange(len(rows)), labels), rel=1e-9)
