#!/usr/bin/env python3
"""Benchmark kmeans-service, run by its production command, against plain pandas + scikit-learn.

Usage::

    python bench/run.py                  # the full run: several minutes on 2 cores
    python bench/run.py --quick          # small sizes, one repeat: checks the script in seconds
    python bench/run.py --only 1,3       # some items only
    python bench/run.py --only 5         # the mixed-type table only (--items 5 is the same)
    python bench/run.py --only 6 --quick # the one-row predict on AsyncApp and on FlaskApp only
    python bench/run.py --rows 500000 --repeat 5

Options: ``--rows N`` rows of item 1 (default 1,000,000); ``--mixed-rows N`` rows of item 5
(default 1,000,000); ``--repeat N`` runs behind each median (default 3); ``--quick``;
``--only LIST`` or ``--items LIST`` (items 1-6, comma separated); ``--keep-logs`` (print where
the server logs are and keep them).

What it does. The data are seeded Gaussian blobs (8 features, 8 clusters) written as CSV into
a temporary directory that is removed at the end; nothing is written anywhere else. The
server under test is started with the Dockerfile's ``CMD`` (gunicorn with uvicorn workers),
bound to 127.0.0.1 on a free port instead of 0.0.0.0:8080, with ``KMEANS_DATA_DIR`` in the
temporary directory and ``KMEANS_MAX_UPLOAD_BYTES`` at 2 GiB. Every server is stopped (SIGTERM,
then SIGKILL to its process group) when the script ends, also on errors and Ctrl-C.

It prints the machine, then one table; each figure is a median over ``--repeat`` runs and each
ratio is the median of ratios measured within the same run:

1. ingest + fit + labels of a ``--rows`` x 8 CSV over HTTP (raw ``text/csv`` POST /datasets
   streamed from the file, POST /models with n_clusters=8, n_init=1, random_state=0, polling
   GET /models/{id} every 20 ms, GET /labels as CSV) versus the same steps in-process
   (``pandas.read_csv``, ``KMeans.fit``, labels joined into text); target ratio <= 1.3.
   An extra row runs the classic multipart /upload + /fit.
2. peak RSS growth of the gunicorn workers while a 1,500,000 x 8 CSV (~100 MB) is ingested
   as a streamed multipart POST /datasets, sampled every 10 ms from /proc (plus VmHWM), on
   a freshly started server per run; target <= 2x the float64 array (96 MB).
3. predict of a 10,000-row CSV over HTTP (raw ``text/csv``, ``Accept: text/csv``) versus
   in-process ``pandas.read_csv`` + scikit-learn's nearest-center predict with the model's
   centers; medians of 20 calls each; target ratio <= 2.
4. one-row JSON predict, requests per second over one keep-alive connection (sequential,
   after a warm-up), for the production command, for the same command with ``--workers 1``,
   and for a bare Starlette app (defined in this file) under uvicorn with 1 worker; target:
   the 1-worker service reaches >= 0.4 of bare Starlette.
5. a mixed table of ``--mixed-rows`` rows (an id column, 6 numeric columns with 5% missing,
   2 categorical ones of 10 words with 1% missing; seeded), written as CSV and as Parquet.
   Each way (5: raw ``text/csv`` body; 5b: raw ``application/vnd.apache.parquet`` body; 5c:
   the CSV as a streamed multipart part) does POST /datasets streamed from the file, POST
   /models (n_clusters=8, n_init=1, random_state=0, standardize, missing mean), GET /labels
   as ``id,label`` CSV, versus in-process ``pandas.read_csv`` (for Parquet
   ``pyarrow.parquet.read_table(...).to_pandas()``) + a scikit-learn ColumnTransformer
   (SimpleImputer(mean) + StandardScaler; SimpleImputer "(missing)" + OneHotEncoder, dense)
   + KMeans with the same k and seed + the same text. Targets: CSV <= 1.5, Parquet <= 1.3;
   5m/5n: the peak RSS growth of the workers during the CSV ingest (sampled as in item 2)
   <= 2x the dataset's stored arrays (their bytes on disk: values, codes, ids), 5p the same
   for Parquet (informative); 5a: the labels' adjusted Rand index against the in-process
   ones >= 0.99 (lowest run). A fresh server per way and run, warmed up with small mixed
   uploads, fits and labels; a way that fails is an ERROR row and is not run again.
6. the one-row JSON predict of item 4 on both connexion app classes: the production command
   with ``--workers 1`` and ``KMEANS_APP=async`` (AsyncApp, the default), and the same with
   ``KMEANS_APP=flask`` (FlaskApp), each with the same model; requests per second over one
   keep-alive connection, measured in turns; the ratio FlaskApp / AsyncApp is informative.

The client runs on the same machine as the servers, so on a small box the figures are
noisy and item 4 is partly bound by the client's own CPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
N_FEATURES = 8
N_CLUSTERS = 8
FIT_PARAMS = {"n_clusters": N_CLUSTERS, "n_init": 1, "random_state": 0}
# Item 5's mixed table: 6 numeric columns (5% missing each), 2 categorical ones (10 categories,
# 1% missing), 1 id; fitted with the same k and seed, standardized, missing numbers as the mean.
MIXED_NUMERIC = [f"x{i}" for i in range(6)]
MIXED_CATEGORICAL = ["colour", "shape"]
MIXED_CATEGORIES = {
    "colour": ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white", "grey", "orange"],
    "shape": ["circle", "square", "triangle", "star", "hexagon", "oval", "diamond", "cross", "arrow", "heart"],
}
MIXED_COLUMNS = ["id", "x0", "x1", "colour", "x2", "x3", "shape", "x4", "x5"]
MIXED_MISSING = 0.05
MIXED_CATEGORY_MISSING = 0.01
MIXED_FIT_PARAMS = {**FIT_PARAMS, "standardize": True, "missing": "mean"}
MISSING_CATEGORY = "(missing)"  # the service's name of a categorical column's missing value
PARQUET_TYPE = "application/vnd.apache.parquet"
MIN_ARI = 0.99
MAX_UPLOAD_BYTES = 2 * 1024**3
POLL_SECONDS = 0.02
SAMPLE_SECONDS = 0.01
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
MB = 1e6  # figures are in decimal megabytes (96 MB = 1.5M * 8 * 8 bytes)


# -- the bare Starlette app of item 4 ---------------------------------------------------------


def make_bare_app() -> Any:
    """A minimal Starlette app: POST /predict {"data": [[...]]} -> {"labels": [...]} (uvicorn --factory)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    centers = np.asarray(json.loads(os.environ["BENCH_CENTERS"]), dtype=np.float64)

    async def predict(request: Request) -> JSONResponse:
        points = np.asarray((await request.json())["data"], dtype=np.float64)
        distances = ((points[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        return JSONResponse({"labels": distances.argmin(axis=1).tolist()})

    async def ping(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/ping", ping)])


# -- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dockerfile_command(port: int, workers: int | None = None) -> list[str]:
    """The Dockerfile's last CMD, bound to 127.0.0.1:port (and with ``workers`` if given)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    cmd = json.loads(next(line for line in reversed(lines) if line.startswith("CMD "))[4:])
    bind = cmd.index("--bind") + 1
    if cmd[bind] != "0.0.0.0:8080":
        raise RuntimeError(f"unexpected --bind in the Dockerfile's CMD: {cmd}")
    cmd[bind] = f"127.0.0.1:{port}"
    if workers is not None:
        cmd[cmd.index("--workers") + 1] = str(workers)
    return cmd


@dataclass
class Server:
    """A server process started by this script (in its own process group)."""

    name: str
    proc: subprocess.Popen
    url: str
    log: Path
    data_dir: Path | None = None  # KMEANS_DATA_DIR of a service() server

    def reason(self) -> str:
        """The last line of the log that is not a gunicorn/uvicorn status line (usually the error)."""
        lines = [line for line in self.log_tail().splitlines() if line.strip() and not line.startswith(("[", "INFO"))]
        return lines[-1].strip() if lines else "see its log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL the process group it leads."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Workers left behind by a master that died: they are in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def serve(name: str, cmd: list[str], port: int, ping_path: str, env: dict[str, str], log: Path) -> Iterator[Server]:
    """Start ``cmd``, wait until ``ping_path`` answers 200, yield the Server, always stop it."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(name, proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {server.reason()}\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(server.url + ping_path, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not answer within {START_TIMEOUT} s: {server.reason()}\n{server.log_tail()}"
                )
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def service(tmp: Path, name: str, workers: int | None = None, app: str | None = None) -> Iterator[Server]:
    """The production command over a fresh data directory (with ``app`` as KMEANS_APP, if given)."""
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix=f"data-{name}-", dir=tmp))
    env = {"KMEANS_DATA_DIR": str(data_dir), "KMEANS_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}
    if app is not None:
        env["KMEANS_APP"] = app
    with serve(name, dockerfile_command(port, workers), port, "/kmeans/ping", env, tmp / f"{name}.log") as server:
        server.data_dir = data_dir
        yield server


def bare_starlette(tmp: Path, centers: np.ndarray) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "uvicorn", "--factory", "run:make_bare_app", "--app-dir", str(BENCH_DIR),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning",
    ]
    env = {"BENCH_CENTERS": json.dumps(centers.tolist())}
    return serve("bare-starlette", cmd, port, "/ping", env, tmp / "bare-starlette.log")


# -- /proc memory -----------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the gunicorn workers of a master)."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as handle:
                found.update(int(p) for p in handle.read().split())
    if found:
        return sorted(found)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/status") as handle:
            for line in handle:
                if line.startswith("PPid:"):
                    if int(line.split()[1]) == pid:
                        found.add(int(entry))
                    break
    return sorted(found)


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes; (0, 0) when it is gone."""
    rss = hwm = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return rss, hwm


class RssSampler(threading.Thread):
    """Records the highest VmRSS of each pid, every SAMPLE_SECONDS, until stopped (or max_seconds)."""

    def __init__(self, pids: list[int], max_seconds: float) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0)
        self.samples = 0
        self.max_seconds = max_seconds
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop_event.is_set() and time.monotonic() < deadline:
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], memory(pid)[0])
            self.samples += 1
            self._stop_event.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


# -- data -------------------------------------------------------------------------------------


def blobs(rows: int, seed: int) -> np.ndarray:
    """Seeded Gaussian blobs: N_CLUSTERS centers in [-10, 10]^N_FEATURES, unit spread."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10.0, 10.0, (N_CLUSTERS, N_FEATURES))
    return centers[rng.integers(0, N_CLUSTERS, rows)] + rng.normal(0.0, 1.0, (rows, N_FEATURES))


def write_csv(path: Path, values: np.ndarray) -> Path:
    np.savetxt(path, values, fmt="%.5f", delimiter=",")
    return path


def csv_bytes(values: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savetxt(out, values, fmt="%.5f", delimiter=",")
    return out.getvalue()


def read_csv_local(source: Any) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(source, header=None, dtype=np.float64).to_numpy(dtype=np.float64)


# -- HTTP helpers -----------------------------------------------------------------------------


def expect(response: httpx.Response, status: int) -> httpx.Response:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url} answered {response.status_code},"
            f" expected {status}: {response.text[:500]}"
        )
    return response


