"""Where background work runs: one queue in the database, and a dispatcher in every server process.

Every kind of job -- a fit, a sweep, a webhook delivery -- is a row with the same lifecycle
(queued -> running -> succeeded / failed / cancelled; a fit may also be paused), and the
``jobs`` view of the store is the queue over all of them. A job is ``queued`` until some
process's dispatcher claims it, atomically, in the store's fair order (first-in first-out
within a project, round-robin between projects), and only while fewer than
``max_concurrent_fits`` fits and sweeps run across all processes that share the data dir.
The claimant runs a fit or sweep in a separate process (locally, or as a task on a Dask
cluster) and a delivery in a thread (it waits on the network, not the CPU); it beats a
heartbeat for it, kills it when it is cancelled or runs out of time, and re-queues it if the
process running it died (no heartbeat). Nothing about a job lives only in memory, so any
process can report on, cancel or recover any job.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any, Protocol

from kmeans import fitjob
from kmeans.errors import FitFailed
from kmeans.store import Store, now

log = logging.getLogger(__name__)

TICK = 0.2  # seconds between dispatcher rounds (a local submission wakes it at once)
BEAT_EVERY = 1.0
SWEEP_EVERY = 2.0
MAX_ATTEMPTS = 2  # a fit whose process dies is re-queued once, then marked failed
REUSE_MARGIN = 10.0  # seconds: an idle fit process is reused only this long before it would exit


def worker_name() -> str:
    """Who runs a fit: ``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


Key = tuple[str, str]  # (kind, id) of a job


class Run(Protocol):
    """A job in progress somewhere."""

    def done(self) -> bool: ...

    def stop(self) -> None: ...

    def outcome(self) -> str: ...


class Launcher(Protocol):
    def start(self, job: dict[str, Any]) -> Run: ...

    def close(self) -> None: ...


class LocalRun:
    """A fit in a child process of this server process (which may have run fits before)."""

    def __init__(self, process: multiprocessing.Process, jobs: Connection) -> None:
        self.process = process
        self.jobs = jobs
        self.ended: str | None = None  # how execute() said the fit ended, once it has
        self.ended_at = 0.0

    def done(self) -> bool:
        if self.ended is None:
            try:
                if self.jobs.poll():
                    self.ended, self.ended_at = self.jobs.recv(), time.monotonic()
            except (EOFError, OSError):  # the process is gone
                pass
        return self.ended is not None or not self.process.is_alive()

    def reusable(self) -> bool:
        """Whether the process finished this fit and waits for the next one, well within the
        time it waits (a fit sent to a process that is just exiting would be lost)."""
        idle = time.monotonic() - self.ended_at
        return self.ended in fitjob.REUSABLE and idle < fitjob.IDLE_SECONDS - REUSE_MARGIN and self.process.is_alive()

    def stop(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)

    def outcome(self) -> str:
        if self.ended is not None:
            return "exited normally"
        code = self.process.exitcode
        return "exited normally" if code == 0 else f"ended with exit code {code}"


