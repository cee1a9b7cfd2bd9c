"""Understanding clusters: cluster names and cluster profiles (numpy and pandas only).

A profile describes each cluster in the dataset's own units (not the fitted, standardized
space): its size and share of the clustered rows; per numeric feature the mean, median and
standard deviation in the cluster and its difference from the whole in standard deviations
of the whole, ``(mean_cluster - mean_all) / std_all``; per categorical feature each
category's share in the cluster against its share overall, the difference measured the same
way on the category's 0/1 indicator, ``(share_cluster - share_all) / sqrt(share_all (1 -
share_all))``. Features are ranked by the size of that difference (for a categorical feature,
its most different category), and the summary line names the top ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from kmeans import prep
from kmeans.errors import Unprocessable

MAX_NAME_LENGTH = 200
SUMMARY_FEATURES = 3  # features named in a cluster's one-line summary
MISSING = prep.MISSING_LABEL


# -- names -------------------------------------------------------------------------------


def merge_names(current: Mapping[str, str] | None, patch: Mapping[str, Any], k: int) -> dict[str, str]:
    """``current`` names with ``patch`` applied as a JSON merge patch (null removes a name),
    checked against the model's ``k`` clusters; 422 naming every bad key or name."""
    wrong = [key for key in patch if not (key.isascii() and key.isdigit() and str(int(key)) == key and int(key) < k)]
    if wrong:
        raise Unprocessable(
            f"cluster_names: the model has clusters 0..{k - 1}, so there is no cluster "
            + ", ".join(repr(w) for w in wrong),
            parameter="cluster_names",
        )
    names = dict(current or {})
    for key, value in patch.items():
        if value is None:
            names.pop(key, None)
            continue
        text = value.strip()
        if not text or len(text) > MAX_NAME_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise Unprocessable(
                f"cluster_names: the name of cluster {key} must be 1 to {MAX_NAME_LENGTH} characters of text"
                " without control characters",
                parameter="cluster_names",
            )
        names[key] = text
    seen: dict[str, str] = {}
    for key in sorted(names, key=int):
        if names[key] in seen:
            raise Unprocessable(
                f"cluster_names: clusters {seen[names[key]]} and {key} would both be called {names[key]!r};"
                " each name may be used once",
                parameter="cluster_names",
            )
        seen[names[key]] = key
    return {key: names[key] for key in sorted(names, key=int)}


def label_names(labels: np.ndarray, names: Mapping[str, str] | None) -> list[str | None] | None:
    """Each label's cluster name (None for an unnamed cluster or -1); None when no cluster is named."""
    if not names:
        return None
    table = np.array([None, *[names.get(str(i)) for i in range(int(np.max(labels, initial=-1)) + 1)]], dtype=object)
    return table[np.asarray(labels, dtype=np.int64) + 1].tolist()


def names_in_document(doc_names: Any, k: int) -> dict[str, str] | None:
    """The ``cluster_names`` of an export document, checked as a patch would be (422 naming them)."""
    if doc_names is None:
        return None
    if not isinstance(doc_names, dict) or not all(isinstance(v, str) for v in doc_names.values()):
        raise Unprocessable("cluster_names must map cluster numbers to names", parameter="cluster_names")
    return merge_names({}, doc_names, k) or None


# -- profiles ----------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite float, or None (a statistic that does not exist or left float64's range)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _difference(cluster_mean: Any, overall_mean: float | None, overall_std: float | None) -> float | None:
    if cluster_mean is None or overall_mean is None or overall_std is None:
        return None
    if overall_std == 0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        return _number((np.float64(cluster_mean) - overall_mean) / overall_std)


def _numeric_stats(column: pd.Series) -> dict[str, float | None]:
    present = column.dropna()
    if present.empty:
        return {"mean": None, "median": None, "std": None}
    with np.errstate(over="ignore", invalid="ignore"):
        return {
            "mean": _number(prep.finite_mean(present.to_numpy())),
            "median": _number(prep.finite_median(present.to_numpy())),
            "std": _number(prep.finite_std(present.to_numpy(), ddof=1)) if len(present) > 1 else None,
        }


