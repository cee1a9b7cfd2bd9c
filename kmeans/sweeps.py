"""Choosing k: fit a dataset once per k in ``k_min..k_max`` and compare the fits.

A sweep is a job of the one queue (see :mod:`kmeans.jobs`): it waits its turn, runs in a job
process (or on Dask) under a time limit, can be cancelled, and records each k's result as
it goes. A sweep whose process dies is re-queued and goes on from the k values it had
finished.

How ``recommended_k`` is chosen (``rule``; the default ``consensus``):

- ``consensus``: each measure votes for one k -- the highest silhouette, the highest
  Calinski-Harabasz, the lowest Davies-Bouldin, and the inertia elbow (the inner k whose drop
  in inertia from k-1 is the largest multiple, at least ELBOW_RATIO (2), of its drop to k+1).
  The k with the most votes wins; ties go to the higher silhouette, then the smaller k. With
  ``stability_runs``, a k whose mean adjusted Rand index between runs is below
  ``STABLE_ARI`` (0.75) cannot win while some k reaches it.
- ``max_silhouette``, ``max_calinski_harabasz``, ``min_davies_bouldin``, ``elbow``: that measure
  alone; ``max_stability``: the highest mean ARI between runs (k >= 2; ties: the larger k).
- ``only_k``: a range of one k.

``runner_up`` is the next k by the same ordering. ``stability_runs`` refits each k that many
more times, each on a bootstrap resample of the rows with seed ``random_state + r``, labels every
row with each run's centers, and reports per k the mean and standard deviation of the adjusted
Rand index over all pairs of runs (the main fit included), on a seeded sample of at most
``STABILITY_SAMPLE`` rows.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score

from kmeans import engine, fitjob, prep
from kmeans.errors import Unprocessable
from kmeans.store import Store, new_id, now

MAX_VALUES = 50


RULES = ("consensus", "max_silhouette", "max_calinski_harabasz", "min_davies_bouldin", "elbow", "max_stability")
STABLE_ARI = 0.75
STABILITY_SAMPLE = 10_000
# An unscaled feature whose spread is this many times another's decides the clusters alone.
SCALE_RATIO = 100.0


ELBOW_RATIO = 2.0


def elbow(results: list[dict[str, Any]]) -> int | None:
    """The inner k whose drop in inertia from k-1 is the largest multiple of the drop to k+1, if
    that multiple is at least ELBOW_RATIO (None: fewer than three k, or no such bend)."""
    ks = [r["k"] for r in results]
    inertia = [float(r["inertia"]) for r in results]
    if len(ks) < 3:
        return None
    best, best_ratio = None, ELBOW_RATIO
    floor = 1e-12 * max(abs(inertia[0]), 1e-300)  # a flat stretch after k: a sharp bend, not a division by 0
    for i in range(1, len(ks) - 1):
        into, after = inertia[i - 1] - inertia[i], inertia[i] - inertia[i + 1]
        ratio = into / max(after, floor) if into > 0 else 0.0
        if ratio >= best_ratio and (best is None or ratio > best_ratio):
            best, best_ratio = ks[i], ratio
    return best


def _stability(r: dict[str, Any]) -> float | None:
    return (r.get("stability") or {}).get("mean")


def recommend(results: list[dict[str, Any]], rule: str = "consensus") -> dict[str, Any]:
    """``{"recommended_k", "rule", "runner_up", "votes"}`` from per-k results under ``rule``."""
    if len(results) == 1:
        return {"recommended_k": results[0]["k"], "rule": "only_k", "runner_up": None, "votes": {}}
    scored = [r for r in results if r.get("silhouette") is not None]
    silhouette = {r["k"]: r["silhouette"] for r in scored}

    def ranked(key: Any) -> list[int]:
        return [r["k"] for r in sorted(scored, key=key)]

    votes: dict[str, int | None] = {}
    if scored:
        votes["max_silhouette"] = ranked(lambda r: (-r["silhouette"], r["k"]))[0]
        votes["max_calinski_harabasz"] = ranked(lambda r: (-r["calinski_harabasz"], r["k"]))[0]
        votes["min_davies_bouldin"] = ranked(lambda r: (r["davies_bouldin"], r["k"]))[0]
    votes["elbow"] = elbow(results)
    stable = [r for r in scored if _stability(r) is not None]
    if stable:
        votes["max_stability"] = [r["k"] for r in sorted(stable, key=lambda r: (-_stability(r), -r["k"]))][0]
    if rule == "consensus":
        count = {r["k"]: 0 for r in results}
        for measure, k in votes.items():
            if k is not None and measure != "max_stability":
                count[k] += 1
        allowed = {r["k"] for r in stable if _stability(r) >= STABLE_ARI} or set(count)
        order = sorted(count, key=lambda k: (k not in allowed, -count[k], -silhouette.get(k, -2.0), k))
        order = [k for k in order if count[k] or k in silhouette]
    else:
        key = {
            "max_silhouette": lambda r: (-r["silhouette"], r["k"]),
            "max_calinski_harabasz": lambda r: (-r["calinski_harabasz"], r["k"]),
            "min_davies_bouldin": lambda r: (r["davies_bouldin"], r["k"]),
            "max_stability": lambda r: (-(_stability(r) or 0.0), -r["k"]),
        }.get(rule)
        if rule == "elbow":
            first = votes["elbow"]
            rest = [r["k"] for r in sorted(results, key=lambda r: r["k"]) if r["k"] != first]
            order = ([first] if first is not None else []) + rest
        else:
            order = ranked(key) if rule != "max_stability" else [r["k"] for r in sorted(stable, key=key)]
    return {
        "recommended_k": order[0] if order else None,
        "rule": rule,
        "runner_up": order[1] if len(order) > 1 else None,
        "votes": {measure: k for measure, k in votes.items() if k is not None},
    }


def scale_warnings(space: np.ndarray, pre: dict[str, Any], standardize: bool) -> list[str]:
    """A warning when, unscaled, one numeric feature spreads SCALE_RATIO times as wide as another."""
    names = [f["name"] for f in prep.features_of(pre) if f["type"] == "numeric"]
    if standardize or pre.get("distance") == "cosine" or len(names) < 2 or not len(space):
        return []
    spread = space[:, : len(names)].std(axis=0)
    wide, narrow = int(np.argmax(spread)), float(spread[spread > 0].min(initial=np.inf))
    if not np.isfinite(narrow) or spread[wide] < SCALE_RATIO * narrow:
        return []
    return [
        f"column {names[wide]!r} spreads {spread[wide] / narrow:.0f} times as wide as the narrowest feature, so it"
        " alone decides the clusters; fit with standardize: true unless that is meant"
    ]


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
        "runner_up": None,
        "votes": None,
        "warnings": None,
        "error": None,
        "progress": 0.0,
        "phase": "queued",
        "created_at": stamp,
        "queued_at": stamp,
        "project": dataset["project"],
        **job,
    }


def stability(
    space: np.ndarray, params: dict[str, Any], k: int, labels: np.ndarray, runs: int,
    weights: np.ndarray | None, progress: Any,
) -> dict[str, Any]:
    """Mean and spread of the ARI between ``runs`` bootstrap refits and the main fit (every pair)."""
    seed = int(params.get("random_state") or 0)
    sample = np.random.default_rng(seed).permutation(len(space))[:STABILITY_SAMPLE]
    labellings = [labels[sample]]
    for r in range(1, runs + 1):
        progress(r / (runs + 1), f"stability run {r} of {runs}")
        rows = np.random.default_rng(seed + r).integers(0, len(space), len(space))
        refit = engine.fit(space[rows], {**params, "n_clusters": k, "random_state": seed + r},
                           sample_weight=None if weights is None else weights[rows])
        labellings.append(engine.predict(refit.centers, space[sample]))
    scores = [adjusted_rand_score(a, b) for i, a in enumerate(labellings) for b in labellings[i + 1 :]]
    return {"mean": round(float(np.mean(scores)), 6), "std": round(float(np.std(scores)), 6), "runs": runs}


def run(store: Store, sweep: dict[str, Any], job: fitjob.JobRun) -> str:
    """Fit every k of a sweep not fitted yet (a re-queued sweep goes on where it was), recording
    each k's metrics as it goes; returns how it ended."""
    params = sweep["params"]
    runs = int(sweep.get("stability_runs") or 0)
    values, codes = store.dataset_arrays(sweep["dataset_id"])
    space, pre, weights, _ = fitjob.prepare(values, params, sweep["preprocessing"], codes)
    if len(space) < sweep["k_max"]:  # drop_rows left fewer rows than the largest k
        raise Unprocessable(
            f"k_max ({sweep['k_max']}) is larger than the {len(space)} rows left after leaving out rows with"
            " missing values"
        )
    ks = list(range(sweep["k_min"], sweep["k_max"] + 1))
    results = [r for r in sweep.get("results") or [] if r["k"] in ks]
    done = {r["k"] for r in results}
    share = 1.0 / (runs + 1)  # of each k's progress: the main fit's, then the stability runs'
    for i, k in enumerate(ks):
        if k in done:
            continue

        def progress(fraction: float, phase: str, i: int = i, k: int = k) -> None:
            job.progress((i + fraction) / len(ks), f"k={k}: {phase}")

        clock = time.perf_counter()
        result = engine.fit(space, {**params, "n_clusters": k}, lambda f, p: progress(f * share, p),
                            sample_weight=weights)
        quality = engine.quality(space, result.labels, params.get("random_state"))
        entry = {"k": k, "inertia": result.inertia, "n_iter": result.n_iter, **quality}
        if runs:
            entry["stability"] = stability(
                space, params, k, result.labels, runs, weights, lambda f, p: progress(share + f * (1 - share), p)
            )
        entry["fit_seconds"] = round(time.perf_counter() - clock, 6)
        results.append(entry)
        results.sort(key=lambda r: r["k"])
        job.update(results=results, progress=round(len(results) / len(ks), 4), phase=f"k={k} done")
    chosen = recommend(results, sweep.get("rule_requested") or "consensus")
    job.update(
        status="succeeded", finished_at=now(), progress=1.0, phase="done",
        warnings=scale_warnings(space, pre, bool(params.get("standardize"))), **chosen,
    )
    return "succeeded"