def client(timeout: float = 600.0) -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), limits=httpx.Limits(max_connections=1))


def wait_fitted(http: httpx.Client, url: str, model_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        model = expect(http.get(f"{url}/kmeans/models/{model_id}"), 200).json()
        if model["status"] == "succeeded":
            return model
        if model["status"] not in ("queued", "running"):
            raise RuntimeError(f"model {model_id} ended as {model['status']}: {model.get('error')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"model {model_id} not fitted within {timeout} s")
        time.sleep(POLL_SECONDS)


def fit_model(
    http: httpx.Client, url: str, dataset_id: str, timeout: float, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    body = {"dataset_id": dataset_id, "params": FIT_PARAMS if params is None else params}
    model = expect(http.post(f"{url}/kmeans/models", json=body), 202).json()
    return wait_fitted(http, url, model["id"], timeout)


# -- results ----------------------------------------------------------------------------------


@dataclass
class Row:
    item: str
    service: str
    reference: str
    ratio: str
    target: str
    ok: bool | None  # None: informative row without a target
    error: bool = False

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        return "-" if self.ok is None else ("PASS" if self.ok else "MISS")


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def median(values: list[float]) -> float:
    return statistics.median(values)


def seconds(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f} s"


def millis(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


# -- item 1: ingest + fit + labels --------------------------------------------------------------


def resource_flow(http: httpx.Client, url: str, path: Path, rows: int, timeout: float) -> tuple[dict[str, float], str]:
    phases: dict[str, float] = {}
    started = time.perf_counter()
    with open(path, "rb") as handle:
        dataset = expect(
            http.post(f"{url}/kmeans/datasets", params={"name": path.name}, content=handle,
                      headers={"Content-Type": "text/csv"}),
            201,
        ).json()
    phases["upload"] = time.perf_counter() - started
    if dataset["rows"] != rows:
        raise RuntimeError(f"the service read {dataset['rows']} rows, not {rows}")
    mark = time.perf_counter()
    model = fit_model(http, url, dataset["id"], timeout)
    phases["fit"] = time.perf_counter() - mark
    phases["server_fit"] = float(model.get("fit_seconds") or 0.0)
    mark = time.perf_counter()
    labels = expect(http.get(f"{url}/kmeans/models/{model['id']}/labels", headers={"Accept": "text/csv"}), 200).text
    now = time.perf_counter()
    phases["labels"] = now - mark
    phases["total"] = now - started
    http.delete(f"{url}/kmeans/datasets/{dataset['id']}")  # keep the data dir small; not timed
    http.delete(f"{url}/kmeans/models/{model['id']}")
    return phases, labels


def classic_flow(http: httpx.Client, url: str, path: Path, rows: int, run: int) -> tuple[float, str]:
    started = time.perf_counter()
    with open(path, "rb") as handle:
        # A new file name each run: the same name and content would reuse the first upload.
        files = {"file": (f"bench-{run}-{path.name}", handle, "text/csv")}
        upload = expect(http.post(f"{url}/kmeans/upload", files=files), 200).json()
    response = expect(
        http.post(f"{url}/kmeans/fit", json={"job_id": upload["job_id"], "model_params": FIT_PARAMS},
                  headers={"Accept": "text/csv"}),
        200,
    )
    total = time.perf_counter() - started
    if upload["rows"] != rows:
        raise RuntimeError(f"the service read {upload['rows']} rows, not {rows}")
    http.delete(f"{url}/kmeans/datasets/{upload['dataset_id']}")
    with contextlib.suppress(KeyError):
        http.delete(f"{url}/kmeans/models/{response.headers['X-Model-Id']}")
    return total, response.text


def inprocess_flow(path: Path) -> tuple[dict[str, float], str]:
    from sklearn.cluster import KMeans

    phases: dict[str, float] = {}
    started = time.perf_counter()
    values = read_csv_local(path)
    mark = time.perf_counter()
    phases["read"] = mark - started
    model = KMeans(**FIT_PARAMS).fit(values)
    now = time.perf_counter()
    phases["fit"] = now - mark
    text = "\n".join(map(str, model.labels_.tolist()))
    phases["format"] = time.perf_counter() - now
    phases["total"] = time.perf_counter() - started
    return phases, text


def item1(report: Report, url: str, path: Path, rows: int, repeat: int) -> None:
    timeout = max(300.0, rows / 1e6 * 900)
    service_runs: list[dict[str, float]] = []
    local_runs: list[dict[str, float]] = []
    classic_runs: list[float] = []
    ratios: list[float] = []
    classic_ratios: list[float] = []
    same_labels = True
    with client() as http:
        for run in range(repeat):
            gc.collect()
            phases, service_labels = resource_flow(http, url, path, rows, timeout)
            gc.collect()
            local, local_labels = inprocess_flow(path)
            gc.collect()
            classic, classic_labels = classic_flow(http, url, path, rows, run)
            service_runs.append(phases)
            local_runs.append(local)
            classic_runs.append(classic)
            ratios.append(phases["total"] / local["total"])
            classic_ratios.append(classic / local["total"])
            same_labels &= service_labels.rstrip("\n") == local_labels == classic_labels.rstrip("\n")
            del service_labels, local_labels, classic_labels
    local_total = median([r["total"] for r in local_runs])
    ratio = median(ratios)
    size = f"{rows:,}x{N_FEATURES}"
    report.rows.append(Row(f"1  ingest+fit+labels {size}, raw CSV /datasets + /models",
                           seconds(median([r["total"] for r in service_runs])), seconds(local_total),
                           f"{ratio:.2f}", "<= 1.3", ratio <= 1.3))
    classic_ratio = median(classic_ratios)
    report.rows.append(Row("1b same via classic multipart /upload + /fit",
                           seconds(median(classic_runs)), seconds(local_total),
                           f"{classic_ratio:.2f}", "<= 1.3", classic_ratio <= 1.3))

    def phase(runs: list[dict[str, float]], key: str) -> str:
        return seconds(median([r[key] for r in runs]), 3)

    report.notes.append(
        f"1: service phases: upload+parse+store {phase(service_runs, 'upload')}, "
        f"fit until seen succeeded {phase(service_runs, 'fit')} "
        f"(server fit_seconds {phase(service_runs, 'server_fit')}), "
        f"labels {phase(service_runs, 'labels')}; in-process: read_csv {phase(local_runs, 'read')}, "
        f"fit {phase(local_runs, 'fit')}, labels text {phase(local_runs, 'format')}; "
        f"labels identical to in-process in every run: {'yes' if same_labels else 'NO'}"
    )


# -- item 2: ingest memory ----------------------------------------------------------------------


def warm_up_workers(url: str, small_csv: bytes, workers: int) -> None:
    """Small multipart uploads on fresh connections, so that every worker has served one."""
    for i in range(4 * workers):
        files = {"file": (f"warm-{i}.csv", small_csv, "text/csv")}
        expect(httpx.post(f"{url}/kmeans/datasets", files=files, timeout=60), 201)


def item2(report: Report, tmp: Path, path: Path, rows: int, repeat: int) -> None:
    array_bytes = rows * N_FEATURES * 8
    small_csv = csv_bytes(blobs(1000, seed=7))
    growths: list[float] = []
    sampled_only: list[float] = []
    upload_times: list[float] = []
    samples = 0
    for run in range(repeat):
        with service(tmp, f"memory-{run}") as server:
            workers = children(server.proc.pid)
            if not workers:
                raise RuntimeError("found no gunicorn worker processes")
            warm_up_workers(server.url, small_csv, len(workers))
            time.sleep(0.3)
            before = {pid: memory(pid) for pid in workers}
            sampler = RssSampler(workers, max_seconds=900)
            sampler.start()
            try:
                with open(path, "rb") as handle, client() as http:
                    mark = time.perf_counter()
                    files = {"file": (path.name, handle, "text/csv")}
                    response = http.post(f"{server.url}/kmeans/datasets", files=files)
                    took = time.perf_counter() - mark
                expect(response, 201)
                time.sleep(0.1)
            finally:
                sampler.stop()
            if response.json()["rows"] != rows:
                raise RuntimeError(f"the service read {response.json()['rows']} rows, not {rows}")
            after = {pid: memory(pid) for pid in workers}
            samples += sampler.samples
            upload_times.append(took)
            best = best_sampled = 0.0
            for pid in workers:
                base_rss, base_hwm = before[pid]
                peak = sampler.peak[pid]
                hwm_after = after[pid][1]
                if hwm_after > base_hwm:  # the high-water mark rose during the upload: exact peak
                    peak = max(peak, hwm_after)
                best = max(best, peak - base_rss)
                best_sampled = max(best_sampled, sampler.peak[pid] - base_rss)
            growths.append(best)
            sampled_only.append(best_sampled)
    growth = median(growths)
    multiple = growth / array_bytes
    size_mb = path.stat().st_size / MB
    report.rows.append(Row(
        f"2  peak worker RSS growth, multipart {rows:,}x{N_FEATURES} CSV ({size_mb:.0f} MB)",
        f"{growth / MB:.0f} MB", f"{array_bytes / MB:.0f} MB array", f"{multiple:.2f}x", "<= 2x", multiple <= 2.0,
    ))
    report.notes.append(
        f"2: upload of {size_mb:.0f} MB took {seconds(median(upload_times))} "
        f"({size_mb / median(upload_times):.0f} MB/s); growth from 10 ms RSS samples alone "
        f"{median(sampled_only) / MB:.0f} MB, with VmHWM {growth / MB:.0f} MB; "
        f"{samples // max(1, repeat)} samples per run; a fresh server per run"
    )


# -- item 3: CSV predict ------------------------------------------------------------------------


def item3(report: Report, url: str, model_id: str, centers: np.ndarray, runs: int, repeat: int) -> None:
    from sklearn.metrics import pairwise_distances_argmin

    body = csv_bytes(blobs(10_000, seed=3))
    headers = {"Content-Type": "text/csv", "Accept": "text/csv"}
    target = f"{url}/kmeans/models/{model_id}/predictions"

    def local() -> np.ndarray:
        return pairwise_distances_argmin(read_csv_local(io.BytesIO(body)), centers)

    service_times: list[float] = []
    local_times: list[float] = []
    ratios: list[float] = []
    with client(60) as http:
        for _ in range(3):  # warm-up
            expect(http.post(target, content=body, headers=headers), 200)
            local()
        for _ in range(repeat):
            batch_service: list[float] = []
            batch_local: list[float] = []
            for _ in range(runs):  # interleaved, so that both sides see the same machine
                took, response = timed(lambda: http.post(target, content=body, headers=headers))
                expect(response, 200)
                batch_service.append(took)
                took, labels = timed(local)
                batch_local.append(took)
            ratios.append(median(batch_service) / median(batch_local))
            service_times += batch_service
            local_times += batch_local
    if response.text.split() != [str(x) for x in labels.tolist()]:
        raise RuntimeError("the service's predictions differ from the in-process ones")
    ratio = median(ratios)
    report.rows.append(Row("3  predict 10,000-row CSV (raw text/csv -> text/csv)",
                           millis(median(service_times)), millis(median(local_times)),
                           f"{ratio:.2f}", "<= 2", ratio <= 2.0))
    report.notes.append(f"3: {repeat} x {runs} calls each way, interleaved; in-process is pandas.read_csv + "
                        "sklearn.metrics.pairwise_distances_argmin (what KMeans.predict computes)")


# -- item 4: one-row JSON predict rate ----------------------------------------------------------


def request_rate(url: str, body: bytes, seconds_: float, max_requests: int) -> float:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)) as http:
        deadline = time.monotonic() + 0.3
        for _ in range(200):  # warm-up, at most 0.3 s
            expect(http.post(url, content=body, headers=headers), 200)
            if time.monotonic() > deadline:
                break
        count = 0
        started = time.perf_counter()
        stop_at = started + seconds_
        while count < max_requests:
            response = http.post(url, content=body, headers=headers)
            if response.status_code != 200:
                expect(response, 200)
            count += 1
            if time.perf_counter() >= stop_at:
                break
        return count / (time.perf_counter() - started)


def item4(report: Report, tmp: Path, main: Server, model_id: str, centers: np.ndarray, train_csv: bytes,
          repeat: int, duration: float) -> None:
    point = blobs(1, seed=4)[0].tolist()
    body = json.dumps({"data": [point]}).encode()
    expected = int(((centers - np.asarray(point)) ** 2).sum(axis=1).argmin())
    rates: dict[str, list[float]] = {"prod": [], "one": [], "bare": []}
    ratios_prod: list[float] = []
    ratios_one: list[float] = []
    with service(tmp, "one-worker", workers=1) as one, bare_starlette(tmp, centers) as bare:
        one_model, _ = train_model(one.url, train_csv)  # the same data and params as on the main server
        targets = {
            "prod": f"{main.url}/kmeans/models/{model_id}/predictions",
            "one": f"{one.url}/kmeans/models/{one_model}/predictions",
            "bare": f"{bare.url}/predict",
        }
        for name, url in targets.items():
            labels = expect(httpx.post(url, content=body, headers={"Content-Type": "application/json"}), 200).json()
            if labels["labels"] != [expected]:
                raise RuntimeError(f"{name} answered {labels}, expected label {expected}")
        for _ in range(repeat):
            for name, url in targets.items():
                rates[name].append(request_rate(url, body, duration, max_requests=200_000))
            ratios_prod.append(rates["prod"][-1] / rates["bare"][-1])
            ratios_one.append(rates["one"][-1] / rates["bare"][-1])
    bare_rate = f"{median(rates['bare']):.0f} req/s"
    report.rows.append(Row("4  one-row JSON predict, 1 keep-alive conn, production (2 workers)",
                           f"{median(rates['prod']):.0f} req/s", bare_rate, f"{median(ratios_prod):.2f}",
                           "(info)", None))
    ratio = median(ratios_one)
    report.rows.append(Row("4  same, service --workers 1 vs bare Starlette, 1 worker",
                           f"{median(rates['one']):.0f} req/s", bare_rate, f"{ratio:.2f}", ">= 0.4", ratio >= 0.4))
    report.notes.append(f"4: {duration:g} s per measurement after a warm-up, sequential requests, httpx client "
                        "on the same machine (its CPU time is part of every figure)")


# -- item 6: one-row JSON predict on both app classes ---------------------------------------------


def item6(report: Report, tmp: Path, repeat: int, duration: float) -> None:
    """Item 4's one-row predict rate, 1 worker, on AsyncApp and on FlaskApp (KMEANS_APP)."""
    train_csv = csv_bytes(blobs(20_000, seed=1))
    point = blobs(1, seed=4)[0].tolist()
    body = json.dumps({"data": [point]}).encode()
    rates: dict[str, list[float]] = {"async": [], "flask": []}
    ratios: list[float] = []
    with service(tmp, "async-app", workers=1, app="async") as on_async, \
            service(tmp, "flask-app", workers=1, app="flask") as on_flask:
        targets = {}
        for name, server in (("async", on_async), ("flask", on_flask)):
            model_id, centers = train_model(server.url, train_csv)
            targets[name] = f"{server.url}/kmeans/models/{model_id}/predictions"
            expected = int(((centers - np.asarray(point)) ** 2).sum(axis=1).argmin())
            labels = expect(httpx.post(targets[name], content=body, headers={"Content-Type": "application/json"}),
                            200).json()
            if labels["labels"] != [expected]:
                raise RuntimeError(f"KMEANS_APP={name} answered {labels}, expected label {expected}")
        for _ in range(repeat):
            for name, url in targets.items():
                rates[name].append(request_rate(url, body, duration, max_requests=200_000))
            ratios.append(rates["flask"][-1] / rates["async"][-1])
    report.rows.append(Row("6  one-row JSON predict, --workers 1, KMEANS_APP=flask vs async",
                           f"{median(rates['flask']):.0f} req/s", f"{median(rates['async']):.0f} req/s",
                           f"{median(ratios):.2f}", "(info)", None))
    report.notes.append(f"6: as 4, {duration:g} s per measurement; service column FlaskApp, reference AsyncApp")


def train_model(url: str, train_csv: bytes) -> tuple[str, np.ndarray]:
    """Upload ``train_csv``, fit it with FIT_PARAMS, return (model id, centers)."""
    with client(120) as http:
        dataset = expect(http.post(f"{url}/kmeans/datasets", content=train_csv,
                                   headers={"Content-Type": "text/csv"}), 201).json()
        model = fit_model(http, url, dataset["id"], 120)
        centers = expect(http.get(f"{url}/kmeans/models/{model['id']}/centers"), 200).json()["centers"]
    return model["id"], np.asarray(centers, dtype=np.float64)


# -- item 5: mixed-type tables ------------------------------------------------------------------


def mixed_table(rows: int, seed: int) -> Any:
    """A seeded mixed table (a pandas DataFrame, columns MIXED_COLUMNS): ids R0000001, R0000002, ...;
    six numeric columns of Gaussian blobs (N_CLUSTERS centers) on different scales, MIXED_MISSING of
    each column missing; two categorical columns of 10 words that follow the blob in 80% of the rows
    (a random word otherwise), MIXED_CATEGORY_MISSING of them missing."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = len(MIXED_NUMERIC)
    centers = rng.uniform(-10.0, 10.0, (N_CLUSTERS, n))
    cluster = rng.integers(0, N_CLUSTERS, rows)
    scales = np.array([1.0, 10.0, 0.1, 100.0, 1.0, 5.0])
    numbers = (centers[cluster] + rng.normal(0.0, 1.0, (rows, n))) * scales
    numbers[rng.random((rows, n)) < MIXED_MISSING] = np.nan
    width = max(7, len(str(rows)))
    columns: dict[str, Any] = {"id": np.char.add("R", np.char.zfill(np.arange(1, rows + 1).astype(str), width))}
    columns.update({name: numbers[:, j] for j, name in enumerate(MIXED_NUMERIC)})
    for name in MIXED_CATEGORICAL:
        words = np.asarray(MIXED_CATEGORIES[name], dtype=object)
        follows = rng.permutation(len(words))[:N_CLUSTERS][cluster]
        codes = np.where(rng.random(rows) < 0.8, follows, rng.integers(0, len(words), rows))
        cells = words[codes]
        cells[rng.random(rows) < MIXED_CATEGORY_MISSING] = None
        columns[name] = cells
    return pd.DataFrame({name: columns[name] for name in MIXED_COLUMNS})


def mixed_pipeline() -> Any:
    """The in-process equivalent of the service's preprocessing of a mixed table: numbers filled
    with the column mean, then z-scored; each category one-hot, a missing one its own column,
    not scaled. Dense output, as the service's design matrix is."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), MIXED_NUMERIC),
        ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY),
                              OneHotEncoder(sparse_output=False)), MIXED_CATEGORICAL),
    ])


