"""kmeans.engine without HTTP: the quality metrics agree with scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from kmeans import engine


@pytest.mark.parametrize("seed", range(8))
def test_silhouette_equals_scikit_learns(seed: int):
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(3, 1500))
    values = rng.normal(0, rng.uniform(0.1, 50), (rows, int(rng.integers(1, 9))))
    labels = (rng.integers(0, int(rng.integers(2, 12)), rows) * 3).astype(np.int32)  # gaps between labels
    labels[: rows // 3] = labels[0]  # one large cluster
    values[1] = values[0]  # two identical rows
    if not 2 <= len(np.unique(labels)) < rows:
        labels[:2] = [0, 1]
    assert engine._silhouette(values, labels) == pytest.approx(silhouette_score(values, labels), abs=1e-12)


def test_silhouette_of_a_single_row_cluster_counts_it_as_zero():
    values = np.array([[0.0], [0.1], [0.2], [9.0]])
    labels = np.array([0, 0, 0, 1])
    assert engine._silhouette(values, labels) == pytest.approx(silhouette_score(values, labels), abs=1e-12)


def test_silhouette_over_several_chunks(monkeypatch):
    rng = np.random.default_rng(9)
    values = rng.normal(0, 1, (300, 4))
    labels = rng.integers(0, 5, 300)
    monkeypatch.setattr(engine, "SILHOUETTE_CHUNK", 7)
    assert engine._silhouette(values, labels) == pytest.approx(silhouette_score(values, labels), abs=1e-12)


def test_quality_is_none_with_one_cluster():
    values = np.random.default_rng(0).normal(size=(50, 2))
    assert engine.quality(values, np.zeros(50, dtype=np.int32)) == {
        "silhouette": None, "davies_bouldin": None, "calinski_harabasz": None,
    }


@pytest.mark.parametrize("seed", range(8))
def test_davies_bouldin_and_calinski_harabasz_equal_scikit_learns(seed: int):
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(3, 3000))
    values = rng.normal(0, rng.uniform(0.1, 50), (rows, int(rng.integers(1, 9))))
    labels = (rng.integers(0, int(rng.integers(2, 12)), rows) * 2).astype(np.int32)
    values += labels[:, None] * rng.uniform(0, 5)
    if not 2 <= len(np.unique(labels)) < rows:
        labels[:2] = [0, 1]
    davies_bouldin, calinski_harabasz = engine._davies_bouldin_calinski_harabasz(values, labels)
    assert davies_bouldin == pytest.approx(davies_bouldin_score(values, labels), rel=1e-9)
    assert calinski_harabasz == pytest.approx(calinski_harabasz_score(values, labels), rel=1e-9)


def test_davies_bouldin_and_calinski_harabasz_of_clusters_of_identical_rows():
    values = np.array([[1.0, 1.0], [1.0, 1.0], [5.0, 5.0], [5.0, 5.0]])
    labels = np.array([0, 0, 1, 1])
    expected = (davies_bouldin_score(values, labels), calinski_harabasz_score(values, labels))
    assert engine._davies_bouldin_calinski_harabasz(values, labels) == pytest.approx(expected)


# -- progress of a fit ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"n_clusters": 4, "n_init": 3, "random_state": 0},
        {"n_clusters": 4, "n_init": 2, "random_state": 1, "algorithm": "elkan"},
        {"n_clusters": 5, "n_init": 1, "random_state": 2, "max_iter": 2, "tol": 0.0},
        {"n_clusters": 3, "init": "random", "random_state": 3},
    ],
)
def test_hooked_progress_equals_what_verbose_mode_reported(monkeypatch, params):
    rng = np.random.default_rng(5)
    values = np.concatenate([c + rng.normal(0, 2, (300, 2)) for c in ([0, 0], [6, 0], [0, 6], [6, 6])])
    assert engine.HOOKED

    def run() -> tuple[list[tuple[float, str]], engine.FitResult]:
        calls: list[tuple[float, str]] = []
        result = engine.fit(values, params, lambda fraction, phase: calls.append((fraction, phase)))
        return calls, result

    hooked, result = run()
    monkeypatch.setattr(engine, "HOOKED", False)
    verbose, reference = run()
    assert hooked == verbose and len(hooked) >= 3
    assert np.array_equal(result.labels, reference.labels) and result.inertia == reference.inertia


def test_hooks_call_through_without_a_progress_reader():
    values = np.random.default_rng(0).normal(size=(200, 2))
    result = engine.fit(values, {"n_clusters": 3, "random_state": 0})
    reference = KMeans(n_clusters=3, random_state=0).fit(values)
    assert np.array_equal(result.labels, reference.labels_) and result.n_iter == reference.n_iter_


@pytest.mark.parametrize(("rows", "k"), [(1, 3), (500, 8), (10_000, 8), (300_000, 5), (2_000, 200)])
def test_predict_gives_kmeans_predict_labels(rows: int, k: int, monkeypatch):
    rng = np.random.default_rng(rows + k)
    train = rng.normal(scale=4, size=(max(rows, k * 3), 6))
    model = KMeans(n_clusters=k, n_init=1, max_iter=5, random_state=0).fit(train)
    points = rng.normal(scale=5, size=(rows, 6))
    expected = model.predict(points)
    monkeypatch.setattr(engine, "PREDICT_BLOCK", 7 * k)  # several blocks, the last one short
    labels = engine.predict(model.cluster_centers_, points)
    assert labels.dtype == np.int32 and labels.tolist() == expected.tolist()
