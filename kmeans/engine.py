"""The clustering engine: the only module that imports scikit-learn."""

from __future__ import annotations

import re
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import pairwise_distances_argmin


@dataclass(frozen=True)
class FitResult:
    """What a fit leaves behind: enough to predict without any pickled object."""

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    warnings: list[str]


# progress(fraction 0..1, phase text); it may raise to stop the fit.
Progress = Callable[[float, str], None]


class _ProgressReader:
    """Turns KMeans' verbose lines into progress: inits done, and iterations of the current one."""

    _ITERATION = re.compile(r"^Iteration (\d+),")

    def __init__(self, n_init: int, max_iter: int, progress: Progress) -> None:
        self.n_init, self.max_iter, self.progress = n_init, max_iter, progress
        self.init = 0
        self._line = ""

    def write(self, text: str) -> int:
        self._line += text
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            self._read(line.strip())
        return len(text)

    def flush(self) -> None:
        pass

    def _read(self, line: str) -> None:
        if line.startswith("Initialization complete"):
            self.init += 1
            self.progress((self.init - 1) / self.n_init, f"init {self.init} of {self.n_init}")
        elif match := self._ITERATION.match(line):
            step = int(match.group(1)) + 1
            done = (self.init - 1 + min(step / self.max_iter, 0.99)) / self.n_init
            self.progress(done, f"init {self.init} of {self.n_init}, iteration {step}")
        elif line.startswith("Converged"):
            self.progress(self.init / self.n_init, f"init {self.init} of {self.n_init} converged")


class _ThreadStdout:
    """sys.stdout that sends the writes of threads with a sink to it (KMeans prints progress)."""

    def __init__(self, fallback: TextIO) -> None:
        self.fallback = fallback
        self.local = threading.local()

    def write(self, text: str) -> int:
        sink = getattr(self.local, "sink", None)
        return (sink or self.fallback).write(text)

    def flush(self) -> None:
        (getattr(self.local, "sink", None) or self.fallback).flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fallback, name)


_stdout_lock = threading.Lock()


def _thread_stdout() -> _ThreadStdout:
    with _stdout_lock:
        if not isinstance(sys.stdout, _ThreadStdout):
            sys.stdout = _ThreadStdout(sys.stdout)
        return sys.stdout


def resolved_n_init(params: dict[str, Any]) -> int:
    """How many initialisations KMeans will run ("auto": 1 for k-means++, 10 for random)."""
    n_init = params.get("n_init", "auto")
    if n_init == "auto":
        return 1 if params.get("init", "k-means++") == "k-means++" else 10
    return int(n_init)


def fit(values: np.ndarray, params: dict[str, Any], progress: Progress | None = None) -> FitResult:
    """Fit scikit-learn's KMeans with ``params`` (already validated against the spec)."""
    model = KMeans(**params, verbose=1 if progress else 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if progress is None:
            model.fit(values)
        else:
            out = _thread_stdout()
            out.local.sink = _ProgressReader(resolved_n_init(params), params.get("max_iter", 300), progress)
            try:
                model.fit(values)
            finally:
                out.local.sink = None
    return FitResult(
        centers=np.ascontiguousarray(model.cluster_centers_, dtype=np.float64),
        labels=model.labels_.astype(np.int32, copy=False),
        inertia=float(model.inertia_),
        n_iter=int(model.n_iter_),
        warnings=[str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)],
    )


# Below this many row-center pairs, plain numpy beats scikit-learn's input checks and chunking.
SMALL_PREDICT = 65536


def predict(centers: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The index of the nearest center (Euclidean) for each row, as KMeans.predict does."""
    if len(values) * len(centers) <= SMALL_PREDICT:
        distances = ((values[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        return distances.argmin(axis=1).astype(np.int32)
    return pairwise_distances_argmin(values, centers).astype(np.int32, copy=False)
