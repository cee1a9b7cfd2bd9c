"""One job (a fit, a sweep or an evaluation), start to finish, in whatever process runs it: a local child
process or a Dask worker.

It talks to the rest of the service only through the data dir: it reads the job and the
dataset, writes progress while it runs, and writes the result only if its run still owns
the job (``run_token``): a job that was cancelled, timed out or re-queued elsewhere
meanwhile leaves no trace.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from kmeans import engine, prep
from kmeans.errors import (
    OUT_OF_SPACE,
    DeliveryFailed,
    EvaluationFailed,
    FitFailed,
    ProblemError,
    ScoringFailed,
    SweepFailed,
    out_of_space,
)
from kmeans.store import Store, now, process_alive

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.25  # seconds between progress writes
CHECK_EVERY = 0.5  # seconds between checks for cancellation (cooperative mode)
OWNER_CHECK_EVERY = 0.5  # seconds between checks that the server that started a fit still runs
IDLE_SECONDS = 60.0  # a local fit process with no next fit for this long exits
REUSABLE = ("succeeded", "failed", "skipped")  # after these a local fit process takes the next fit


class Stopped(Exception):
    """The run no longer owns the model (cancelled, deleted, re-queued)."""


class TimeLimitExceeded(Exception):
    """The fit ran longer than its time limit."""


# The problem a failed job of each kind records.
FAILED = {
    "fit": FitFailed, "sweep": SweepFailed, "webhook": DeliveryFailed, "evaluation": EvaluationFailed,
    "scoring": ScoringFailed,
}
WHAT = {"fit": "fit", "sweep": "sweep", "webhook": "delivery", "evaluation": "evaluation", "scoring": "scoring"}


def time_limit_problem(limit: float, kind: str = "fit") -> dict:
    """The error a job gets when it runs out of time."""
    advice = "fewer n_init/max_iter" + (" or a narrower k range" if kind == "sweep" else "")
    if kind in ("evaluation", "scoring"):
        advice = "a smaller dataset"
    return FAILED[kind](
        f"the {WHAT[kind]} exceeded its time limit of {limit:g} s and was stopped; give it a larger time_limit or"
        f" {advice}"
    ).to_problem()


class JobRun:
    """What a running job may do: report progress, and learn that it must stop.

    ``cooperative``: there is no process to kill (a Dask task), so the job itself checks for
    cancellation and its time limit whenever it reports progress.
    """

    def __init__(
        self, store: Store, kind: str, job_id: str, run_token: str, time_limit: float | None, cooperative: bool
    ) -> None:
        self.store, self.kind, self.job_id, self.run_token = store, kind, job_id, run_token
        self.time_limit, self.cooperative = time_limit, cooperative
        self.started = time.monotonic()
        self._last_write = self._last_check = 0.0

    def progress(self, fraction: float, phase: str) -> None:
        """Record progress (at most every PROGRESS_EVERY s); raises Stopped or TimeLimitExceeded."""
        moment = time.monotonic()
        if self.cooperative and moment - self._last_check >= CHECK_EVERY:
            self._last_check = moment
            if self.time_limit and moment - self.started > self.time_limit:
                raise TimeLimitExceeded
            current = self.store.get_job(self.kind, self.job_id)
            if current is None or current["status"] != "running" or current["run_token"] != self.run_token:
                raise Stopped
        if moment - self._last_write >= PROGRESS_EVERY:
            self._last_write = moment
            self.update(progress=round(fraction, 4), phase=phase)

    def update(self, **fields: object) -> None:
        """Write ``fields`` to the job if this run still owns it; else raise Stopped."""
        if not self.store.update_job(self.kind, self.job_id, ("running",), self.run_token, **fields):
            raise Stopped


def execute(
    data_dir: str, kind: str, job_id: str, run_token: str, time_limit: float | None, cooperative: bool
) -> str:
    """Run the job ``(kind, job_id)`` for the run ``run_token``; returns how it ended."""
    store = Store(Path(data_dir))
    job = store.get_job(kind, job_id)
    if job is None or job["status"] != "running" or job["run_token"] != run_token:
        return "skipped"
    run = JobRun(store, kind, job_id, run_token, time_limit, cooperative)
    failed = FAILED[kind]
    try:
        return _runner(kind)(store, job, run)
    except Stopped:
        return "stopped"
    except TimeLimitExceeded:
        store.update_job(
            kind, job_id, ("running",), run_token, status="failed", finished_at=now(), phase="time limit exceeded",
            error=time_limit_problem(time_limit, kind),
        )
        return "timed out"
    except Exception as exc:  # the job's failure belongs to its resource, not to the process
        log.exception("%s %s failed", kind, job_id)
        if out_of_space(exc):
            detail = f"the {WHAT[kind]} could not store its result: {OUT_OF_SPACE}"
        elif isinstance(exc, FileNotFoundError):
            detail = f"the dataset's data file is missing; it was deleted before the {WHAT[kind]} started"
        elif isinstance(exc, ProblemError):
            detail = exc.detail
        elif isinstance(exc, ValueError):
            detail = str(exc)
        else:
            detail = f"the {WHAT[kind]} failed: {type(exc).__name__}: {exc}"
        store.update_job(
            kind, job_id, ("running",), run_token, status="failed", finished_at=now(), phase="failed",
            error=failed(detail).to_problem(),
        )
        return "failed"


def _runner(kind: str) -> Callable[[Store, dict, JobRun], str]:
    if kind == "sweep":
        from kmeans import sweeps  # sweeps use this module's preprocessing

        return sweeps.run
    if kind == "evaluation":
        from kmeans import evaluate

        return evaluate.run
    if kind == "scoring":
        from kmeans import scorejob  # batch scoring: a job kind of its own module

        return scorejob.run
    return run_fit


class _Checkpoints:
    """Saves a KMeans fit's centers as it goes (at most every PROGRESS_EVERY s), so that a
    paused fit can resume from them."""

    def __init__(self, store: Store, path: Path) -> None:
        self.store, self.path = store, path
        self._last = 0.0

    def __call__(self, centers: Callable[[], np.ndarray]) -> None:
        moment = time.monotonic()
        if moment - self._last >= PROGRESS_EVERY:
            self._last = moment
            self.store.save_array(self.path, centers())  # atomic: a kill leaves the previous one


def run_fit(store: Store, model: dict, run: JobRun) -> str:
    """Fit a model and store its result (if its run still owns it); returns how it ended.

    A resumed fit starts from the centers its paused run saved (``checkpoint.run``); this run
    saves its own checkpoints under its own token."""
    paused_run = (model.get("checkpoint") or {}).get("run")
    saved = store.checkpoint_path(model["id"], paused_run) if paused_run else None
    start = Store.load_array(saved) if saved is not None and saved.exists() else None
    own = store.checkpoint_path(model["id"], run.run_token)
    saver = _Checkpoints(store, own) if engine.can_checkpoint(model["params"]) else None
    clock = time.perf_counter()
    fitted = prepared_fit(store, model, run.progress, start=start, checkpoint=saver)
    seconds = time.perf_counter() - clock
    result = fitted.result
    sizes = np.bincount(result.labels[result.labels >= 0], minlength=result.centers.shape[0])
    done = store.finish_model(
        model["id"],
        run.run_token,
        result.centers,
        result.labels,
        finished_at=now(),
        fit_seconds=round(seconds, 6),
        inertia=result.inertia,
        n_iter=result.n_iter,
        cluster_sizes=sizes.tolist(),
        progress=1.0,
        phase="done",
        preprocessing=fitted.preprocessing,
        anomaly_threshold=fitted.threshold,
        **fitted.metrics,
    )
    return "succeeded" if done else "stopped"


@dataclass(frozen=True)
class PreparedFit:
    result: engine.FitResult
    preprocessing: dict
    metrics: dict
    threshold: float | None


def prepared_fit(
    store: Store,
    model: dict,
    progress: engine.Progress | None = None,
    start: np.ndarray | None = None,
    checkpoint: engine.Checkpoint | None = None,
) -> PreparedFit:
    """Select, weigh, scale and normalise the dataset as the model's options say, fit, and
    measure: the metrics and the contamination threshold are in the fitted space."""
    params = model["params"]
    pre = model["preprocessing"]
    values, codes = store.dataset_arrays(model["dataset_id"])
    return fit_values(values, params, pre, progress, codes=codes, start=start, checkpoint=checkpoint)


def prepare(
    values: np.ndarray, params: dict, pre: dict, codes: np.ndarray | None = None
) -> tuple[np.ndarray, dict, np.ndarray | None, np.ndarray | None]:
    """Dataset rows -> (the fitted space, ``pre`` with its statistics, the sample weights, the
    rows kept): the one preprocessing of fits and sweeps."""
    weights = prep.weights(values, pre)
    design, pre, kept = prep.dataset_design(values, codes, pre)
    if kept is not None and weights is not None:
        weights = weights[kept]
    pre = prep.fit_scaler(design, pre, bool(params.get("standardize")))
    fitted = prep.transform(design, pre)
    prep.check_fit_space(fitted, pre, weights)
    return fitted, pre, weights, kept


def fit_values(
    values: np.ndarray,
    params: dict,
    pre: dict,
    progress: engine.Progress | None = None,
    metrics: bool = True,
    codes: np.ndarray | None = None,
    start: np.ndarray | None = None,
    checkpoint: engine.Checkpoint | None = None,
) -> PreparedFit:
    """The fit of dataset rows ``values`` with the options ``params`` and the plan ``pre``;
    with ``start`` (centers in the fitted space: a checkpoint), one run from those centers."""
    fitted_space, pre, weights, kept = prepare(values, params, pre, codes)
    if len(fitted_space) < prep.n_clusters(params):
        raise FitFailed(
            f"n_clusters ({prep.n_clusters(params)}) is larger than the {len(fitted_space)} rows left"
            " after leaving out rows with missing values"
        )
    fit_params = dict(params)
    if start is not None:
        fit_params.update(init=np.asarray(start, dtype=np.float64).tolist(), n_init=1)
    elif isinstance(params.get("init"), list):
        fit_params["init"] = prep.transform(np.asarray(params["init"], dtype=np.float64), pre).tolist()
    # A matrix the preprocessing made (not the dataset's memory map) is this fit's own.
    owned = (
        fitted_space.dtype == np.float64 and fitted_space.flags.c_contiguous and fitted_space.flags.writeable
        and not np.may_share_memory(fitted_space, values)
    )
    result = engine.fit(
        fitted_space, fit_params, progress, sample_weight=weights, checkpoint=checkpoint, owned=owned
    )
    quality = engine.quality(fitted_space, result.labels, params.get("random_state")) if metrics else {}
    threshold = None
    if params.get("contamination") is not None:
        own = np.linalg.norm(fitted_space - result.centers[result.labels], axis=1)
        threshold = float(np.quantile(own, 1.0 - params["contamination"]))
    if kept is not None:  # rows left out (a missing value) are labelled -1
        labels = np.full(len(kept), -1, dtype=result.labels.dtype)
        labels[kept] = result.labels
        result = dataclasses.replace(result, labels=labels)
    return PreparedFit(result, pre, quality, threshold)


def _watch_owner(owner: int) -> None:
    """Exit as soon as the server process that started this fit is gone.

    A fit must not outlive its server: if that process is killed, the heartbeat sweep
    re-queues the model elsewhere. The kernel's parent-death signal does not help here:
    the parent of a fit is the forkserver, which itself waits for its children.
    """
    while process_alive(owner):
        time.sleep(OWNER_CHECK_EVERY)
    os._exit(1)


def _reuse_freed_memory() -> None:
    """Have glibc's malloc keep freed blocks of up to 32 MiB for reuse (its largest setting)
    instead of unmapping them, in this short-lived fit process.

    k-means++ and the Lloyd iterations allocate and free temporaries of up to 32 MB (a few
    candidate centers' distances to every row) again and again. By default glibc maps each
    anew until its threshold has adapted, and every page of every mapping is a page fault:
    a fit process's first fit took twice the page faults of its second one, and longer.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: its own defaults apply
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    mallopt(m_trim_threshold, 512 * 1024 * 1024)


def child_main(data_dir: str, jobs: Connection, owner: int) -> None:
    """Entry point of a local fit process; ``owner`` is the pid of the server process.

    It runs the jobs ``(kind, job_id, run_token)`` that arrive on ``jobs`` one after the other,
    answering each with how it ended, and exits when none came for IDLE_SECONDS, the server
    hung up, or a fit was stopped. A process's first fit is its slow one (1M x 8: 0.44-0.74 s,
    where its next fits took 0.35-0.45 s), so a process is kept for the next fit.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _reuse_freed_memory()
    engine.use_all_cpus()
    if Path("/proc").is_dir():
        threading.Thread(target=_watch_owner, args=(owner,), name="kmeans-owner-watch", daemon=True).start()
    try:
        while jobs.poll(IDLE_SECONDS):
            kind, job_id, run_token = jobs.recv()
            outcome = execute(data_dir, kind, job_id, run_token, None, cooperative=False)
            jobs.send(outcome)
            if outcome not in REUSABLE:  # stopped (cancelled, deleted, taken over): as if killed
                break
    except (EOFError, OSError):  # the server closed its end: nothing more will come
        pass
