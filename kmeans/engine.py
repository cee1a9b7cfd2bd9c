"""The clustering engine: the only module that imports scikit-learn."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import pairwise_distances_argmin


@dataclass(frozen=True)
class FitResult:
    """What a fit leaves behind: enough to predict without any pickled object."""

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    warnings: list[str]


def fit(values: np.ndarray, params: dict[str, Any]) -> FitResult:
    """Fit scikit-learn's KMeans with ``params`` (already validated against the spec)."""
    model = KMeans(**params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(values)
    return FitResult(
        centers=np.ascontiguousarray(model.cluster_centers_, dtype=np.float64),
        labels=model.labels_.astype(np.int32, copy=False),
        inertia=float(model.inertia_),
        n_iter=int(model.n_iter_),
        warnings=[str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)],
    )


# Below this many row-center pairs, plain numpy beats scikit-learn's input checks and chunking.
SMALL_PREDICT = 65536


def predict(centers: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The index of the nearest center (Euclidean) for each row, as KMeans.predict does."""
    if len(values) * len(centers) <= SMALL_PREDICT:
        distances = ((values[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        return distances.argmin(axis=1).astype(np.int32)
    return pairwise_distances_argmin(values, centers).astype(np.int32, copy=False)
