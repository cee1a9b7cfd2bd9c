"""Online updates of ``minibatch`` models, and the versions of their centers.

Version 1 is what the fit made (centers, and the number of training rows per center as
counts). Each ``POST /models/{id}/data`` makes the next version with MiniBatchKMeans' update
rule, computed from the stored centers and counts (no estimator is kept, nothing pickled):
every new row goes to its nearest center, and a center that got rows ``X_j`` becomes

    center_j <- (center_j * count_j + sum(X_j)) / (count_j + |X_j|),  count_j += |X_j|

(scikit-learn's ``_mini_batch_step`` with unit weights; its random reassignment of
rarely-used centers is not done, so updates are deterministic). Restoring version n makes a
new version with n's centers and counts, so history only grows.

Updates of one model are serialized by SQLite's write lock (``BEGIN IMMEDIATE``): each reads
the current version and writes the next in one transaction of the store
(:meth:`Store.append_version`, which calls back here for the math), across threads and
processes, so no update is lost; the same transaction logs the push (or restore) to the
project event log. Versions live in the ``model_versions`` table as JSON (exact for
float64); they never change once written, so they are cached by (model, version).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kmeans import engine, prep
from kmeans.errors import Conflict, NotFound, Unprocessable
from kmeans.store import FirstVersion, NewVersion, Store, now


def _check_updatable(model: dict[str, Any]) -> None:
    method = (model.get("params") or {}).get("method", "kmeans")
    if method != "minibatch":
        raise Conflict(
            f"model {model['id']} was fitted with method {method}; only method minibatch models take new data"
        )


def _first(store: Store, model: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    centers = Store.load_array(store.centers_path(model["id"]))
    sizes = model.get("cluster_sizes") or [0] * len(centers)
    return centers, np.asarray(sizes, dtype=np.float64)


def _fit_version(store: Store, model: dict[str, Any]) -> FirstVersion:
    """Version 1 of a model without versions: the fit's result (read only when needed)."""

    def first() -> tuple[np.ndarray, np.ndarray, str]:
        return (*_first(store, model), model.get("finished_at") or now())

    return first


def seed(store: Store, model_id: str, centers: np.ndarray, counts: np.ndarray) -> None:
    """Record version 1 with given counts (an imported model continues from its export's)."""
    store.seed_version(model_id, centers, counts, "import")


def _arrays(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(row["centers"], dtype=np.float64), np.asarray(row["counts"], dtype=np.float64)


def _summary(row: dict[str, Any], with_centers: bool = False, pre: dict | None = None) -> dict[str, Any]:
    out = {
        "version": row["version"],
        "source": row["source"],
        "rows_added": row["rows_added"],
        "created_at": row["created_at"],
        "counts": row["counts"],
    }
    if with_centers:
        out["centers"] = prep.to_original(np.asarray(row["centers"], dtype=np.float64), pre).tolist()
    return out


def push(store: Store, model: dict[str, Any], values: np.ndarray, first_row: int = 1) -> dict[str, Any]:
    """Apply rows (the model's encoded features, see prep.encode; the first is row ``first_row``
    of what was sent) to the current centers."""
    _check_updatable(model)
    space = prep.transform(values, model.get("preprocessing"))

    def update(current: dict[str, Any]) -> NewVersion:
        centers, counts = _arrays(current)
        prep.check_points(space, centers, model["preprocessing"], first_row)
        labels = engine.predict(centers, space)
        added = np.bincount(labels, minlength=len(centers)).astype(np.float64)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, space)
        moved = added > 0
        total = counts + added
        with np.errstate(over="ignore", invalid="ignore"):
            centers[moved] = (centers[moved] * counts[moved, None] + sums[moved]) / total[moved, None]
        if not np.isfinite(centers).all():  # counts past float64's range: never store such a center
            raise Unprocessable(f"model {model['id']} has seen too many rows for its centers to move in float64")
        return centers, total, len(values), "data"

    row = store.append_version(model["id"], _fit_version(store, model), update, event="push")
    return {"model_id": model["id"], **_summary(row, True, model.get("preprocessing")),
            "cluster_names": model.get("cluster_names") or None}


def versions(store: Store, model: dict[str, Any]) -> dict[str, Any]:
    current, rows = store.list_versions(model["id"], _fit_version(store, model))
    return {"model_id": model["id"], "current": current, "items": [_summary(r) for r in rows]}


def version(store: Store, model: dict[str, Any], number: int) -> dict[str, Any]:
    row = store.get_version(model["id"], number, _fit_version(store, model))
    columns = prep.encoded_columns(model.get("preprocessing") or {"feature_columns": model["columns"]})
    return {"model_id": model["id"], "columns": columns, **_summary(row, True, model.get("preprocessing")),
            "cluster_names": model.get("cluster_names") or None}


def restore(store: Store, model: dict[str, Any], number: int) -> dict[str, Any]:
    """Make a new version with the centers and counts of version ``number``."""

    def same(old: dict[str, Any]) -> NewVersion:
        return (*_arrays(old), 0, f"restore of {number}")

    row = store.append_version(model["id"], _fit_version(store, model), same, base=number, event="restore")
    return {"model_id": model["id"], **_summary(row, True, model.get("preprocessing")),
            "cluster_names": model.get("cluster_names") or None}


_CACHE: dict[tuple[str, str, int], np.ndarray] = {}
_CACHE_SIZE = 256


def _cached(store: Store, model_id: str, number: int) -> np.ndarray | None:
    """A version's centers; versions never change once written, so found ones are kept."""
    key = (str(store.db_path), model_id, number)
    if key in _CACHE:
        return _CACHE[key]
    stored = store.version_centers(model_id, number)
    if stored is None:
        return None
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = found = np.ascontiguousarray(stored, dtype=np.float64)
    return found


def centers(store: Store, model: dict[str, Any], number: int | None = None) -> np.ndarray:
    """The fitted-space centers of version ``number`` (default: the current one)."""
    number = number or model.get("center_version") or 1
    found = _cached(store, model["id"], number)
    if found is not None:
        return found
    if number == 1:
        return _first(store, model)[0]
    raise NotFound(f"model {model['id']} has no version {number}")