def inprocess_mixed(read: Callable[[], Any]) -> tuple[dict[str, float], np.ndarray]:
    """``read()`` (a DataFrame) + mixed_pipeline + KMeans + "id,label" text; phases and labels."""
    from sklearn.cluster import KMeans

    phases: dict[str, float] = {}
    started = time.perf_counter()
    frame = read()
    mark = time.perf_counter()
    phases["read"] = mark - started
    design = mixed_pipeline().fit_transform(frame)
    now = time.perf_counter()
    phases["prepare"] = now - mark
    labels = KMeans(**FIT_PARAMS).fit(design).labels_
    mark = time.perf_counter()
    phases["fit"] = mark - now
    text = "id,label\n" + "\n".join(map(",".join, zip(frame["id"].tolist(), map(str, labels.tolist()),
                                                      strict=True))) + "\n"
    now = time.perf_counter()
    phases["format"] = now - mark
    phases["total"] = now - started
    del text
    return phases, labels


class IngestMemory:
    """Peak RSS growth of a server's workers during one upload: 10 ms /proc samples, plus VmHWM
    when the high-water mark rose during the upload (then it is the exact peak)."""

    def __init__(self, workers: list[int]) -> None:
        self.workers = workers
        self.before: dict[int, tuple[int, int]] = {}
        self.after: dict[int, tuple[int, int]] = {}
        self.sampler = RssSampler(workers, max_seconds=900)

    def start(self) -> None:
        self.before = {pid: memory(pid) for pid in self.workers}
        self.sampler.start()

    def stop(self) -> None:
        self.sampler.stop()
        self.after = {pid: memory(pid) for pid in self.workers}

    def growth(self) -> tuple[float, float]:
        """(growth with VmHWM, growth from the samples alone), the largest over the workers, in bytes."""
        best = best_sampled = 0.0
        for pid in self.workers:
            base_rss, base_hwm = self.before[pid]
            peak = self.sampler.peak[pid]
            if self.after[pid][1] > base_hwm:
                peak = max(peak, self.after[pid][1])
            best = max(best, peak - base_rss)
            best_sampled = max(best_sampled, self.sampler.peak[pid] - base_rss)
        return best, best_sampled