def _grouped_stats(column: pd.Series, groups: np.ndarray, k: int) -> list[dict[str, float | None]]:
    """:func:`_numeric_stats` of each of the ``k`` groups, in one vectorized pass; a group whose
    statistics overflow float64 (values near 1.8e308) is computed again, scaled."""
    table = column.groupby(groups).agg(["mean", "median", "std", "count"])
    out: list[dict[str, float | None]] = []
    for c in range(k):
        if c not in table.index or table.at[c, "count"] == 0:
            out.append({"mean": None, "median": None, "std": None})
            continue
        row = table.loc[c]
        count = int(row["count"])
        if not (math.isfinite(row["mean"]) and math.isfinite(row["median"])
                and (count < 2 or math.isfinite(row["std"]))):
            out.append(_numeric_stats(column[groups == c]))
            continue
        out.append({"mean": float(row["mean"]), "median": float(row["median"]),
                    "std": float(row["std"]) if count > 1 else None})
    return out


def _share_sd(share: float) -> float:
    return math.sqrt(share * (1.0 - share))


def profile(
    model: dict[str, Any], values: np.ndarray, codes: np.ndarray | None, labels: np.ndarray
) -> dict[str, Any]:
    """The profile of a fitted model (see the module's docstring) from its dataset's stored
    columns (``values`` numeric, ``codes`` categorical) and its training ``labels``."""
    return named(statistics(model, values, codes, labels), model.get("cluster_names"))


def named(doc: dict[str, Any], names: Mapping[str, str] | None) -> dict[str, Any]:
    """A profile's statistics with the clusters' names and the summary lines built from them."""
    names = names or {}
    clusters = []
    for cluster in doc["clusters"]:
        name = names.get(str(cluster["cluster"]))
        clusters.append({**cluster, "name": name,
                         "summary": _summary(cluster["cluster"], name, cluster["share"], cluster["features"])})
    return {**doc, "clusters": clusters}


def statistics(
    model: dict[str, Any], values: np.ndarray, codes: np.ndarray | None, labels: np.ndarray
) -> dict[str, Any]:
    """:func:`profile` without names (what never changes for a model: it may be kept)."""
    pre = model.get("preprocessing") or {"feature_columns": model["columns"]}
    features = prep.features_of(pre)
    k = len(model.get("cluster_sizes") or []) or int(labels.max()) + 1
    labels = np.asarray(labels, dtype=np.int64)
    clustered = labels >= 0
    kept = labels[clustered]
    n = int(clustered.sum())
    sizes = np.bincount(kept, minlength=k)
    overall: list[dict[str, Any]] = []
    per_cluster: list[list[dict[str, Any]]] = [[] for _ in range(k)]
    for feature in features:
        if feature["type"] == "numeric":
            column = pd.Series(np.asarray(values[:, feature["index"]], dtype=np.float64)[clustered])
            whole = _numeric_stats(column)
            overall.append({"name": feature["name"], "type": "numeric", **whole})
            stats_of = _grouped_stats(column, kept, k)
            for c in range(k):
                stats = stats_of[c]
                per_cluster[c].append({
                    "name": feature["name"], "type": "numeric", **stats,
                    "difference": _difference(stats["mean"], whole["mean"], whole["std"]),
                })
        else:
            cats = list(feature["categories"])
            raw = np.asarray(codes[:, feature["index"]], dtype=np.int64)[clustered]
            has_missing = bool((raw < 0).any())
            shown = [*cats, MISSING] if has_missing else cats
            index = np.where(raw < 0, len(cats), raw)
            width = len(shown)
            counts = np.zeros((k, width), dtype=np.int64)
            np.add.at(counts, (kept, index), 1)
            totals = counts.sum(axis=0)
            overall_share = totals / n if n else np.zeros(width)
            overall.append({
                "name": feature["name"], "type": "categorical",
                "shares": [{"category": shown[j], "share": float(overall_share[j])} for j in range(width)],
            })
            for c in range(k):
                share = counts[c] / sizes[c] if sizes[c] else np.zeros(width)
                rows = []
                for j in range(width):
                    sd = _share_sd(float(overall_share[j]))
                    diff = 0.0 if sd == 0 else _number((share[j] - overall_share[j]) / sd)
                    rows.append({
                        "category": shown[j], "share": float(share[j]), "overall_share": float(overall_share[j]),
                        "difference": diff if sizes[c] else None,
                    })
                top = max((r for r in rows if r["difference"] is not None),
                          key=lambda r: abs(r["difference"]), default=None)
                per_cluster[c].append({
                    "name": feature["name"], "type": "categorical", "categories": rows,
                    "difference": top["difference"] if top else None, "category": top["category"] if top else None,
                })
    clusters = []
    for c in range(k):
        ranked = sorted(per_cluster[c], key=lambda f: -abs(f["difference"]) if f["difference"] is not None else 1)
        for rank, entry in enumerate(ranked, start=1):
            entry["rank"] = rank
        share = float(sizes[c] / n) if n else 0.0
        clusters.append({"cluster": c, "name": None, "size": int(sizes[c]), "share": share, "summary": "",
                         "features": ranked})
    return {
        "model_id": model["id"], "dataset_id": model.get("dataset_id"), "rows": n,
        "rows_left_out": int(len(labels) - n), "n_clusters": k, "overall": overall, "clusters": clusters,
    }


