"""Where fits run: a FIFO queue in the database, and a dispatcher in every server process.

The queue is the ``models`` table itself: a fit is ``queued`` until some process's dispatcher
claims it, atomically and only while fewer than ``max_concurrent_fits`` fits run across all
processes that share the data dir. The claimant runs it in a separate process (locally, or
as a task on a Dask cluster), beats a heartbeat for it, kills it when it is cancelled or runs
out of time, and re-queues it once if a process running it died (no heartbeat). Nothing about
a fit lives only in memory, so any process can report on, cancel or recover any fit.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import socket
import threading
import time
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


class Run(Protocol):
    """A fit in progress somewhere."""

    def done(self) -> bool: ...

    def stop(self) -> None: ...

    def outcome(self) -> str: ...


class Launcher(Protocol):
    def start(self, model: dict[str, Any]) -> Run: ...

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
        self._context.set_forkserver_preload(["kmeans.fitjob", "kmeans.fitwarm"])
        self._runs: list[LocalRun] = []  # the latest run of each fit process
        # Start the fork server (it imports numpy and scikit-learn and warms them up, ~2 s)
        # now, in the background, rather than when the first fit is waiting for it.
        threading.Thread(target=forkserver.ensure_running, name="kmeans-forkserver", daemon=True).start()

    def start(self, model: dict[str, Any]) -> LocalRun:
        job = (model["id"], model["run_token"])
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

    def start(self, model: dict[str, Any]) -> DaskRun:
        limit = model.get("time_limit")
        future = self.client.submit(
            fitjob.execute,
            self.data_dir,
            model["id"],
            model["run_token"],
            limit,
            True,
            key=f"kmeans-fit-{model['id']}-{model['run_token']}",
            pure=False,
        )
        return DaskRun(future)

    def close(self) -> None:
        self.client.close()


@dataclass
class _Active:
    model_id: str
    run_token: str
    run: Run
    started: float = field(default_factory=time.monotonic)
    time_limit: float | None = None


class Dispatcher:
    """Claims queued fits, runs them, watches them, recovers them. One per server process."""

    def __init__(
        self,
        store: Store,
        launcher: Launcher,
        max_running: int,
        heartbeat_timeout: float,
        on_terminal: Any = None,
    ) -> None:
        self.store = store
        self.launcher = launcher
        self.max_running = max_running
        self.heartbeat_timeout = heartbeat_timeout
        self.on_terminal = on_terminal or (lambda model_id: None)
        self.worker = worker_name()
        self._active: dict[str, _Active] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._beater: threading.Thread | None = None
        # The runs this process owns, starting or running: {model_id: run_token}. Beaten by
        # a thread of their own, so that a slow start (the fork server coming up on a busy
        # machine) never looks like a dead process to the other servers.
        self._owned: dict[str, str] = {}
        self._owned_lock = threading.Lock()
        self._last_sweep = 0.0

    def start(self) -> None:
        """Start dispatching (and beating the heartbeats of fits run here) in background threads."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="kmeans-dispatcher", daemon=True)
            self._beater = threading.Thread(target=self._beat_loop, name="kmeans-heartbeat", daemon=True)
            self._thread.start()
            self._beater.start()

    def wake(self) -> None:
        """Look at the queue now (a fit was just queued)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop dispatching; fits running here are stopped and put back in the queue."""
        self._stopping.set()
        self._wake.set()
        for thread in (self._thread, self._beater):
            if thread is not None:
                thread.join(timeout=30)
        self._thread = self._beater = None
        for active in list(self._active.values()):
            active.run.stop()
            # A shutdown is nobody's failure: the attempt does not count.
            self.store.update_model(
                active.model_id, ("running",), active.run_token, status="queued", run_token=None,
                queued_at=now(), phase="re-queued: the server running it shut down", progress=0,
                attempts=max(0, self._attempts(active.model_id) - 1),
            )
        self._active.clear()
        with self._owned_lock:
            self._owned.clear()
        self.launcher.close()

    def _attempts(self, model_id: str) -> int:
        model = self.store.get_model(model_id)
        return model["attempts"] if model else 0

    def _own(self, model_id: str, run_token: str | None) -> None:
        with self._owned_lock:
            if run_token is None:
                self._owned.pop(model_id, None)
            else:
                self._owned[model_id] = run_token

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
        """One round: reap, enforce cancellations and limits, sweep, claim."""
        self._reap()
        self._enforce()
        moment = time.monotonic()
        if moment - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = moment
            self.recover_stale()
        self._claim()

    def _reap(self) -> None:
        for model_id, active in list(self._active.items()):
            if not active.run.done():
                continue
            del self._active[model_id]
            self._own(model_id, None)
            model = self.store.get_model(model_id)
            if model is not None and model["status"] == "running" and model["run_token"] == active.run_token:
                # The process ended without recording an outcome: it crashed or was killed.
                self._requeue_or_fail(model, f"the fit process {active.run.outcome()}")
            self.on_terminal(model_id)

    def _enforce(self) -> None:
        if not self._active:
            return
        current = self.store.models_by_id(list(self._active))
        for model_id, active in list(self._active.items()):
            model = current.get(model_id)
            if model is None or model["status"] != "running" or model["run_token"] != active.run_token:
                active.run.stop()  # cancelled, deleted, or taken over: free the CPU now
            elif active.time_limit and time.monotonic() - active.started > active.time_limit:
                active.run.stop()
                self.store.update_model(
                    model_id, ("running",), active.run_token, status="failed", finished_at=now(),
                    error=fitjob.time_limit_problem(active.time_limit), phase="time limit exceeded",
                )

    def recover_stale(self) -> int:
        """Re-queue (once) or fail running fits whose process stopped beating; returns how many."""
        count = 0
        for model in self.store.stale_runs(time.time() - self.heartbeat_timeout):
            if model["id"] in self._active or model["id"] in self._owned:
                continue
            self._requeue_or_fail(
                model, f"the process running it ({model.get('worker')}) stopped answering for"
                f" {self.heartbeat_timeout:g} s",
            )
            count += 1
        return count

    def _requeue_or_fail(self, model: dict[str, Any], why: str) -> None:
        if model["attempts"] < MAX_ATTEMPTS:
            changed = self.store.update_model(
                model["id"], ("running",), model["run_token"], status="queued", run_token=None,
                queued_at=now(), progress=0, phase=f"re-queued: {why}",
            )
            log.warning("model %s re-queued: %s", model["id"], why)
        else:
            changed = self.store.update_model(
                model["id"], ("running",), model["run_token"], status="failed", finished_at=now(),
                phase="failed",
                error=FitFailed(f"{why}, on {model['attempts']} attempts; the fit was given up").to_problem(),
            )
            log.warning("model %s failed: %s", model["id"], why)
            if changed:
                self.on_terminal(model["id"])

    def _claim(self) -> None:
        while not self._stopping.is_set() and self.store.has_queued():
            model = self.store.claim_next(self.worker, self.max_running, secrets.token_hex(8))
            if model is None:
                return
            self._own(model["id"], model["run_token"])
            try:
                run = self.launcher.start(model)
            except Exception as exc:
                self._own(model["id"], None)
                log.exception("could not start the fit of %s", model["id"])
                self.store.update_model(
                    model["id"], ("running",), model["run_token"], status="failed", finished_at=now(),
                    error=FitFailed(f"the fit could not be started: {exc}").to_problem(),
                )
                self.on_terminal(model["id"])
                continue
            limit = model.get("time_limit")
            self._active[model["id"]] = _Active(model["id"], model["run_token"], run, time_limit=limit)