@dataclass
class MixedFlow:
    """One way of item 5 through the service, and its in-process reference."""

    key: str  # of its table row ("5 ", "5b", ...)
    text: str
    label: str
    path: Path
    content_type: str
    multipart: bool
    read: Callable[[], Any]  # the in-process read: a DataFrame
    reference: str
    target: float
    memory_key: str
    memory_judged: bool  # whether the <= 2x memory target applies (else informative)
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def mixed_service_flow(
    http: httpx.Client, url: str, flow: MixedFlow, rows: int, timeout: float, watch: IngestMemory
) -> tuple[dict[str, float], dict[str, Any], str]:
    """Upload (streamed from the file, as the raw body or a multipart part; ``watch`` samples the
    workers meanwhile), fit, labels as CSV: (phases, the dataset record, the labels text)."""
    phases: dict[str, float] = {}
    watch.start()
    try:
        started = time.perf_counter()
        with open(flow.path, "rb") as handle:
            if flow.multipart:
                response = http.post(f"{url}/kmeans/datasets",
                                     files={"file": (flow.path.name, handle, flow.content_type)})
            else:
                response = http.post(f"{url}/kmeans/datasets", params={"name": flow.path.name}, content=handle,
                                     headers={"Content-Type": flow.content_type})
        phases["upload"] = time.perf_counter() - started
    finally:
        watch.stop()
    dataset = expect(response, 201).json()
    if dataset["rows"] != rows:
        raise RuntimeError(f"the service read {dataset['rows']} rows, not {rows}")
    types = {column["name"]: column["type"] for column in dataset["schema"]}
    wanted = {"id": "id", **dict.fromkeys(MIXED_NUMERIC, "numeric"), **dict.fromkeys(MIXED_CATEGORICAL, "categorical")}
    if types != wanted:
        raise RuntimeError(f"the service typed the columns {types}, expected {wanted}")
    mark = time.perf_counter()
    model = fit_model(http, url, dataset["id"], timeout, MIXED_FIT_PARAMS)
    phases["fit"] = time.perf_counter() - mark
    phases["server_fit"] = float(model.get("fit_seconds") or 0.0)
    mark = time.perf_counter()
    labels = expect(http.get(f"{url}/kmeans/models/{model['id']}/labels", headers={"Accept": "text/csv"}), 200).text
    now = time.perf_counter()
    phases["labels"] = now - mark
    phases["total"] = now - started
    return phases, dataset, labels


