"""Choosing k: fit a dataset once per k in ``k_min..k_max`` and compare the fits.

A sweep is a job of the one queue (see :mod:`kmeans.jobs`): it waits its turn, runs in a job
process (or on Dask) under a time limit, can be cancelled, and records each k's result as
it goes. A sweep whose process dies is re-queued and goes on from the k values it had
finished.

Rule for ``recommended_k`` (``rule: "max_silhouette"``): the k with the highest mean
silhouette (ties: the smaller k). Silhouette needs at least two clusters, so a sweep whose
range is only k=1 recommends 1 (``rule: "only_k"``).
"""

from __future__ import annotations

import time
from typing import Any

from kmeans import engine, fitjob
from kmeans.errors import Unprocessable
from kmeans.store import Store, new_id, now

MAX_VALUES = 50


def recommend(results: list[dict[str, Any]]) -> tuple[int | None, str]:
    """(recommended k, rule) from per-k results."""
    scored = [r for r in results if r.get("silhouette") is not None]
    if scored:
        best = max(scored, key=lambda r: (r["silhouette"], -r["k"]))
        return best["k"], "max_silhouette"
    if len(results) == 1:
        return results[0]["k"], "only_k"
    return None, "max_silhouette"


def check_range(dataset: dict[str, Any], k_min: int, k_max: int) -> None:
    """Unprocessable (naming the parameter) unless ``k_min..k_max`` is a range a sweep can fit."""
    if k_min > k_max:
        raise Unprocessable(f"k_min ({k_min}) is larger than k_max ({k_max})", parameter="k_min")
    if k_max - k_min + 1 > MAX_VALUES:
        raise Unprocessable(
            f"a sweep fits at most {MAX_VALUES} values of k; k_min..k_max has {k_max - k_min + 1}",
            parameter="k_max",
        )
    if k_max > dataset["rows"]:
        raise Unprocessable(
            f"k_max ({k_max}) is larger than the number of rows ({dataset['rows']}) of dataset {dataset['id']}",
            parameter="k_max",
        )


def new_record(
    dataset: dict[str, Any], k_min: int, k_max: int, params: dict[str, Any], pre: dict[str, Any], **job: Any
) -> dict[str, Any]:
    """The record of a queued sweep (``job``: time_limit, callback_url, callback_secret)."""
    stamp = now()
    return {
        "id": new_id("sw"),
        "dataset_id": dataset["id"],
        "status": "queued",
        "k_min": k_min,
        "k_max": k_max,
        "params": params,
        "preprocessing": pre,
        "results": [],
        "recommended_k": None,
        "rule": None,
        "error": None,
        "progress": 0.0,
        "phase": "queued",
        "created_at": stamp,
        "queued_at": stamp,
        "project": dataset["project"],
        **job,
    }


def run(store: Store, sweep: dict[str, Any], job: fitjob.JobRun) -> str:
    """Fit every k of a sweep not fitted yet (a re-queued sweep goes on where it was), recording
    each k's metrics as it goes; returns how it ended."""
    params = sweep["params"]
    values, codes = store.dataset_arrays(sweep["dataset_id"])
    space, _, weights, _ = fitjob.prepare(values, params, sweep["preprocessing"], codes)
    if len(space) < sweep["k_max"]:  # drop_rows left fewer rows than the largest k
        raise Unprocessable(
            f"k_max ({sweep['k_max']}) is larger than the {len(space)} rows left after leaving out rows with"
            " missing values"
        )
    ks = list(range(sweep["k_min"], sweep["k_max"] + 1))
    results = [r for r in sweep.get("results") or [] if r["k"] in ks]
    done = {r["k"] for r in results}
    for i, k in enumerate(ks):
        if k in done:
            continue

        def progress(fraction: float, phase: str, i: int = i, k: int = k) -> None:
            job.progress((i + fraction) / len(ks), f"k={k}: {phase}")

        clock = time.perf_counter()
        result = engine.fit(space, {**params, "n_clusters": k}, progress, sample_weight=weights)
        quality = engine.quality(space, result.labels, params.get("random_state"))
        results.append(
            {
                "k": k,
                "inertia": result.inertia,
                "n_iter": result.n_iter,
                **quality,
                "fit_seconds": round(time.perf_counter() - clock, 6),
            }
        )
        results.sort(key=lambda r: r["k"])
        job.update(results=results, progress=round(len(results) / len(ks), 4), phase=f"k={k} done")
    k, rule = recommend(results)
    job.update(status="succeeded", finished_at=now(), recommended_k=k, rule=rule, progress=1.0, phase="done")
    return "succeeded"
