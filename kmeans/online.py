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
the current version and writes the next in one transaction, across threads and processes,
so no update is lost. Versions live in the ``model_versions`` table as JSON (exact for
float64); they never change once written, so they are cached by (model, version).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import numpy as np

from kmeans import engine, prep
from kmeans.errors import Conflict, NotFound
from kmeans.store import Store, now


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


def _ensure_first(db: sqlite3.Connection, store: Store, model: dict[str, Any]) -> None:
    """Record version 1 (the fit's result) if the model has no versions yet."""
    if db.execute("SELECT 1 FROM model_versions WHERE model_id = ? LIMIT 1", (model["id"],)).fetchone():
        return
    centers, counts = _first(store, model)
    db.execute(
        "INSERT INTO model_versions (model_id, version, centers, counts, rows_added, source, created_at)"
        " VALUES (?, 1, ?, ?, 0, 'fit', ?)",
        (model["id"], json.dumps(centers.tolist()), json.dumps(counts.tolist()), model.get("finished_at") or now()),
    )


def seed(store: Store, model_id: str, centers: np.ndarray, counts: np.ndarray) -> None:
    """Record version 1 with given counts (an imported model continues from its export's)."""
    with store.transaction() as db:
        db.execute(
            "INSERT INTO model_versions (model_id, version, centers, counts, rows_added, source, created_at)"
            " VALUES (?, 1, ?, ?, 0, 'import', ?)",
            (model_id, json.dumps(centers.tolist()), json.dumps(counts.tolist()), now()),
        )


def _row(db: sqlite3.Connection, model_id: str, version: int) -> sqlite3.Row | None:
    return db.execute("SELECT * FROM model_versions WHERE model_id = ? AND version = ?", (model_id, version)).fetchone()


def _summary(row: Any, with_centers: bool = False, pre: dict | None = None) -> dict[str, Any]:
    out = {
        "version": row["version"],
        "source": row["source"],
        "rows_added": row["rows_added"],
        "created_at": row["created_at"],
        "counts": json.loads(row["counts"]),
    }
    if with_centers:
        out["centers"] = prep.to_original(np.asarray(json.loads(row["centers"]), dtype=np.float64), pre).tolist()
    return out


def _append(
    db: sqlite3.Connection, model_id: str, centers: np.ndarray, counts: np.ndarray, rows: int, source: str
) -> sqlite3.Row:
    version = db.execute("SELECT MAX(version) FROM model_versions WHERE model_id = ?", (model_id,)).fetchone()[0] + 1
    db.execute(
        "INSERT INTO model_versions (model_id, version, centers, counts, rows_added, source, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (model_id, version, json.dumps(centers.tolist()), json.dumps(counts.tolist()), rows, source, now()),
    )
    db.execute("UPDATE models SET center_version = ?, version = version + 1 WHERE id = ?", (version, model_id))
    return _row(db, model_id, version)


def _current(db: sqlite3.Connection, model_id: str) -> int:
    row = db.execute("SELECT center_version FROM models WHERE id = ?", (model_id,)).fetchone()
    if row is None:
        raise NotFound(f"no model with id {model_id}")
    return row[0] or 1


def push(store: Store, model: dict[str, Any], values: np.ndarray) -> dict[str, Any]:
    """Apply rows (the model's encoded features, see prep.encode) to the current centers."""
    _check_updatable(model)
    space = prep.transform(values, model.get("preprocessing"))
    with store.transaction() as db:
        _ensure_first(db, store, model)
        current = _row(db, model["id"], _current(db, model["id"]))
        centers = np.asarray(json.loads(current["centers"]), dtype=np.float64)
        counts = np.asarray(json.loads(current["counts"]), dtype=np.float64)
        labels = engine.predict(centers, space)
        added = np.bincount(labels, minlength=len(centers)).astype(np.float64)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, space)
        moved = added > 0
        total = counts + added
        centers[moved] = (centers[moved] * counts[moved, None] + sums[moved]) / total[moved, None]
        row = _append(db, model["id"], centers, total, len(values), "data")
    return {"model_id": model["id"], **_summary(row, True, model.get("preprocessing"))}


def versions(store: Store, model: dict[str, Any]) -> dict[str, Any]:
    with store.transaction() as db:
        _ensure_first(db, store, model)
        current = _current(db, model["id"])
        rows = db.execute("SELECT * FROM model_versions WHERE model_id = ? ORDER BY version", (model["id"],)).fetchall()
    return {"model_id": model["id"], "current": current, "items": [_summary(r) for r in rows]}


def _existing(db: Any, store: Store, model: dict[str, Any], number: int) -> Any:
    """Version ``number`` of a model, or NotFound."""
    _ensure_first(db, store, model)
    row = _row(db, model["id"], number)
    if row is None:
        raise NotFound(f"model {model['id']} has no version {number}")
    return row


def version(store: Store, model: dict[str, Any], number: int) -> dict[str, Any]:
    with store.transaction() as db:
        row = _existing(db, store, model, number)
    columns = prep.encoded_columns(model.get("preprocessing") or {"feature_columns": model["columns"]})
    return {"model_id": model["id"], "columns": columns, **_summary(row, True, model.get("preprocessing"))}


def restore(store: Store, model: dict[str, Any], number: int) -> dict[str, Any]:
    """Make a new version with the centers and counts of version ``number``."""
    with store.transaction() as db:
        old = _existing(db, store, model, number)
        centers = np.asarray(json.loads(old["centers"]), dtype=np.float64)
        counts = np.asarray(json.loads(old["counts"]), dtype=np.float64)
        row = _append(db, model["id"], centers, counts, 0, f"restore of {number}")
    return {"model_id": model["id"], **_summary(row, True, model.get("preprocessing"))}


_CACHE: dict[tuple[str, str, int], np.ndarray] = {}
_CACHE_SIZE = 256


def _cached(db_path: str, model_id: str, number: int) -> np.ndarray | None:
    """A version's centers; versions never change once written, so found ones are kept."""
    key = (db_path, model_id, number)
    if key in _CACHE:
        return _CACHE[key]
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        row = conn.execute(
            "SELECT centers FROM model_versions WHERE model_id = ? AND version = ?", (model_id, number)
        ).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = found = np.ascontiguousarray(json.loads(row[0]), dtype=np.float64)
    return found


def centers(store: Store, model: dict[str, Any], number: int | None = None) -> np.ndarray:
    """The fitted-space centers of version ``number`` (default: the current one)."""
    number = number or model.get("center_version") or 1
    found = _cached(str(store.db_path), model["id"], number)
    if found is not None:
        return found
    if number == 1:
        return _first(store, model)[0]
    raise NotFound(f"model {model['id']} has no version {number}")
