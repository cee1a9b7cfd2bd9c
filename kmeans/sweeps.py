"""Choosing k: fit a dataset once per k in ``k_min..k_max`` and compare the fits.

A sweep runs in a background thread of the API process that accepted it (a request never
waits for it) and records each k's result in the ``sweeps`` table as it goes, so any process
can report on it. If that process stops, the sweep is marked failed the next time it is read
on the same host (it is not resumed).

Rule for ``recommended_k`` (``rule: "max_silhouette"``): the k with the highest mean
silhouette (ties: the smaller k). Silhouette needs at least two clusters, so a sweep whose
range is only k=1 recommends 1 (``rule: "only_k"``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from kmeans import access, engine, fitjob, prep
from kmeans.errors import ProblemError, Unprocessable
from kmeans.schema import of_dataset as schema_of
from kmeans.store import Store, new_id, now

log = logging.getLogger(__name__)

MAX_VALUES = 50
MAX_RUNNING = 2  # sweeps running at once per process; the others wait their turn
ACTIVE = ("queued", "running")


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recommend(results: list[dict[str, Any]]) -> tuple[int | None, str]:
    """(recommended k, rule) from per-k results."""
    scored = [r for r in results if r.get("silhouette") is not None]
    if scored:
        best = max(scored, key=lambda r: (r["silhouette"], -r["k"]))
        return best["k"], "max_silhouette"
    if len(results) == 1:
        return results[0]["k"], "only_k"
    return None, "max_silhouette"


class Sweeps:
    """Sweeps stored next to the models, run in threads of this process."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._slots = threading.BoundedSemaphore(MAX_RUNNING)

    # -- records ----------------------------------------------------------------------------

    def _update(self, sweep_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        args = tuple(json.dumps(v) if isinstance(v, (dict, list)) else v for v in fields.values())
        with self.store.transaction() as db:
            db.execute(f"UPDATE sweeps SET {sets} WHERE id = ?", (*args, sweep_id))

    def _record(self, sweep_id: str) -> dict[str, Any] | None:
        return self.store._one("SELECT * FROM sweeps WHERE id = ?", (sweep_id,))

    def get(self, sweep_id: str) -> dict[str, Any]:
        """One sweep the caller may see."""
        return self._checked(access.visible(self._record(sweep_id), "sweep", sweep_id))

    def _checked(self, record: dict[str, Any]) -> dict[str, Any]:
        """Fail a sweep whose process on this host is gone."""
        worker = record.get("worker") or ""
        host, _, pid = worker.rpartition(":")
        if record["status"] in ACTIVE and host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            error = {"detail": "the server process running this sweep stopped; create it again"}
            self._update(record["id"], status="failed", error=error, finished_at=now())
            record = {**record, "status": "failed", "error": error}
        return record

    def list(
        self, offset: int, limit: int, dataset_id: str | None = None, project: str | None = None
    ) -> dict[str, Any]:
        pairs = (("dataset_id", dataset_id), ("project", access.current().scope(project)))
        where = {k: v for k, v in pairs if v}
        items, total = self.store._page("sweeps", where, offset, limit)
        return {"items": [self._checked(i) for i in items], "offset": offset, "limit": limit, "total": total}

    # -- running ----------------------------------------------------------------------------

    def create(self, dataset: dict[str, Any], k_min: int, k_max: int, params: dict[str, Any] | None) -> dict[str, Any]:
        """Check and queue a sweep; it starts in a background thread."""
        params = dict(params or {})
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
        pre = prep.plan(params, schema_of(dataset), sweep=True)
        if pre["weight_index"] is not None:
            prep.weights(self.store.load_array(self.store.dataset_path(dataset["id"]), mmap=True), pre)
        record = {
            "id": new_id("sw"),
            "dataset_id": dataset["id"],
            "status": "queued",
            "k_min": k_min,
            "k_max": k_max,
            "params": params,
            "results": [],
            "recommended_k": None,
            "rule": None,
            "error": None,
            "progress": 0.0,
            "worker": _worker(),
            "created_at": now(),
            "project": dataset["project"],
        }
        keys = list(record)
        with self.store.transaction() as db:
            db.execute(
                f"INSERT INTO sweeps ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                tuple(json.dumps(v) if isinstance(v, (dict, list)) else v for v in record.values()),
            )
        threading.Thread(target=self._run, args=(record["id"], pre), name="kmeans-sweep", daemon=True).start()
        return self.get(record["id"])

    def _run(self, sweep_id: str, pre: dict[str, Any]) -> None:
        with self._slots:
            try:
                self._sweep(sweep_id, pre)
            except ProblemError as exc:  # the data, not the server: the detail says what is wrong
                self._update(sweep_id, status="failed", finished_at=now(), error={"detail": exc.detail})
            except Exception as exc:  # the failure belongs to the sweep
                log.exception("sweep %s failed", sweep_id)
                self._update(
                    sweep_id, status="failed", finished_at=now(), error={"detail": f"{type(exc).__name__}: {exc}"}
                )

    def _sweep(self, sweep_id: str, pre: dict[str, Any]) -> None:
        sweep = self._record(sweep_id)  # in its own thread: no caller to check
        self._update(sweep_id, status="running", started_at=now())
        params = sweep["params"]
        values, codes = self.store.dataset_arrays(sweep["dataset_id"])
        space, pre, weights, _ = fitjob.prepare(values, params, pre, codes)
        if len(space) < sweep["k_max"]:  # drop_rows left fewer rows than the largest k
            raise Unprocessable(
                f"k_max ({sweep['k_max']}) is larger than the {len(space)} rows left after leaving out rows with"
                " missing values"
            )
        ks = list(range(sweep["k_min"], sweep["k_max"] + 1))
        results: list[dict[str, Any]] = []
        for i, k in enumerate(ks):
            clock = time.perf_counter()
            result = engine.fit(space, {**params, "n_clusters": k}, None, sample_weight=weights)
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
            self._update(sweep_id, results=results, progress=round((i + 1) / len(ks), 4))
        k, rule = recommend(results)
        self._update(sweep_id, status="succeeded", finished_at=now(), recommended_k=k, rule=rule, progress=1.0)


def sweeps_of(service: Any) -> Sweeps:
    """The Sweeps of a KMeansService (made on first use)."""
    sweeps = getattr(service, "_sweeps", None)
    if sweeps is None:
        sweeps = service._sweeps = Sweeps(service.store)
    return sweeps