def parse_id_labels(text: str) -> tuple[list[str], np.ndarray]:
    """The "id,label" CSV of GET /labels as (ids, labels)."""
    lines = text.splitlines()
    if not lines or lines[0] != "id,label":
        raise RuntimeError(f"the labels CSV starts with {lines[:1]}, expected the header id,label")
    pairs = [line.rsplit(",", 1) for line in lines[1:]]
    return [p[0] for p in pairs], np.asarray([int(p[1]) for p in pairs])


def warm_up_mixed(url: str, bodies: list[tuple[str, bytes, bool]], workers: int) -> None:
    """Small mixed uploads (each (content type, body, multipart) of ``bodies``), fits and labels
    on fresh connections, so that every worker has read each format (pyarrow imported) and its
    fit processes are started."""
    for _ in range(2 * workers):
        with client(120) as http:
            for content_type, body, multipart in bodies:
                if multipart:
                    response = http.post(f"{url}/kmeans/datasets", files={"file": ("warm.csv", body, content_type)})
                else:
                    response = http.post(f"{url}/kmeans/datasets", content=body, headers={"Content-Type": content_type})
                dataset = expect(response, 201).json()
                model = fit_model(http, url, dataset["id"], 120, MIXED_FIT_PARAMS)
                expect(http.get(f"{url}/kmeans/models/{model['id']}/labels", headers={"Accept": "text/csv"}), 200)


