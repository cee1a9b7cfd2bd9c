"""The clustering engine: the only module that imports scikit-learn."""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
from sklearn.cluster import BisectingKMeans, KMeans, MiniBatchKMeans
from sklearn.cluster import _kmeans as sklearn_kmeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning


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
# checkpoint(centers): the centers after an iteration, in the space the fit was given; called
# with a function that makes them (a copy), so that a checkpoint that is not kept costs nothing.
Checkpoint = Callable[[Callable[[], np.ndarray]], None]


class _ProgressReader:
    """Turns KMeans' verbose lines into progress: inits done, and iterations of the current one."""

    _ITERATION = re.compile(r"^Iteration (\d+),")

    def __init__(
        self,
        n_init: int,
        max_iter: int,
        progress: Progress,
        checkpoint: Checkpoint | None = None,
        offset: np.ndarray | None = None,
    ) -> None:
        self.n_init, self.max_iter, self.progress = n_init, max_iter, progress
        self.checkpoint, self.offset = checkpoint, offset
        self.init = self.step = 0
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
            self.started()
        elif match := self._ITERATION.match(line):
            self.iterated(int(match.group(1)) + 1)
        elif line.startswith("Converged"):
            self.converged()

    def started(self) -> None:
        """An initialisation is done; its iterations start."""
        self.init += 1
        self.step = 0
        self.progress((self.init - 1) / self.n_init, f"init {self.init} of {self.n_init}")

    def iterated(self, step: int | None = None) -> None:
        """Iteration ``step`` (1-based; default: the one after the last) of the current init is done."""
        self.step = self.step + 1 if step is None else step
        done = (self.init - 1 + min(self.step / self.max_iter, 0.99)) / self.n_init
        self.progress(done, f"init {self.init} of {self.n_init}, iteration {self.step}")

    def converged(self) -> None:
        self.progress(self.init / self.n_init, f"init {self.init} of {self.n_init} converged")


# KMeans' verbose mode, which the progress above reads, computes the inertia of every
# iteration only to print it: an extra pass over the data, ~7% of a fit. Where scikit-learn
# has them, its private per-run and per-iteration functions are wrapped instead: a wrapper
# tells the progress reader of its thread (if any) and otherwise calls straight through.
# The names are checked once; without them fits go on reading the verbose output.
_RUNS = ("_kmeans_single_lloyd", "_kmeans_single_elkan")
_ITERATIONS = ("lloyd_iter_chunked_dense", "elkan_iter_chunked_dense")
_listeners = threading.local()


