"""How a fitted model holds on a dataset: evaluations (a job kind) and comparisons of two models.

An evaluation is a job of the one queue (see :mod:`kmeans.jobs`): it waits its turn, runs in a
job process (or on Dask) under a time limit, can be cancelled, and stores its result on its
row. It labels every row of the dataset with the model's current centers -- the dataset's
columns matched to the model's features by name, exactly as predictions match them, missing
values filled as in training -- and measures, in the model's fitted space:

- ``mean_squared_distance`` (and ``inertia``, their sum) of the rows to their nearest center;
  ``silhouette`` (on a seeded sample of at most 3,000 rows), ``davies_bouldin`` and
  ``calinski_harabasz`` (at most 100,000 rows), as a fit measures itself (engine.quality);
- per cluster its rows and share there against the model's training ``cluster_sizes``;
- drift: the population stability index of the cluster shares against training,
  ``sum((p - q) * ln(p / q))`` with shares floored at PSI_FLOOR, flagged past PSI_THRESHOLD (0.2);
  and the two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp) of the rows' distances to
  their nearest center against the training rows' distances (each side a seeded sample of at
  most KS_SAMPLE rows), flagged when its p-value is below KS_PVALUE (0.01) *and* its statistic
  is at least KS_STATISTIC (0.1): on large samples a negligible shift is significant, so the
  size of the shift must matter too;
- with ``label_column`` (a column of the dataset, of any type, that is not a feature of the
  model): adjusted Rand index, normalized mutual information, homogeneity, completeness,
  V-measure, purity, the contingency table (clusters x labels) and each cluster's majority
  label, over the rows that have a label.

A model whose ``missing`` is ``drop_rows`` or ``error`` leaves out rows with a missing feature
(counted in ``rows_left_out``), as its fit did.

A comparison is synchronous (at most MAX_COMPARE_ROWS rows): both models label the dataset's
rows, and the answer has the adjusted Rand index and NMI between the labellings, the best
one-to-one matching of their clusters (scipy.optimize.linear_sum_assignment on the contingency
table, maximising the rows matched) and the rows that changed cluster under that matching.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kmeans import csvio, engine, prep, schema
from kmeans.errors import Unprocessable
from kmeans.store import Store, new_id, now

PSI_THRESHOLD = 0.2
PSI_FLOOR = 1e-4  # a share of 0 (an empty cluster) counts as this, so that the logarithm is finite
KS_PVALUE = 0.01
KS_STATISTIC = 0.1
KS_SAMPLE = 100_000
MAX_COMPARE_ROWS = 1_000_000
SEED = 0


def _entries(dataset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in schema.of_dataset(dataset)}


def check_columns(model: dict[str, Any], dataset: dict[str, Any], label_column: str | None = None,
                  parameter: str = "dataset_id") -> None:
    """Unprocessable unless ``dataset`` has every feature of ``model`` by name (numeric ones numeric)
    and, if given, ``label_column`` (not one of the model's features)."""
    entries = _entries(dataset)
    pre = model.get("preprocessing") or {"feature_columns": model["columns"]}
    names = [f["name"] for f in prep.features_of(pre)]
    for feature in prep.features_of(pre):
        entry = entries.get(feature["name"])
        if entry is None:
            raise Unprocessable(
                f"dataset {dataset['id']} has no column {feature['name']!r}; model {model['id']} takes"
                f" {', '.join(names)} (matched by name, as predictions are)",
                parameter=parameter,
            )
        if entry["type"] == "id" or (feature["type"] == "numeric" and entry["type"] != "numeric"):
            raise Unprocessable(
                f"column {feature['name']!r} of dataset {dataset['id']} is {entry['type']}, but model {model['id']}"
                f" takes it as {feature['type']}",
                parameter=parameter,
            )
    if label_column is None:
        return
    if label_column not in entries:
        raise Unprocessable(
            f"dataset {dataset['id']} has no column {label_column!r} (label_column); its columns are"
            f" {', '.join(entries)}",
            parameter="label_column",
        )
    if label_column in names:
        raise Unprocessable(
            f"label_column {label_column!r} is a feature of model {model['id']}; known labels must be a column the"
            " model was not fitted on",
            parameter="label_column",
        )


def _table(store: Store, dataset: dict[str, Any], features: list[dict[str, Any]]) -> tuple[csvio.Table, np.ndarray]:
    """A stored dataset as the Table prediction rows are (numeric columns as numbers, the model's
    categorical features as text), leaving out rows with a missing feature when the model's
    ``missing`` fills nothing; and the mask of the dataset rows kept."""
    values, codes = store.dataset_arrays(dataset["id"])
    entries = schema.of_dataset(dataset)
    numeric = [e["name"] for e in entries if e["type"] == "numeric"]
    categorical = [e for e in entries if e["type"] == "categorical"]
    wanted = {f["name"] for f in features}
    kept = np.ones(len(values), dtype=bool)
    fills_nothing = any(f["type"] == "numeric" and f.get("fill") is None for f in features)
    text_codes: dict[str, tuple[np.ndarray, list[str]]] = {}
    for position, entry in enumerate(categorical):
        if entry["name"] in wanted:
            text_codes[entry["name"]] = (np.asarray(codes[:, position]), entry["categories"])
    if fills_nothing:
        for feature in features:
            if feature["type"] == "numeric":
                kept &= ~np.isnan(np.asarray(values[:, numeric.index(feature["name"])]))
            elif not feature.get("missing_category"):
                kept &= text_codes[feature["name"]][0] >= 0
    rows = None if kept.all() else np.flatnonzero(kept)
    block = np.asarray(values if rows is None else values[rows], dtype=np.float64)
    text = {}
    for name, (column, categories) in text_codes.items():
        picked = column if rows is None else column[rows]
        words = np.asarray(categories + [None], dtype=object)[np.where(picked >= 0, picked, len(categories))]
        text[name] = csvio.text_array(words.tolist())
    columns = numeric + list(text)
    return csvio.Table([np.ascontiguousarray(block)], columns, numeric=numeric, text=text), kept


def model_space(
    store: Store, model: dict[str, Any], dataset: dict[str, Any], centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """A dataset's rows in a model's fitted space (encoded as predictions are), the mask of the
    rows kept, and the unknown categories per column."""
    pre = model.get("preprocessing") or {"feature_columns": model["columns"]}
    table, kept = _table(store, dataset, prep.features_of(pre))
    if table.rows == 0:
        raise Unprocessable(
            f"every row of dataset {dataset['id']} has a missing feature, and model {model['id']} fills none"
            f" (missing is {pre.get('missing')!r})",
            parameter="dataset_id",
        )
    encoded, unknown = prep.encode(table, pre, model["id"])
    space = encoded if prep.is_identity(pre) else prep.transform(encoded, pre)
    prep.check_points(space, centers, pre, 1)
    return space, kept, unknown


def _nearest(centers: np.ndarray, space: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest center and its distance to it (Euclidean, in the fitted space)."""
    labels = engine.predict(centers, space)
    offsets = space - centers[labels]
    return labels, np.sqrt(np.einsum("ij,ij->i", offsets, offsets))


def _sample(values: np.ndarray, size: int) -> np.ndarray:
    if len(values) <= size:
        return values
    return values[np.sort(np.random.default_rng(SEED).choice(len(values), size, replace=False))]


def psi(shares: np.ndarray, training: np.ndarray) -> float:
    """The population stability index of ``shares`` against ``training`` (each floored at PSI_FLOOR)."""
    p, q = np.maximum(shares, PSI_FLOOR), np.maximum(training, PSI_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


def drift(shares: np.ndarray, training_shares: np.ndarray | None, distances: np.ndarray,
          training_distances: np.ndarray | None) -> dict[str, Any]:
    """PSI of the cluster shares and the KS test of the distances, each against training, flagged."""
    from scipy.stats import ks_2samp

    out: dict[str, Any] = {"psi": None, "psi_threshold": PSI_THRESHOLD, "shares_drifted": None,
                           "ks_statistic": None, "ks_pvalue": None, "ks_pvalue_threshold": KS_PVALUE,
                           "ks_statistic_threshold": KS_STATISTIC, "distances_drifted": None,
                           "training_mean_distance": None, "mean_distance": float(distances.mean())}
    if training_shares is not None:
        out["psi"] = round(psi(shares, training_shares), 12)
        out["shares_drifted"] = out["psi"] > PSI_THRESHOLD
    if training_distances is not None and len(training_distances):
        test = ks_2samp(_sample(distances, KS_SAMPLE), _sample(training_distances, KS_SAMPLE))
        out["ks_statistic"], out["ks_pvalue"] = float(test.statistic), float(test.pvalue)
        out["distances_drifted"] = bool(test.pvalue < KS_PVALUE and test.statistic >= KS_STATISTIC)
        out["training_mean_distance"] = float(training_distances.mean())
    return out


def _label_name(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def known_labels(store: Store, dataset: dict[str, Any], column: str) -> tuple[np.ndarray, list[str]]:
    """A dataset column as label codes per row (-1: missing) and the labels' names, in order."""
    entries = schema.of_dataset(dataset)
    entry = next(e for e in entries if e["name"] == column)
    values, codes = store.dataset_arrays(dataset["id"])
    if entry["type"] == "numeric":
        cells = np.asarray(values[:, [e["name"] for e in entries if e["type"] == "numeric"].index(column)])
        present = ~np.isnan(cells)
        distinct, inverse = np.unique(cells[present], return_inverse=True)
        names = [_label_name(v) for v in distinct]
    elif entry["type"] == "categorical":
        cells = np.asarray(codes[:, [e["name"] for e in entries if e["type"] == "categorical"].index(column)])
        present = cells >= 0
        distinct, inverse = np.unique(cells[present], return_inverse=True)
        names = [entry["categories"][c] for c in distinct]
    else:  # the id column: every value its own label, which is what a user asking for it gets
        ids = np.asarray(store.load_ids(dataset["id"]) or [], dtype=object)
        present = ids != ""
        distinct, inverse = np.unique(ids[present].astype(str), return_inverse=True)
        names = [str(v) for v in distinct]
    out = np.full(len(present), -1, dtype=np.int64)
    out[present] = inverse
    return out, names


def contingency(first: np.ndarray, second: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Counts of rows per (first, second) pair of codes: a rows x columns matrix."""
    return np.bincount(first * columns + second, minlength=rows * columns).reshape(rows, columns)


def label_scores(labels: np.ndarray, truth: np.ndarray, names: list[str], k: int) -> dict[str, Any]:
    """How a clustering agrees with known labels (codes into ``names``): sklearn.metrics' scores,
    purity, the contingency table and each cluster's majority label."""
    from sklearn import metrics

    table = contingency(labels, truth, k, len(names))
    homogeneity, completeness, v_measure = metrics.homogeneity_completeness_v_measure(truth, labels)
    majority = []
    for cluster in range(k):
        size = int(table[cluster].sum())
        top = int(np.argmax(table[cluster])) if size else None
        majority.append({
            "cluster": cluster, "label": names[top] if top is not None else None,
            "rows": int(table[cluster, top]) if top is not None else 0, "cluster_rows": size,
            "share": round(float(table[cluster, top] / size), 12) if top is not None else None,
        })
    return {
        "rows": int(len(labels)),
        "adjusted_rand": float(metrics.adjusted_rand_score(truth, labels)),
        "nmi": float(metrics.normalized_mutual_info_score(truth, labels)),
        "homogeneity": float(homogeneity), "completeness": float(completeness), "v_measure": float(v_measure),
        "purity": float(table.max(axis=1).sum() / len(labels)),
        "contingency": {"clusters": list(range(k)), "labels": names, "counts": table.tolist()},
        "majority": majority,
    }


def new_record(model: dict[str, Any], dataset: dict[str, Any], label_column: str | None,
               time_limit: float) -> dict[str, Any]:
    """The record of a queued evaluation of ``model`` on ``dataset``."""
    stamp = now()
    return {
        "id": new_id("ev"), "model_id": model["id"], "dataset_id": dataset["id"], "label_column": label_column,
        "status": "queued", "result": None, "error": None, "progress": 0.0, "phase": "queued",
        "created_at": stamp, "queued_at": stamp, "project": model["project"], "time_limit": time_limit,
    }


def _training_distances(store: Store, model: dict[str, Any], centers: np.ndarray) -> np.ndarray | None:
    """The training rows' distances to their nearest center (None: the training dataset is gone)."""
    training = store.get_dataset(model["dataset_id"]) if model.get("dataset_id") else None
    if training is None or training.get("project") != model.get("project"):  # (an import may name any id)
        return None
    try:
        space, _, _ = model_space(store, model, training, centers)
    except FileNotFoundError:
        return None
    return _nearest(centers, space)[1]


def centers_of(store: Store, model: dict[str, Any]) -> np.ndarray:
    """A model's current centers in its fitted space."""
    if model.get("center_version"):
        from kmeans import online

        return online.centers(store, model)
    return store.load_array(store.centers_path(model["id"]))


def run(store: Store, evaluation: dict[str, Any], job: Any) -> str:
    """Evaluate a model on a dataset and store the result (if this run still owns the job)."""
    model = store.get_model(evaluation["model_id"])
    dataset = store.get_dataset(evaluation["dataset_id"])
    if model is None or dataset is None:
        what = "model" if model is None else "dataset"
        raise Unprocessable(f"the {what} was deleted before the evaluation started")
    check_columns(model, dataset, evaluation.get("label_column"))
    centers = centers_of(store, model)
    job.progress(0.1, "labelling the rows")
    space, kept, unknown = model_space(store, model, dataset, centers)
    labels, distances = _nearest(centers, space)
    k = len(centers)
    job.progress(0.4, "measuring the clusters")
    quality = engine.quality(space, labels, (model.get("params") or {}).get("random_state"))
    counts = np.bincount(labels, minlength=k)
    shares = counts / counts.sum()
    sizes = model.get("cluster_sizes")
    training = np.asarray(sizes, dtype=np.float64) if sizes and len(sizes) == k and sum(sizes) else None
    training_shares = training / training.sum() if training is not None else None
    job.progress(0.6, "comparing with the training rows")
    training_distances = _training_distances(store, model, centers)
    result: dict[str, Any] = {
        "rows": int(len(space)), "rows_left_out": int((~kept).sum()), "n_clusters": k,
        "mean_squared_distance": float(np.mean(distances**2)), "inertia": float(np.sum(distances**2)),
        **quality,
        "clusters": [
            {"cluster": c, "rows": int(counts[c]), "share": round(float(shares[c]), 12),
             "training_rows": int(training[c]) if training is not None else None,
             "training_share": round(float(training_shares[c]), 12) if training_shares is not None else None}
            for c in range(k)
        ],
        "unknown_categories": unknown,
        "drift": drift(shares, training_shares, distances, training_distances),
        "labels": None,
    }
    if evaluation.get("label_column"):
        job.progress(0.8, "scoring against the known labels")
        truth, names = known_labels(store, dataset, evaluation["label_column"])
        truth = truth[kept]
        has = truth >= 0
        if not has.any():
            raise Unprocessable(f"column {evaluation['label_column']!r} has no value in the rows evaluated")
        used = sorted(set(truth[has].tolist()))
        recode = np.full(len(names), -1, dtype=np.int64)
        recode[used] = np.arange(len(used))
        scores = label_scores(labels[has], recode[truth[has]], [names[i] for i in used], k)
        result["labels"] = {"column": evaluation["label_column"], "rows_without_label": int((~has).sum()), **scores}
    job.update(status="succeeded", finished_at=now(), progress=1.0, phase="done", result=result)
    return "succeeded"


def compare(first: np.ndarray, second: np.ndarray, k_first: int, k_second: int) -> dict[str, Any]:
    """Agreement of two labellings of the same rows: ARI, NMI, the best one-to-one matching of
    their clusters and the rows that changed cluster under it."""
    from scipy.optimize import linear_sum_assignment
    from sklearn import metrics

    table = contingency(first, second, k_first, k_second)
    rows, cols = linear_sum_assignment(table, maximize=True)
    kept = int(table[rows, cols].sum())
    matched = {int(r): int(c) for r, c in zip(rows, cols, strict=True)}
    sizes = table.sum(axis=1)
    matching = [
        {"cluster": r, "other_cluster": c, "rows": int(table[r, c]),
         "share": round(float(table[r, c] / sizes[r]), 12) if sizes[r] else None}
        for r, c in sorted(matched.items())
    ]
    total = len(first)
    return {
        "rows": total,
        "adjusted_rand": float(metrics.adjusted_rand_score(first, second)),
        "nmi": float(metrics.normalized_mutual_info_score(first, second)),
        "matching": matching,
        "unmatched_clusters": [c for c in range(k_first) if c not in matched],
        "unmatched_other_clusters": [c for c in range(k_second) if c not in set(matched.values())],
        "changed_rows": total - kept,
        "changed_share": round((total - kept) / total, 12),
        "contingency": {"clusters": list(range(k_first)), "other_clusters": list(range(k_second)),
                        "counts": table.tolist()},
    }