def stored_arrays(data_dir: Path, dataset_id: str) -> dict[str, int]:
    """Bytes on disk of a dataset's arrays (whatever files the store keeps them in): numeric
    values (``<id>.npy``), categorical codes (``<id>.codes.*``), ids (``<id>.ids.*``)."""
    sizes: dict[str, int] = {}
    for path in (data_dir / "datasets").glob(f"{dataset_id}.*"):
        part = path.name[len(dataset_id) + 1:].split(".")[0]
        kind = {"codes": "codes", "ids": "ids"}.get(part, "values")
        sizes[kind] = sizes.get(kind, 0) + path.stat().st_size
    return sizes


def mixed_run(
    tmp: Path, flow: MixedFlow, name: str, rows: int, expected_ids: list[str], warm: list[tuple[str, bytes, bool]]
) -> dict[str, Any]:
    """One run of ``flow``: a fresh server, warmed up; the upload (memory sampled), fit and labels;
    then the in-process reference; the labels compared."""
    from sklearn.metrics import adjusted_rand_score

    timeout = max(300.0, rows / 1e6 * 900)
    with service(tmp, name) as server:
        try:
            workers = children(server.proc.pid)
            if not workers:
                raise RuntimeError("found no gunicorn worker processes")
            warm_up_mixed(server.url, warm, len(workers))
            time.sleep(0.3)
            watch = IngestMemory(workers)
            gc.collect()
            with client() as http:
                phases, dataset, labels_text = mixed_service_flow(http, server.url, flow, rows, timeout, watch)
            assert server.data_dir is not None
            stored = stored_arrays(server.data_dir, dataset["id"])
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FlowFailed(f"{first} (server log: {server.reason()})") from exc
    gc.collect()
    local, local_labels = inprocess_mixed(flow.read)
    ids, labels = parse_id_labels(labels_text)
    del labels_text
    if ids != expected_ids:
        raise RuntimeError(f"the {flow.label} labels' ids are not the table's ids in its order")
    growth, sampled = watch.growth()
    return {
        "service": phases, "local": local, "ratio": phases["total"] / local["total"], "growth": growth,
        "sampled": sampled, "samples": watch.sampler.samples, "stored": stored,
        "ari": float(adjusted_rand_score(local_labels, labels)), "same": bool(np.array_equal(local_labels, labels)),
    }


class FlowFailed(RuntimeError):
    """A flow of item 5 failed on the server's side (the message names the server log's last error)."""


