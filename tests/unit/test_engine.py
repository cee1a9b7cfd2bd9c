"""kmeans.engine without HTTP: the quality metrics agree with scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

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
