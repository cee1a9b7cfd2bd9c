"""Models as portable JSON documents, out and back in. Never a pickle: plain numbers and names.

Format ``kmeans-service/model``, version 1::

    {"format": "kmeans-service/model", "format_version": 1, "id": "m_…", "dataset_id": "ds_…",
     "params": {…}, "columns": ["x", "y"], "centers": [[…], …],
     "preprocessing": {"mean": [..] | null, "scale": [..] | null, "distance": "euclidean",
                       "missing": "mean", "id_column": "id" | null,
                       "features": [{"name", "type": "numeric", "fill"} |
                                    {"name", "type": "categorical", "categories", "missing_category"}]},
     "anomaly_threshold": 1.5 | null,
     "metrics": {"inertia", "n_iter", "silhouette", "davies_bouldin", "calinski_harabasz",
                 "cluster_sizes", "rows", "fit_seconds"},
     "cluster_names": {"0": "bargain hunters", …} | null}

``centers`` are in the fitted space (numeric features, then one column per category of each
categorical one; after z-score and normalisation), exactly as stored, so
an imported model predicts bit for bit as the exported one. Floats survive JSON exactly
(Python writes the shortest repr that reads back to the same double).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kmeans import insight, online, prep
from kmeans.csvio import check_names
from kmeans.errors import Unprocessable
from kmeans.store import Store, new_id, now

FORMAT = "kmeans-service/model"
FORMAT_VERSION = 1
METRICS = (
    "inertia",
    "n_iter",
    "silhouette",
    "davies_bouldin",
    "calinski_harabasz",
    "cluster_sizes",
    "rows",
    "fit_seconds",
)


def export(model: dict[str, Any], centers: np.ndarray, counts: list[float] | None = None) -> dict[str, Any]:
    """The document of a succeeded model with its current (fitted-space) centers and the
    rows seen per center (what online updates of a minibatch model continue from)."""
    pre = model.get("preprocessing") or {}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "id": model["id"],
        "dataset_id": model.get("dataset_id"),
        "params": model["params"],
        "columns": model["columns"],
        "centers": np.asarray(centers, dtype=np.float64).tolist(),
        "preprocessing": {
            "mean": pre.get("mean"),
            "scale": pre.get("scale"),
            "distance": pre.get("distance", "euclidean"),
            "missing": pre.get("missing", "error"),
            "id_column": pre.get("id_column"),
            "features": [_feature_out(f) for f in prep.features_of(pre)] if pre else None,
        },
        "anomaly_threshold": model.get("anomaly_threshold"),
        "metrics": {k: model.get(k) for k in METRICS},
        "counts": counts if counts is not None else model.get("cluster_sizes"),
        "cluster_names": model.get("cluster_names") or None,
    }


def _feature_out(feature: dict[str, Any]) -> dict[str, Any]:
    if feature["type"] == "numeric":
        return {"name": feature["name"], "type": "numeric", "fill": feature.get("fill")}
    return {
        "name": feature["name"],
        "type": "categorical",
        "categories": list(feature["categories"]),
        "missing_category": bool(feature.get("missing_category")),
    }


def _features_in(pre: dict[str, Any], columns: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The document's features (each numeric one with its fill, each categorical one with its
    categories), checked against ``columns``; and the encoded columns they make."""
    given = pre.get("features")
    if given is None:
        return [{"name": n, "type": "numeric", "index": i, "fill": None} for i, n in enumerate(columns)], columns
    if [f.get("name") for f in given] != columns:
        raise Unprocessable("preprocessing.features must name the columns, in their order", parameter="features")
    features: list[dict[str, Any]] = []
    counts = {"numeric": 0, "categorical": 0}
    for f in given:
        index = counts[f["type"]]
        counts[f["type"]] += 1
        if f["type"] == "numeric":
            fill = f.get("fill")
            if fill is not None and not (isinstance(fill, (int, float)) and np.isfinite(fill)):
                raise Unprocessable(f"preprocessing.features: the fill of {f['name']!r} must be a finite number",
                                    parameter="features")
            features.append({"name": f["name"], "type": "numeric", "index": index,
                             "fill": None if fill is None else float(fill)})
        else:
            categories = [str(c) for c in f.get("categories") or []]
            if not categories or len(set(categories)) != len(categories):
                raise Unprocessable(
                    f"preprocessing.features: {f['name']!r} needs its categories, each once", parameter="features"
                )
            features.append({"name": f["name"], "type": "categorical", "index": index, "categories": categories,
                             "missing_category": bool(f.get("missing_category"))})
    encoded = [f["name"] for f in features if f["type"] == "numeric"]
    for f in features:
        if f["type"] == "categorical":
            encoded += [f"{f['name']}={c}" for c in f["categories"]]
            encoded += [f"{f['name']}={prep.MISSING_LABEL}"] if f["missing_category"] else []
    return features, encoded