class LocalLauncher:
    """Fits in child processes forked from a server that has numpy and scikit-learn loaded,
    so a fit starts in milliseconds and can be killed for real. A process whose fit is done
    runs the next one (see :func:`kmeans.fitjob.child_main`); a killed one is replaced."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(
            ["kmeans.fitjob", "kmeans.sweeps", "kmeans.evaluate", "kmeans.scorejob", "kmeans.fitwarm"]
        )
        self._runs: list[LocalRun] = []  # the latest run of each fit process
        # Start the fork server (it imports numpy and scikit-learn and warms them up, ~2 s)
        # now, in the background, rather than when the first fit is waiting for it.
        threading.Thread(target=forkserver.ensure_running, name="kmeans-forkserver", daemon=True).start()

    def start(self, record: dict[str, Any]) -> LocalRun:
        job = (record["kind"], record["id"], record["run_token"])
        for run in list(self._runs):
            if not run.done():
                continue
            self._runs.remove(run)
            if run.reusable():
                try:
                    run.jobs.send(job)
                    return self._track(LocalRun(run.process, run.jobs))
                except OSError:  # it exited (idle for too long) just now
                    pass
            run.jobs.close()
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=fitjob.child_main,
            args=(self.data_dir, theirs, os.getpid()),
            name="kmeans-fit",
            daemon=True,
        )
        process.start()
        theirs.close()
        ours.send(job)
        return self._track(LocalRun(process, ours))

    def _track(self, run: LocalRun) -> LocalRun:
        self._runs.append(run)
        return run

    def close(self) -> None:
        """Let the waiting fit processes go (they exit when their pipe closes)."""
        for run in self._runs:
            run.jobs.close()
        self._runs.clear()


class DaskRun:
    """A fit running as a task on a Dask cluster; it stops itself at the next iteration."""

    def __init__(self, future: Any) -> None:
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def stop(self) -> None:
        self.future.cancel()

    def outcome(self) -> str:
        if self.future.cancelled():
            return "was cancelled on the cluster"
        if self.future.status == "error":
            return f"raised {self.future.exception()!r} on the cluster"
        return "exited normally"


class DaskLauncher:
    """Fits submitted to a Dask cluster; its workers read and write the (shared) data dir."""

    def __init__(self, data_dir: str, address: str) -> None:
        from distributed import Client  # only deployments with a cluster need distributed

        self.data_dir = data_dir
        self.client = Client(address, set_as_default=False, timeout=30)

    def start(self, job: dict[str, Any]) -> DaskRun:
        limit = job.get("time_limit")
        future = self.client.submit(
            fitjob.execute,
            self.data_dir,
            job["kind"],
            job["id"],
            job["run_token"],
            limit,
            True,
            key=f"kmeans-{job['kind']}-{job['id']}-{job['run_token']}",
            pure=False,
        )
        return DaskRun(future)

    def close(self) -> None:
        self.client.close()


class ThreadRun:
    """A job that waits on the network rather than the CPU (a webhook delivery), in a thread of
    this process. It cannot be killed; a delivery attempt is bounded by its timeout, and the
    outcome of a run that no longer owns its job is discarded (``run_token``)."""

    def __init__(self, target: Callable[[dict[str, Any]], None], job: dict[str, Any]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, args=(target, job), name=f"kmeans-{job['kind']}", daemon=True)
        self.thread.start()

    def _main(self, target: Callable[[dict[str, Any]], None], job: dict[str, Any]) -> None:
        try:
            target(job)
        except BaseException as exc:  # recorded on the job by the dispatcher
            log.exception("%s %s failed", job["kind"], job["id"])
            self.error = exc

    def done(self) -> bool:
        return not self.thread.is_alive()

    def stop(self) -> None:
        pass

    def outcome(self) -> str:
        return "exited normally" if self.error is None else f"raised {type(self.error).__name__}: {self.error}"


@dataclass
class _Active:
    key: Key
    run_token: str
    run: Run
    started: float = field(default_factory=time.monotonic)
    time_limit: float | None = None


@dataclass
class Deliveries:
    """How this process delivers webhooks: ``run(delivery)`` makes one attempt and records it."""

    run: Callable[[dict[str, Any]], None]
    max_running: int = 4
    max_attempts: int = 5


class Dispatcher:
    """Claims queued jobs, runs them, watches them, recovers them. One per server process."""

    def __init__(
        self,
        store: Store,
        launcher: Launcher,
        max_running: int,
        heartbeat_timeout: float,
        on_terminal: Callable[[str, str], None] | None = None,
        deliveries: Deliveries | None = None,
        housekeeping: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.launcher = launcher
        self.max_running = max_running
        self.heartbeat_timeout = heartbeat_timeout
        self.on_terminal = on_terminal or (lambda kind, job_id: None)
        self.deliveries = deliveries
        self.housekeeping = housekeeping or (lambda: None)
        self.worker = worker_name()
        self._active: dict[Key, _Active] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._beater: threading.Thread | None = None
        # The runs this process owns, starting or running: {(kind, id): run_token}. Beaten by
        # a thread of their own, so that a slow start (the fork server coming up on a busy
        # machine) never looks like a dead process to the other servers.
        self._owned: dict[Key, str] = {}
        self._owned_lock = threading.Lock()
        self._last_sweep = 0.0

    def start(self) -> None:
        """Start dispatching (and beating the heartbeats of jobs run here) in background threads."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="kmeans-dispatcher", daemon=True)
            self._beater = threading.Thread(target=self._beat_loop, name="kmeans-heartbeat", daemon=True)
            self._thread.start()
            self._beater.start()

    def wake(self) -> None:
        """Look at the queue now (a job was just queued or cancelled)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop dispatching; jobs running here are stopped and put back in the queue."""
        self._stopping.set()
        self._wake.set()
        for thread in (self._thread, self._beater):
            if thread is not None:
                thread.join(timeout=30)
        self._thread = self._beater = None
        for active in list(self._active.values()):
            active.run.stop()
            kind, job_id = active.key
            # A shutdown is nobody's failure: the attempt does not count.
            self.store.update_job(
                kind, job_id, ("running",), active.run_token, status="queued", run_token=None,
                queued_at=now(), phase="re-queued: the server running it shut down", progress=0,
                attempts=max(0, self._attempts(active.key) - 1),
            )
        self._active.clear()
        with self._owned_lock:
            self._owned.clear()
        self.launcher.close()

    def _attempts(self, key: Key) -> int:
        job = self.store.get_job(*key)
        return job["attempts"] if job else 0

    def _own(self, key: Key, run_token: str | None) -> None:
        with self._owned_lock:
            if run_token is None:
                self._owned.pop(key, None)
            else:
                self._owned[key] = run_token

    def _beat_loop(self) -> None:
        while not self._stopping.wait(BEAT_EVERY):
            with self._owned_lock:
                owned = dict(self._owned)
            try:
                self.store.beat(owned)
            except Exception:  # e.g. a locked database: the next beat comes in a second
                log.exception("heartbeat failed")

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # keep dispatching whatever one round hit (e.g. a locked database)
                log.exception("dispatcher round failed")
            self._wake.wait(TICK)
            self._wake.clear()

    def tick(self) -> None:
        """One round: reap, enforce cancellations and limits, recover, claim."""
        self._reap()
        self._enforce()
        moment = time.monotonic()
        if moment - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = moment
            self.recover_stale()
            self.housekeeping()
        self._claim()
        if self.deliveries is not None:
            self._claim_deliveries()

    def _reap(self) -> None:
        for key, active in list(self._active.items()):
            if not active.run.done():
                continue
            del self._active[key]
            self._own(key, None)
            job = self.store.get_job(*key)
            if job is not None and job["status"] == "running" and job["run_token"] == active.run_token:
                # The run ended without recording an outcome: it crashed or was killed.
                self._requeue_or_fail(job, f"the {key[0]} process {active.run.outcome()}")
            if job is not None and key[0] != "webhook":
                self.on_terminal(*key)

    def _enforce(self) -> None:
        if not self._active:
            return
        current = self.store.jobs_by_key(list(self._active))
        for key, active in list(self._active.items()):
            job = current.get(key)
            if job is None or job["status"] != "running" or job["run_token"] != active.run_token:
                active.run.stop()  # cancelled, paused, deleted, or taken over: free the CPU now
            elif active.time_limit and time.monotonic() - active.started > active.time_limit:
                active.run.stop()
                self.store.update_job(
                    *key, ("running",), active.run_token, status="failed", finished_at=now(),
                    error=fitjob.time_limit_problem(active.time_limit, key[0]), phase="time limit exceeded",
                )

    def recover_stale(self) -> int:
        """Re-queue or fail running jobs whose process stopped beating; returns how many."""
        count = 0
        for job in self.store.stale_runs(time.time() - self.heartbeat_timeout):
            key = (job["kind"], job["id"])
            if key in self._active or key in self._owned:
                continue
            self._requeue_or_fail(
                job, f"the process running it ({job.get('worker')}) stopped answering for"
                f" {self.heartbeat_timeout:g} s",
            )
            count += 1
        return count

    def _max_attempts(self, kind: str) -> int:
        return self.deliveries.max_attempts if kind == "webhook" and self.deliveries else MAX_ATTEMPTS

    def _requeue_or_fail(self, job: dict[str, Any], why: str) -> None:
        kind = job["kind"]
        if job["attempts"] < self._max_attempts(kind):
            changed = self.store.update_job(
                kind, job["id"], ("running",), job["run_token"], status="queued", run_token=None,
                queued_at=now(), progress=0, phase=f"re-queued: {why}",
            )
            log.warning("%s %s re-queued: %s", kind, job["id"], why)
        else:
            failed = fitjob.FAILED.get(kind, FitFailed)
            changed = self.store.update_job(
                kind, job["id"], ("running",), job["run_token"], status="failed", finished_at=now(),
                phase="failed",
                error=failed(f"{why}, on {job['attempts']} attempts; the {kind} was given up").to_problem(),
            )
            log.warning("%s %s failed: %s", kind, job["id"], why)
            if changed and kind != "webhook":
                self.on_terminal(kind, job["id"])
        if changed and kind == "webhook":  # the resource shows how its delivery goes
            state = "retrying" if job["attempts"] < self._max_attempts(kind) else "failed"
            self.store.set_callback(job["target_kind"], job["target_id"], {
                "state": state, "delivery_id": job["id"], "attempts": job["attempts"], "error": why, "at": now(),
            })

    def _claim(self) -> None:
        while not self._stopping.is_set() and self.store.has_queued():
            job = self.store.claim_next(self.worker, self.max_running, secrets.token_hex(8))
            if job is None:
                return
            key = (job["kind"], job["id"])
            self._own(key, job["run_token"])
            try:
                run = self.launcher.start(job)
            except Exception as exc:  # e.g. no process could be forked now: likely the machine's, not the job's
                self._own(key, None)
                log.exception("could not start %s %s", *key)
                self._requeue_or_fail(job, f"its process could not be started ({type(exc).__name__}: {exc})")
                return  # the next jobs would meet the same trouble: try again next round
            self._active[key] = _Active(key, job["run_token"], run, time_limit=job.get("time_limit"))

    def _claim_deliveries(self) -> None:
        while not self._stopping.is_set() and self.store.has_queued(("webhook",)):
            job = self.store.claim_next(
                self.worker, self.deliveries.max_running, secrets.token_hex(8), kinds=("webhook",)
            )
            if job is None:
                return
            key = (job["kind"], job["id"])
            self._own(key, job["run_token"])
            self._active[key] = _Active(key, job["run_token"], ThreadRun(self.deliveries.run, job))