def item5(report: Report, tmp: Path, rows: int, repeat: int, step: Callable[[str], None]) -> None:
    import pandas as pd
    import pyarrow.parquet as pq

    step(f"writing the {rows:,}-row mixed table as CSV and Parquet")
    frame = mixed_table(rows, seed=5)
    expected_ids = frame["id"].tolist()
    csv_path = tmp / f"mixed-{rows}.csv"
    parquet_path = tmp / f"mixed-{rows}.parquet"
    frame.to_csv(csv_path, index=False, float_format="%.5f")
    frame.to_parquet(parquet_path, index=False)
    del frame
    file_mb = {csv_path: csv_path.stat().st_size / MB, parquet_path: parquet_path.stat().st_size / MB}
    small = mixed_table(2000, seed=6)
    small_csv = small.to_csv(index=False, float_format="%.5f").encode()
    small_parquet = small.to_parquet(index=False)
    warm = [("text/csv", small_csv, False), ("text/csv", small_csv, True), (PARQUET_TYPE, small_parquet, False)]

    def read_csv() -> Any:
        return pd.read_csv(csv_path)

    def read_parquet() -> Any:
        return pq.read_table(parquet_path).to_pandas()

    size = f"{rows:,}-row mixed"
    flows = [
        MixedFlow("5 ", f"ingest+fit+labels {size} CSV (6 num 5% NA, 2 cat, id), raw text/csv", "raw CSV", csv_path,
                  "text/csv", False, read_csv, "pandas.read_csv", 1.5, "5m", True),
        MixedFlow("5b", f"same, {size} Parquet (raw) vs pyarrow.parquet.read_table", "Parquet", parquet_path,
                  PARQUET_TYPE, False, read_parquet, "pyarrow.parquet.read_table(...).to_pandas()", 1.3, "5p", False),
        MixedFlow("5c", "same CSV as a streamed multipart upload", "multipart CSV", csv_path, "text/csv", True,
                  read_csv, "pandas.read_csv", 1.5, "5n", True),
    ]
    # The in-process side's first-call costs (imports, the first fit) are paid here, untimed.
    inprocess_mixed(lambda: pd.read_csv(io.BytesIO(small_csv)))
    inprocess_mixed(lambda: pq.read_table(io.BytesIO(small_parquet)).to_pandas())
    for run in range(repeat):
        for flow in flows:
            if flow.error is not None:  # it failed in an earlier run: not again
                continue
            step(f"item 5: run {run + 1}/{repeat}, {flow.label}: a fresh server (warm-up, upload, fit, labels), "
                 "then in-process")
            try:
                flow.runs.append(mixed_run(tmp, flow, f"mixed-{flow.key.strip()}-{run}", rows, expected_ids, warm))
            except Exception as exc:  # this way is reported as failed; the others go on
                traceback.print_exc()
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                flow.error = f"run {run + 1}: {type(exc).__name__}: {first}"
    csv_path.unlink()
    parquet_path.unlink()

    def phase(flow: MixedFlow, side: str, key: str) -> str:
        return seconds(median([r[side][key] for r in flow.runs]), 3)

    for flow in flows:
        target = f"<= {flow.target:g}"
        if flow.error is not None or not flow.runs:
            report.rows.append(Row(f"{flow.key} {flow.text}: FAILED", "-", "-", "-", target, None, error=True))
            report.rows.append(Row(f"{flow.memory_key} peak worker RSS growth, {flow.label} ingest: FAILED",
                                   "-", "-", "-", "<= 2x" if flow.memory_judged else "(info)", None, error=True))
            report.notes.append(f"{flow.key.strip()}: {flow.label} FAILED in {flow.error}")
            continue
        service_total = median([r["service"]["total"] for r in flow.runs])
        local_total = median([r["local"]["total"] for r in flow.runs])
        ratio = median([r["ratio"] for r in flow.runs])
        report.rows.append(Row(f"{flow.key} {flow.text}", seconds(service_total), seconds(local_total),
                               f"{ratio:.2f}", target, ratio <= flow.target))
        growth = median([r["growth"] for r in flow.runs])
        stored = median([sum(r["stored"].values()) for r in flow.runs])
        multiple = growth / stored
        report.rows.append(Row(
            f"{flow.memory_key} peak worker RSS growth, {flow.label} ingest ({file_mb[flow.path]:.0f} MB file)",
            f"{growth / MB:.0f} MB", f"{stored / MB:.0f} MB stored arrays", f"{multiple:.2f}x",
            "<= 2x" if flow.memory_judged else "(info)", multiple <= 2.0 if flow.memory_judged else None,
        ))
        report.notes.append(
            f"{flow.key.strip()}: {flow.label}: service phases: upload+parse+store {phase(flow, 'service', 'upload')}, "
            f"fit until seen succeeded {phase(flow, 'service', 'fit')} "
            f"(server fit_seconds {phase(flow, 'service', 'server_fit')}), labels {phase(flow, 'service', 'labels')}; "
            f"in-process: {flow.reference} {phase(flow, 'local', 'read')}, ColumnTransformer.fit_transform "
            f"{phase(flow, 'local', 'prepare')}, KMeans.fit {phase(flow, 'local', 'fit')}, "
            f"id,label text {phase(flow, 'local', 'format')}; peak RSS growth from 10 ms samples alone "
            f"{median([r['sampled'] for r in flow.runs]) / MB:.0f} MB "
            f"({median([r['samples'] for r in flow.runs]):.0f} samples)"
        )
    done = [flow for flow in flows if flow.runs]
    if done:
        worst = {flow.label: min(r["ari"] for r in flow.runs) for flow in done}
        agree = all(value >= MIN_ARI for value in worst.values())
        report.rows.append(Row(f"5a labels vs in-process, adjusted Rand index, lowest run: {' / '.join(worst)}",
                               " / ".join(f"{v:.4f}" for v in worst.values()), "1 = same partition", "-",
                               f">= {MIN_ARI}", agree))
        same = sum(r["same"] for flow in done for r in flow.runs)
        every = "; ".join(flow.label + " " + ", ".join(f"{r['ari']:.4f}" for r in flow.runs) for flow in done)
        report.notes.append(
            f"5a: adjusted Rand index of every run: {every}; labels identical to in-process in {same} of "
            f"{sum(len(flow.runs) for flow in done)} runs; "
            f"{'agreement as expected' if agree else f'AGREEMENT BELOW {MIN_ARI}'}; in-process: "
            f"SimpleImputer(mean)+StandardScaler, SimpleImputer({MISSING_CATEGORY!r})+OneHotEncoder(sparse_output="
            "False), KMeans(n_clusters=8, n_init=1, random_state=0)"
        )
    stored = next((flow.runs[0]["stored"] for flow in done), None)
    if stored is not None:
        report.notes.append(
            f"5m: stored arrays values {stored.get('values', 0) / MB:.0f} MB + codes {stored.get('codes', 0) / MB:.0f}"
            f" MB + ids {stored.get('ids', 0) / MB:.0f} MB (sizes on disk); a fresh server per way and run, warmed up"
            " with small mixed uploads, fits and labels"
        )