def _vector(pre: dict[str, Any], name: str, width: int) -> list[float] | None:
    value = pre.get(name)
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (width,) or not np.isfinite(array).all():
        raise Unprocessable(f"preprocessing.{name} must be {width} finite numbers, one per column", parameter=name)
    if name == "scale" and (array <= 0).any():
        raise Unprocessable("preprocessing.scale must be positive", parameter="scale")
    return array.tolist()


def import_document(store: Store, doc: dict[str, Any], project: str) -> str:
    """Store a document as a new succeeded model; returns its id. 422 for an inconsistent document."""
    if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise Unprocessable(f"this is not a {FORMAT} version {FORMAT_VERSION} document", parameter="format")
    columns = list(doc["columns"])
    check_names(columns, parameter="columns")
    pre_in = doc.get("preprocessing") or {}
    features, encoded = _features_in(pre_in, columns)
    rows = doc["centers"]
    for i, row in enumerate(rows):
        if len(row) != len(encoded):
            raise Unprocessable(
                f"centers[{i}] has {len(row)} numbers but the features encode to {len(encoded)} columns"
                f" ({', '.join(encoded)})",
                parameter="centers",
            )
    centers = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(centers).all():
        raise Unprocessable("centers must be finite numbers", parameter="centers")
    mean, scale = _vector(pre_in, "mean", len(encoded)), _vector(pre_in, "scale", len(encoded))
    if (mean is None) != (scale is None):
        raise Unprocessable("preprocessing needs both mean and scale, or neither", parameter="preprocessing")
    params = dict(doc.get("params") or {})
    if isinstance(params.get("init"), list):
        params.pop("init")  # initial centers of the original fit: not needed to predict
    if params.get("n_clusters", len(centers)) != len(centers):
        params["n_clusters"] = len(centers)
    metrics = {
        k: v
        for k, v in (doc.get("metrics") or {}).items()
        if (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v))
        or (k == "cluster_sizes" and isinstance(v, list) and all(isinstance(n, int) and n >= 0 for n in v))
    }
    names = insight.names_in_document(doc.get("cluster_names"), len(centers))
    threshold = doc.get("anomaly_threshold")
    if threshold is not None and not (
        isinstance(threshold, (int, float)) and np.isfinite(threshold) and threshold >= 0
    ):
        raise Unprocessable("anomaly_threshold must be a number >= 0", parameter="anomaly_threshold")
    model_id = new_id("m")
    stamp = now()
    sizes = metrics.get("cluster_sizes")
    record = {
        "id": model_id,
        "project": project,
        "dataset_id": doc.get("dataset_id") or "",
        "status": "succeeded",
        "params": params,
        "created_at": stamp,
        "queued_at": stamp,
        "started_at": stamp,
        "finished_at": stamp,
        "progress": 1.0,
        "phase": f"imported from {doc.get('id') or 'a document'}",
        "rows": max(0, int(metrics.get("rows") or 0)),
        "n_features": len(columns),
        "columns": columns,
        "preprocessing": {
            "features": features,
            "feature_columns": columns,
            "feature_index": list(range(len(columns))) if encoded is columns else None,
            "encoded_columns": encoded,
            "weight_column": None,
            "weight_index": None,
            "missing": pre_in.get("missing") or ("mean" if pre_in.get("features") else "error"),
            "id_column": pre_in.get("id_column"),
            "mean": mean,
            "scale": scale,
            "distance": pre_in.get("distance", "euclidean"),
        },
        "anomaly_threshold": threshold,
        "cluster_sizes": sizes if isinstance(sizes, list) and len(sizes) == len(centers) else None,
        "cluster_names": names,
        **{
            k: metrics.get(k)
            for k in ("inertia", "n_iter", "silhouette", "davies_bouldin", "calinski_harabasz", "fit_seconds")
        },
    }
    counts = doc.get("counts")
    if counts is not None:
        array = np.asarray(counts, dtype=np.float64)
        if array.shape != (len(centers),) or not np.isfinite(array).all() or (array < 0).any():
            raise Unprocessable(f"counts must be {len(centers)} numbers >= 0, one per center", parameter="counts")
    store.save_array(store.centers_path(model_id), np.ascontiguousarray(centers))
    try:
        store.add_model(record)
        if counts is not None:
            online.seed(store, model_id, centers, array)
    except BaseException:
        store.centers_path(model_id).unlink(missing_ok=True)
        raise
    return model_id