def _label(entry: dict[str, Any]) -> str:
    """How a ranked feature is named: ``income``, or ``segment=gold`` for a category."""
    return entry["name"] if entry["type"] == "numeric" else f"{entry['name']}={entry['category']}"


def _summary(cluster: int, name: str | None, share: float, ranked: list[dict[str, Any]]) -> str:
    """``cluster 2 "savers" (18%): income +1.9 sd, age -0.7 sd``."""
    head = f"cluster {cluster}" + (f' "{name}"' if name else "") + f" ({round(share * 100)}%)"
    top = [e for e in ranked if e["difference"] is not None and round(e["difference"], 1) != 0][:SUMMARY_FEATURES]
    if not top:
        return f"{head}: no feature sets it apart"
    return f"{head}: " + ", ".join(f"{_label(e)} {e['difference']:+.1f} sd" for e in top)


CSV_COLUMNS = ("cluster", "name", "size", "share", "feature", "type", "category", "rank", "mean", "median", "std",
               "cluster_share", "overall_share", "difference")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = repr(value) if isinstance(value, float) else str(value)
    if any(ch in text for ch in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def profile_csv(doc: dict[str, Any]) -> bytes:
    """The profile as one CSV row per cluster and numeric feature, and per cluster, categorical
    feature and category (columns CSV_COLUMNS; empty cells where a value does not apply)."""
    lines = [",".join(CSV_COLUMNS)]
    for cluster in doc["clusters"]:
        head = [cluster["cluster"], cluster["name"], cluster["size"], cluster["share"]]
        for entry in cluster["features"]:
            if entry["type"] == "numeric":
                rows = [[entry["name"], "numeric", None, entry["rank"], entry["mean"], entry["median"], entry["std"],
                         None, None, entry["difference"]]]
            else:
                rows = [[entry["name"], "categorical", c["category"], entry["rank"], None, None, None, c["share"],
                         c["overall_share"], c["difference"]] for c in entry["categories"]]
            lines += [",".join(_cell(v) for v in head + row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def heatmap_matrix(doc: dict[str, Any], limit: int) -> tuple[np.ndarray, list[str], int]:
    """The standardized differences, clusters x features (a categorical feature: a column per
    category), keeping the ``limit`` columns that differ most in some cluster (in the model's
    order); the matrix (NaN where none), the column names, and how many columns there were."""
    columns: list[str] = []
    table: list[list[float]] = []
    for cluster in doc["clusters"]:
        row: dict[str, float] = {}
        for entry in cluster["features"]:
            if entry["type"] == "numeric":
                row[entry["name"]] = entry["difference"]
            else:
                for c in entry["categories"]:
                    row[f"{entry['name']}={c['category']}"] = c["difference"]
        if not columns:
            columns = [_label_of(e, c) for e in sorted(cluster["features"], key=_model_order(doc))
                       for c in (e.get("categories") or [None])]
        table.append([np.nan if row.get(name) is None else row[name] for name in columns])
    matrix = np.asarray(table, dtype=np.float64).reshape(len(doc["clusters"]), len(columns))
    total = len(columns)
    if total > limit:
        strength = np.nan_to_num(np.abs(matrix), nan=0.0).max(axis=0)
        keep = np.sort(np.argsort(-strength, kind="stable")[:limit])
        matrix, columns = matrix[:, keep], [columns[i] for i in keep]
    return matrix, columns, total


def _label_of(entry: dict[str, Any], category: dict[str, Any] | None) -> str:
    return entry["name"] if category is None else f"{entry['name']}={category['category']}"


def _model_order(doc: dict[str, Any]) -> Any:
    order = {f["name"]: i for i, f in enumerate(doc["overall"])}
    return lambda entry: order[entry["name"]]