def _hook_run(run: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(run)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        reader = getattr(_listeners, "reader", None)
        if reader is None:
            return run(*args, **kwargs)
        reader.started()
        result = run(*args, **kwargs)
        # What verbose mode calls converging: stopping before max_iter (it also says so when
        # the very last iteration converges, which the run's result cannot tell apart).
        if result[3] < kwargs.get("max_iter", reader.max_iter):
            reader.converged()
        return result

    return hooked


def _hook_iteration(iterate: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(iterate)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        result = iterate(*args, **kwargs)
        reader = getattr(_listeners, "reader", None)
        if reader is not None and kwargs.get("update_centers", True):  # not the final relabelling
            if reader.checkpoint is not None and len(args) > 3:
                # The new centers (both iterations' 4th argument), in KMeans' own space: the data
                # less its mean, which it subtracts before its runs (and adds back after).
                reader.checkpoint(lambda: np.asarray(args[3], dtype=np.float64) + reader.offset)
            reader.iterated()
        return result

    return hooked


def _install_hooks() -> bool:
    if not all(callable(getattr(sklearn_kmeans, name, None)) for name in _RUNS + _ITERATIONS):
        return False
    for name in _RUNS:
        setattr(sklearn_kmeans, name, _hook_run(getattr(sklearn_kmeans, name)))
    for name in _ITERATIONS:
        setattr(sklearn_kmeans, name, _hook_iteration(getattr(sklearn_kmeans, name)))
    return True


HOOKED = _install_hooks()


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


def _thread_pools() -> Any:
    """scikit-learn's threadpoolctl controller (the BLAS and OpenMP libraries it limits), or
    None where neither it nor threadpoolctl's own controller exists (older releases)."""
    try:
        from sklearn.utils.parallel import _get_threadpool_controller
    except ImportError:  # a private helper that moved: a controller of our own does the same
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        return ThreadpoolController()
    return _get_threadpool_controller()


def use_all_cpus() -> None:
    """Let scikit-learn's OpenMP loops (the k-means iterations) use every CPU this process
    may use, unless OMP_NUM_THREADS says otherwise: a fit process must not run on one core."""
    pools = _thread_pools()
    if os.environ.get("OMP_NUM_THREADS") or pools is None:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    pools.limit(limits=cpus, user_api="openmp")


def warm_up() -> None:
    """Fit and score a tiny dataset once, on one thread.

    A process's first fit pays ~100 ms that later ones do not (scikit-learn finds the BLAS
    and OpenMP libraries, narwhals its plugins' entry points, joblib the CPU count). The
    fork server calls this before it forks any fit process, so that none of them pays it.
    One OpenMP thread, so that the fork server starts no OpenMP threads of its own: a
    forked child would inherit a thread pool without its threads. Without a way to limit
    the threads, it does nothing.
    """
    pools = _thread_pools()
    if pools is None:
        return
    values = np.random.default_rng(0).normal(size=(64, 2))
    values[32:] += 10.0
    with pools.limit(limits=1, user_api="openmp"):
        for method in ("kmeans", "minibatch"):
            result = fit(values, {"method": method, "n_clusters": 2, "n_init": 1, "random_state": 0})
        quality(values, result.labels)


def resolved_n_init(params: dict[str, Any]) -> int:
    """How many initialisations KMeans will run ("auto": 1 for k-means++, 10 for random)."""
    n_init = params.get("n_init", "auto")
    if n_init == "auto":
        return 1 if params.get("init", "k-means++") == "k-means++" else 10
    return int(n_init)


# The ModelParams scikit-learn's estimators take (the rest are the service's own options).
ESTIMATOR_OPTIONS = ("n_clusters", "init", "n_init", "max_iter", "tol", "random_state", "algorithm")
# Quality metrics are estimated on seeded random samples so that they cost a fraction of the
# fit: silhouette is quadratic in its rows (10,000 rows took 2 s, longer than a 1M-row fit).
SILHOUETTE_SAMPLE = 3_000
SCORE_SAMPLE = 100_000


class _MiniBatchProgress:
    """MiniBatchKMeans' verbose lines ("Minibatch step 12/300: ...") as progress."""

    _STEP = re.compile(r"^Minibatch step (\d+)/(\d+)")

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._line = ""

    def write(self, text: str) -> int:
        self._line += text
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            if match := self._STEP.match(line.strip()):
                step, steps = int(match.group(1)), int(match.group(2))
                self.progress(min(step / max(steps, 1), 0.99), f"minibatch step {step} of {steps}")
        return len(text)

    def flush(self) -> None:
        pass


def _estimator(params: dict[str, Any], verbose: bool, owned: bool = False) -> Any:
    options = {k: params[k] for k in ESTIMATOR_OPTIONS if k in params}
    if owned and params.get("method", "kmeans") in ("kmeans", "bisecting"):
        # The matrix is the caller's own: scikit-learn centres it in place and restores it
        # (a last-digit rounding at most) instead of copying it; the fit's arithmetic is the same.
        options["copy_x"] = False
    if isinstance(options.get("init"), list):
        options["init"] = np.asarray(options["init"], dtype=np.float64)
        options["n_init"] = 1
        options.setdefault("n_clusters", len(options["init"]))
    method = params.get("method", "kmeans")
    if method == "minibatch":
        return MiniBatchKMeans(**options, verbose=int(verbose))
    if method == "bisecting":
        return BisectingKMeans(**options)
    return KMeans(**options, verbose=int(verbose))


def can_checkpoint(params: dict[str, Any]) -> bool:
    """Whether a fit with ``params`` reports its centers as it goes (KMeans, where the hooks exist)."""
    return params.get("method", "kmeans") == "kmeans" and HOOKED


def fit(
    values: np.ndarray,
    params: dict[str, Any],
    progress: Progress | None = None,
    sample_weight: np.ndarray | None = None,
    checkpoint: Checkpoint | None = None,
    owned: bool = False,
) -> FitResult:
    """Fit ``params["method"]`` (KMeans, MiniBatchKMeans or BisectingKMeans; params already
    validated against the spec) on ``values``, already in the model's fitted space. With
    ``checkpoint`` (KMeans only), the centers after each iteration are offered to it. ``owned``:
    ``values`` is a matrix no one else reads during the fit (scikit-learn may then use it in place)."""
    method = params.get("method", "kmeans")
    hooked = progress is not None and method == "kmeans" and HOOKED
    verbose = progress is not None and method != "bisecting" and not hooked
    model = _estimator(params, verbose, owned)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if hooked:
            offset = np.asarray(values).mean(axis=0) if checkpoint is not None else None
            _listeners.reader = _ProgressReader(
                resolved_n_init(params), params.get("max_iter", 300), progress, checkpoint, offset
            )
            try:
                model.fit(values, sample_weight=sample_weight)
            finally:
                _listeners.reader = None
        elif not verbose:
            if progress is not None:
                progress(0.0, f"{method} fit")
            model.fit(values, sample_weight=sample_weight)
        else:
            out = _thread_stdout()
            out.local.sink = (
                _MiniBatchProgress(progress)
                if method == "minibatch"
                else _ProgressReader(resolved_n_init(params), params.get("max_iter", 300), progress)
            )
            try:
                model.fit(values, sample_weight=sample_weight)
            finally:
                out.local.sink = None
    return FitResult(
        centers=np.ascontiguousarray(model.cluster_centers_, dtype=np.float64),
        labels=model.labels_.astype(np.int32, copy=False),
        inertia=float(model.inertia_),
        n_iter=int(getattr(model, "n_iter_", 0) or 0),
        warnings=[str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)],
    )


def quality(values: np.ndarray, labels: np.ndarray, seed: int | None = 0) -> dict[str, float | None]:
    """Silhouette (on a seeded random sample of at most SILHOUETTE_SAMPLE rows), Davies-Bouldin
    and Calinski-Harabasz (on one of at most SCORE_SAMPLE rows) of a clustering; None where
    undefined (fewer than 2 clusters, or every row its own cluster)."""
    used = _clusters_used(labels)
    if used < 2 or used >= len(values):
        return {"silhouette": None, "davies_bouldin": None, "calinski_harabasz": None}
    rng = np.random.default_rng(0 if seed is None else seed)

    def sample(size: int) -> tuple[np.ndarray, np.ndarray]:
        if len(values) <= size:
            return values, labels
        rows = np.sort(rng.choice(len(values), size, replace=False))
        return values[rows], labels[rows]

    scored, scored_labels = sample(SCORE_SAMPLE)
    small, small_labels = sample(SILHOUETTE_SAMPLE)
    silhouette = None
    if 2 <= _clusters_used(small_labels) < len(small):
        silhouette = _silhouette(small, small_labels)
    davies_bouldin = calinski_harabasz = None
    if 2 <= _clusters_used(scored_labels) < len(scored):
        davies_bouldin, calinski_harabasz = _davies_bouldin_calinski_harabasz(scored, scored_labels)
    return {"silhouette": silhouette, "davies_bouldin": davies_bouldin, "calinski_harabasz": calinski_harabasz}


def _clusters_used(labels: np.ndarray) -> int:
    # Labels are small non-negative ints: counting them is a pass, np.unique a sort.
    return int(np.count_nonzero(np.bincount(labels))) if len(labels) else 0


def _davies_bouldin_calinski_harabasz(values: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """sklearn.metrics' davies_bouldin_score and calinski_harabasz_score (the same formulas),
    from one pass of per-cluster sums where scikit-learn selects each cluster's rows in turn."""
    _, codes = np.unique(labels, return_inverse=True)
    counts = np.bincount(codes).astype(np.float64)
    centers = np.stack([np.bincount(codes, weights=column) for column in values.T], axis=1) / counts[:, None]
    offsets = values - centers[codes]
    squared = np.einsum("ij,ij->i", offsets, offsets)
    # Calinski-Harabasz: between-cluster over within-cluster dispersion, scaled by their degrees of freedom.
    within = float(squared.sum())
    between = float((counts * ((centers - values.mean(axis=0)) ** 2).sum(axis=1)).sum())
    k, n = len(counts), len(values)
    calinski_harabasz = 1.0 if within == 0.0 else between * (n - k) / (within * (k - 1.0))
    # Davies-Bouldin: mean over clusters of the worst (spread_i + spread_j) / distance(center_i, center_j).
    spread = np.bincount(codes, weights=np.sqrt(squared)) / counts
    gaps = np.sqrt(((centers[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2))
    if np.allclose(spread, 0) or np.allclose(gaps, 0):
        return 0.0, calinski_harabasz
    gaps[gaps == 0] = np.inf
    davies_bouldin = float(np.max((spread[:, None] + spread[None, :]) / gaps, axis=1).mean())
    return davies_bouldin, calinski_harabasz


# Rows of the silhouette's distance matrix computed at a time (rows x sample floats each).
SILHOUETTE_CHUNK = 512


def _silhouette(values: np.ndarray, labels: np.ndarray) -> float:
    """The mean silhouette coefficient, as sklearn.metrics.silhouette_score computes it (the
    same distances and rules) but with matrix products over blocks of rows where
    scikit-learn loops over the rows in Python: a tenth of the time on SILHOUETTE_SAMPLE rows."""
    _, codes = np.unique(labels, return_inverse=True)
    counts = np.bincount(codes)
    members = np.zeros((len(values), len(counts)))
    members[np.arange(len(values)), codes] = 1.0
    squares = np.einsum("ij,ij->i", values, values)
    twice = -2.0 * values  # scaling by -2 is exact: (-2x).y == -2(x.y), one pass over the matrix fewer
    # Each row's summed distance to the rows of every cluster. Distances are symmetric, so
    # only the blocks on and above the diagonal are computed, and each serves both sides.
    per_cluster = np.zeros((len(values), len(counts)))
    starts = range(0, len(values), SILHOUETTE_CHUNK)
    for first in starts:
        rows = slice(first, min(first + SILHOUETTE_CHUNK, len(values)))
        for second in starts[first // SILHOUETTE_CHUNK :]:
            cols = slice(second, min(second + SILHOUETTE_CHUNK, len(values)))
            distances = twice[rows] @ values[cols].T
            distances += squares[rows, None]
            distances += squares[None, cols]
            np.maximum(distances, 0.0, out=distances)
            if first == second:  # a row's distance to itself, exactly
                np.fill_diagonal(distances, 0.0)
            np.sqrt(distances, out=distances)
            per_cluster[rows] += distances @ members[cols]
            if first != second:
                per_cluster[cols] += distances.T @ members[rows]
    everyone = np.arange(len(values))
    intra = per_cluster[everyone, codes]
    per_cluster[everyone, codes] = np.inf
    inter = (per_cluster / counts).min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        intra /= counts[codes] - 1
        scores = (inter - intra) / np.maximum(intra, inter)
    return float(np.nan_to_num(scores).mean())


def project_2d(sample: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first two principal components (fitted on ``sample``) of the sample and the centers,
    and the share of the sample's variance each explains (0 for a sample with none)."""
    pca = PCA(n_components=2, random_state=0).fit(sample)
    explained = np.nan_to_num(np.asarray(pca.explained_variance_ratio_, dtype=np.float64), nan=0.0)
    return pca.transform(sample), pca.transform(centers), explained


# Up to this many row-center pairs (one-row predictions) distances are computed exactly; above,
# by KMeans.predict's expansion, in blocks of at most PREDICT_BLOCK row-center pairs.
SMALL_PREDICT = 4096
PREDICT_BLOCK = 1 << 20


def predict(centers: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The index of the nearest center (Euclidean) for each row, as KMeans.predict finds it.

    Like scikit-learn's, the large case takes the argmin over centers of |c|^2 - 2 x.c (|x|^2 is
    the same for every center) from one matrix product per block: 10,000 rows x 8 centers in
    0.4 ms, where pairwise_distances_argmin took 1.6 ms (its input checks and chunking) and
    exact differences 3.5 ms.
    """
    if len(values) * len(centers) <= SMALL_PREDICT:
        distances = ((values[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        return distances.argmin(axis=1).astype(np.int32)
    half_norms = 0.5 * np.einsum("ij,ij->i", centers, centers)
    labels = np.empty(len(values), dtype=np.int32)
    step = max(1, PREDICT_BLOCK // len(centers))
    for start in range(0, len(values), step):
        scores = values[start : start + step] @ centers.T
        scores -= half_norms
        labels[start : start + step] = scores.argmax(axis=1)
    return labels


def distances(centers: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Euclidean distance of every row to every center (rows x centers)."""
    squared = (values**2).sum(axis=1)[:, None] - 2.0 * values @ centers.T + (centers**2).sum(axis=1)[None, :]
    return np.sqrt(np.maximum(squared, 0.0))
