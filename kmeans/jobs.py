"""Where fits run: a bounded pool in this process, first come first served.

The pool only executes; the database holds every model's state, so any process can
report on a fit that another one runs.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from threading import Lock

log = logging.getLogger(__name__)


def worker_name() -> str:
    """Who runs a fit: ``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(name: str | None) -> bool:
    """False only when ``name`` is a process on this host that no longer exists."""
    if not name or ":" not in name:
        return False
    host, _, pid = name.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's process: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


class LocalRunner:
    """A FIFO queue in front of at most ``max_workers`` concurrent fits."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future] = {}
        self._lock = Lock()

    def submit(self, key: str, fn: Callable[[], None]) -> Future:
        """Queue ``fn``; ``wait(key)`` in this process can block on it."""
        with self._lock:
            # Created lazily so that a forked gunicorn worker owns its own threads.
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="kmeans-fit")
            future = self._pool.submit(fn)
            self._futures[key] = future
        future.add_done_callback(lambda _f: self._forget(key))
        return future

    def _forget(self, key: str) -> None:
        with self._lock:
            self._futures.pop(key, None)

    def local_future(self, key: str) -> Future | None:
        """The future of a fit queued in this process, if any."""
        with self._lock:
            return self._futures.get(key)

    def shutdown(self) -> None:
        """Stop taking work and wait for running fits."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=False)
