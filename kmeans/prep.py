"""What a model does to rows before it clusters them: pick columns, take weights, z-score,
L2-normalise. Plain numpy and JSON, so any process (the API's, a fit's, an importer's)
applies exactly the same transform; nothing is pickled.

A model's ``preprocessing`` record::

    {"feature_index": [0, 2], "feature_columns": ["a", "c"],
     "weight_index": 1 | null, "weight_column": "b" | null,
     "mean": [..] | null, "scale": [..] | null, "distance": "euclidean" | "cosine"}

Order of the transform: select the feature columns, z-score them with ``mean``/``scale``
(when ``standardize``), then L2-normalise each row (when ``distance`` is ``cosine``).
Centers are stored in that fitted space; they are reported in original units by undoing the
z-score (cosine centers stay on the unit sphere's scale: a direction, not a point).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kmeans.errors import Unprocessable

DEFAULT_N_CLUSTERS = 8


def n_clusters(params: dict[str, Any]) -> int:
    """The k a fit will make: n_clusters, else the number of explicit initial centers, else 8."""
    if "n_clusters" in params:
        return int(params["n_clusters"])
    if isinstance(params.get("init"), list):
        return len(params["init"])
    return DEFAULT_N_CLUSTERS


def plan(params: dict[str, Any], columns: list[str], sweep: bool = False) -> dict[str, Any]:
    """Check the fit options against each other and the dataset's ``columns``; returns the
    preprocessing record without the statistics (``mean``/``scale`` come at fit time).

    Raises Unprocessable naming the option for every bad value or combination.
    """
    method = params.get("method", "kmeans")
    init = params.get("init")
    if "algorithm" in params and method == "minibatch":
        raise Unprocessable(
            "algorithm (lloyd/elkan) applies to method kmeans and bisecting, not minibatch", parameter="algorithm"
        )
    weight = params.get("weight_column")
    if params.get("columns") is not None:
        unknown = [c for c in params["columns"] if c not in columns]
        if unknown:
            raise Unprocessable(
                f"columns: the dataset has no column {unknown[0]!r} (it has {', '.join(columns)})", parameter="columns"
            )
        features = list(params["columns"])
    else:
        features = [c for c in columns if c != weight]
    if weight is not None:
        if weight not in columns:
            raise Unprocessable(
                f"weight_column: the dataset has no column {weight!r} (it has {', '.join(columns)})",
                parameter="weight_column",
            )
        if weight in features:
            raise Unprocessable(
                f"weight_column {weight!r} cannot also be a feature; leave it out of columns", parameter="weight_column"
            )
    if not features:
        raise Unprocessable("no feature column is left to cluster on", parameter="columns")
    if isinstance(init, list):
        if sweep:
            raise Unprocessable("a sweep fits several k, so init cannot be explicit centers", parameter="init")
        if method == "bisecting":
            raise Unprocessable(
                "method bisecting takes init k-means++ or random, not explicit centers", parameter="init"
            )
        k = params.get("n_clusters", len(init))
        if len(init) != k or any(len(row) != len(features) for row in init):
            width = {len(row) for row in init}
            raise Unprocessable(
                f"init must be {k} x {len(features)} (n_clusters x feature columns) but is"
                f" {len(init)} x {'/'.join(map(str, sorted(width)))}",
                parameter="init",
            )
        if not np.isfinite(np.asarray(init, dtype=np.float64)).all():
            raise Unprocessable("init centers must be finite numbers (no NaN or infinity)", parameter="init")
        if params.get("n_init", 1) != 1:
            raise Unprocessable("with explicit init centers n_init must be 1 (or left out)", parameter="n_init")
    if sweep:
        for option in ("n_clusters", "contamination"):
            if option in params:
                raise Unprocessable(f"{option} is not a sweep option (k comes from k_min..k_max)", parameter=option)
    return {
        "feature_columns": features,
        "feature_index": [columns.index(c) for c in features],
        "weight_column": weight,
        "weight_index": columns.index(weight) if weight is not None else None,
        "mean": None,
        "scale": None,
        "distance": params.get("distance", "euclidean"),
    }


def weights(values: np.ndarray, pre: dict[str, Any]) -> np.ndarray | None:
    """The sample weights of ``values`` (dataset rows), checked: finite and not negative."""
    if pre.get("weight_index") is None:
        return None
    column = np.asarray(values[:, pre["weight_index"]], dtype=np.float64)
    negative = np.flatnonzero(column < 0)
    if len(negative):
        raise Unprocessable(
            f"weight_column {pre['weight_column']!r} has a negative weight ({column[negative[0]]:g})"
            f" in row {int(negative[0]) + 1}; weights must be >= 0",
            parameter="weight_column",
        )
    if not column.sum() > 0:
        raise Unprocessable(f"weight_column {pre['weight_column']!r} has no positive weight", parameter="weight_column")
    return column


def select(values: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """The feature columns of dataset rows as float64 (the rows themselves, not a copy, when
    they are all features: a large read-only memory map stays one)."""
    index = pre["feature_index"]
    if index == list(range(values.shape[1])):
        return np.asarray(values, dtype=np.float64)
    return np.array(values[:, index], dtype=np.float64)


def fit_scaler(features: np.ndarray, pre: dict[str, Any], standardize: bool) -> dict[str, Any]:
    """``pre`` with ``mean``/``scale`` of ``features`` when standardizing (scale 1 for constant columns)."""
    if not standardize:
        return pre
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    return {**pre, "mean": mean.tolist(), "scale": scale.tolist()}


def transform(features: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """Feature rows in original units -> the space the model was fitted in."""
    out = np.asarray(features, dtype=np.float64)
    if pre.get("mean") is not None:
        out = (out - np.asarray(pre["mean"])) / np.asarray(pre["scale"])
    if pre.get("distance") == "cosine":
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms == 0, 1.0, norms)  # an all-zero row stays zero
    return np.ascontiguousarray(out)


def to_original(centers: np.ndarray, pre: dict[str, Any] | None) -> np.ndarray:
    """Centers in the fitted space -> original units (undoes the z-score)."""
    if pre is None or pre.get("mean") is None:
        return centers
    return centers * np.asarray(pre["scale"]) + np.asarray(pre["mean"])


def is_identity(pre: dict[str, Any] | None) -> bool:
    return pre is None or (pre.get("mean") is None and pre.get("distance", "euclidean") == "euclidean")