# -- main ---------------------------------------------------------------------------------------


def machine() -> str:
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
                break
    versions = []
    for package in ("numpy", "pandas", "scikit-learn", "connexion", "starlette", "gunicorn", "uvicorn", "httpx"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} ?")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} cores, {mem_kb / 1024**2:.1f} GiB RAM, {platform.machine()}, "
        f"load average {load} at start\n"
        f"python {platform.python_version()}; " + ", ".join(versions)
    )


def table(rows: list[Row]) -> str:
    header = ("item", "service", "in-process / reference", "ratio", "target", "result")
    cells = [header] + [(r.item, r.service, r.reference, r.ratio, r.target, r.verdict) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        lines.append("  ".join(padded))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None,
                        help="rows of item 1 (default 1,000,000; 100,000 with --quick)")
    parser.add_argument("--repeat", type=int, default=None, help="runs behind each median (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small sizes and short durations")
    parser.add_argument("--mixed-rows", type=int, default=None,
                        help="rows of item 5's mixed table (default 1,000,000; 20,000 with --quick)")
    parser.add_argument("--only", "--items", dest="only", default="1,2,3,4,5,6",
                        help="items to run, e.g. 1,3 (default all)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server logs and print where they are")
    args = parser.parse_args(argv)
    try:
        args.items = sorted({int(x) for x in args.only.split(",") if x.strip()})
    except ValueError:
        parser.error("--only takes item numbers 1-6 separated by commas")
    if not args.items or not set(args.items) <= {1, 2, 3, 4, 5, 6}:
        parser.error("--only takes item numbers 1-6 separated by commas")
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.mixed_rows = args.mixed_rows or (20_000 if args.quick else 1_000_000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.rows < N_CLUSTERS or args.repeat < 1:
        parser.error("--rows must be at least 8 and --repeat at least 1")
    if args.mixed_rows < 2000:  # fewer rows could make an id look like a category, or miss a category
        parser.error("--mixed-rows must be at least 2000")
    args.memory_rows = 150_000 if args.quick else 1_500_000
    args.predict_runs = 5 if args.quick else 20
    args.duration = 0.5 if args.quick else 3.0
    return args


def attempt(report: Report, items: str, fn: Callable[[], Any]) -> bool:
    """Run ``fn``; on an error, report it as a failed row (traceback on stderr) and go on."""
    try:
        fn()
    except Exception as exc:
        traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        report.rows.append(Row(f"{items:<2} failed, see the note", "-", "-", "-", "-", None, error=True))
        report.notes.append(f"{items}: FAILED: {type(exc).__name__}: {message} (traceback above)")
        return False
    return True


def main_server_items(report: Report, tmp: Path, args: argparse.Namespace, step: Callable[[str], None]) -> None:
    """Items 1, 3 and 4 on one production server."""
    step("starting the production server")
    with service(tmp, "main") as main_server:
        if 1 in args.items:
            def run_item1() -> None:
                step(f"writing {args.rows:,}x{N_FEATURES} CSV")
                path = write_csv(tmp / f"fit-{args.rows}.csv", blobs(args.rows, seed=1))
                step(f"item 1: {args.repeat} run(s) of service, in-process and classic")
                item1(report, main_server.url, path, args.rows, args.repeat)
                path.unlink()

            attempt(report, "1", run_item1)
        if not set(args.items) & {3, 4}:
            return
        step("fitting the model for items 3 and 4 (20,000 rows)")
        train_csv = csv_bytes(blobs(20_000, seed=1))
        model_id, centers = train_model(main_server.url, train_csv)
        if 3 in args.items:
            step(f"item 3: {args.repeat} x {args.predict_runs} CSV predictions each way")
            attempt(report, "3", lambda: item3(report, main_server.url, model_id, centers, args.predict_runs,
                                               args.repeat))
        if 4 in args.items:
            step(f"item 4: {args.repeat} x {args.duration:g} s per server")
            attempt(report, "4", lambda: item4(report, tmp, main_server, model_id, centers, train_csv,
                                               args.repeat, args.duration))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that the servers (in their own sessions) are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    started = time.monotonic()
    print(machine(), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="kmeans-bench-"))
    report = Report()
    try:
        def step(message: str) -> None:
            print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

        if 2 in args.items:
            def run_item2() -> None:
                step(f"writing {args.memory_rows:,}x{N_FEATURES} CSV")
                path = write_csv(tmp / f"memory-{args.memory_rows}.csv", blobs(args.memory_rows, seed=2))
                step(f"item 2: {args.repeat} fresh server(s), multipart ingest of {path.stat().st_size / MB:.0f} MB")
                item2(report, tmp, path, args.memory_rows, args.repeat)
                path.unlink()

            attempt(report, "2", run_item2)
        main_items = [n for n in args.items if n not in (2, 5, 6)]
        if main_items:
            attempt(report, ",".join(map(str, main_items)), lambda: main_server_items(report, tmp, args, step))
        if 5 in args.items:
            attempt(report, "5", lambda: item5(report, tmp, args.mixed_rows, args.repeat, step))
        if 6 in args.items:
            step(f"item 6: {args.repeat} x {args.duration:g} s on each app class")
            attempt(report, "6", lambda: item6(report, tmp, args.repeat, args.duration))
        report.rows.sort(key=lambda r: r.item[:2])
        print()
        print(table(report.rows))
        print()
        for note in sorted(report.notes):
            print(note)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"medians of {args.repeat} run(s); total time {time.monotonic() - started:.0f} s; "
              f"load average {load} at the end")
        return 1 if any(r.error for r in report.rows) else 0
    finally:
        if args.keep_logs:
            logs = tmp.parent / f"{tmp.name}-logs"
            logs.mkdir()
            for log in tmp.glob("*.log"):
                shutil.move(log, logs / log.name)
            print(f"server logs kept in {logs}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
