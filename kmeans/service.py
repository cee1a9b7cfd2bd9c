"""Use cases of the service. Imports no web framework: handlers call in, errors come out."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from kmeans import csvio, engine
from kmeans.config import Settings
from kmeans.errors import (
    Conflict,
    FitFailed,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    Unprocessable,
)
from kmeans.jobs import LocalRunner, worker_alive, worker_name
from kmeans.multipart import SpooledFile
from kmeans.store import ACTIVE, Store, new_id, now

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
DEFAULT_N_CLUSTERS = 8
PUBLIC_HIDDEN = ("worker",)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What an upload arrives as: a file already on disk (streamed multipart) or a raw body stream.
Upload = SpooledFile | BinaryIO


def display_name(filename: str | None, fallback: str = "upload.csv") -> str:
    """A client's file name made safe to show: last path part, no control characters."""
    name = _CONTROL.sub("", filename or "")
    name = re.split(r"[/\\]", name)[-1].strip()
    if name in ("", ".", ".."):
        return fallback
    return name[:255]


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in PUBLIC_HIDDEN}


@lru_cache(maxsize=256)
def _cached_centers(path: str) -> np.ndarray:
    # Safe to cache by path: a model's centers never change and ids are never reused.
    return Store.load_array(Path(path))


class KMeansService:
    """Datasets, models and the classic job flow, on top of a Store and a runner."""

    def __init__(self, settings: Settings, store: Store | None = None, runner: LocalRunner | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.data_dir)
        self.runner = runner or LocalRunner(settings.max_concurrent_fits)

    # -- ingest ---------------------------------------------------------------------------

    def _spool(self, stream: BinaryIO) -> SpooledFile:
        """Copy a body to a temp file in bounded chunks, hashing it and enforcing the size limit."""
        limit = self.settings.max_upload_bytes
        digest = hashlib.sha256()
        spooled = SpooledFile(path=self.store.temp_path(".csv"))
        try:
            with open(spooled.path, "wb") as out:
                while chunk := stream.read(CHUNK_BYTES):
                    spooled.size += len(chunk)
                    if spooled.size > limit:
                        raise PayloadTooLarge(f"the upload is larger than the limit of {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            spooled.path.unlink(missing_ok=True)
            raise
        spooled.sha256 = digest.hexdigest()
        return spooled

    def read_table(self, source: Upload) -> tuple[csvio.Table, SpooledFile]:
        """Parse an uploaded CSV: the table, and the file it came in (with its sha256 and size).

        ``source`` is a file already on disk (a streamed multipart part, removed by its
        owner) or a stream, which is spooled to a temp file first and removed here.
        """
        owned = not isinstance(source, SpooledFile)
        spooled = self._spool(source) if owned else source
        try:
            if spooled.size == 0:
                raise Unprocessable("the CSV file is empty: it has no rows")
            with spooled.open() as handle:
                table = csvio.read_csv(handle)
        finally:
            if owned:
                spooled.path.unlink(missing_ok=True)
        return table, spooled

    def _add_dataset(self, table: csvio.Table, name: str, sha: str, size: int) -> dict[str, Any]:
        record = {
            "id": new_id("ds"),
            "name": name,
            "rows": table.rows,
            "n_features": table.n_features,
            "columns": table.columns,
            "sha256": sha,
            "size_bytes": size,
            "created_at": now(),
        }
        self.store.add_dataset(record, table.chunks)
        return record

    def create_dataset_from_stream(self, source: Upload, name: str | None) -> dict[str, Any]:
        """A dataset from CSV bytes."""
        table, spooled = self.read_table(source)
        name = name or getattr(source, "filename", None)
        return self._add_dataset(table, display_name(name, "dataset.csv"), spooled.sha256, spooled.size)

    def create_dataset_from_rows(
        self, data: Sequence[Sequence[float]], columns: Sequence[str] | None, name: str | None
    ) -> dict[str, Any]:
        """A dataset from JSON rows (and optional column names)."""
        values = csvio.check_rows(data)
        if columns is not None:
            if len(columns) != values.shape[1]:
                raise Unprocessable(
                    f"columns names {len(columns)} columns but the rows have {values.shape[1]}",
                    parameter="columns",
                )
            if len(set(columns)) != len(columns):
                raise Unprocessable("columns holds the same name twice", parameter="columns")
        names = list(columns) if columns is not None else csvio.default_columns(values.shape[1])
        canonical = json.dumps({"columns": names, "data": values.tolist()}).encode()
        table = csvio.Table.of(values, names)
        sha = hashlib.sha256(canonical).hexdigest()
        return self._add_dataset(table, display_name(name, "dataset.json"), sha, len(canonical))

    def list_datasets(self, offset: int, limit: int) -> dict[str, Any]:
        items, total = self.store.list_datasets(offset, limit)
        return {"items": items, "offset": offset, "limit": limit, "total": total}

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        record = self.store.get_dataset(dataset_id)
        if record is None:
            raise NotFound(f"no dataset with id {dataset_id}")
        return record

    def delete_dataset(self, dataset_id: str) -> None:
        if not self.store.delete_dataset(dataset_id):
            raise NotFound(f"no dataset with id {dataset_id}")

    def dataset_rows(self, dataset_id: str, offset: int, limit: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Rows ``offset .. offset+limit`` of a dataset, and the dataset."""
        record = self.get_dataset(dataset_id)
        values = self.store.load_array(self.store.dataset_path(dataset_id), mmap=True)
        return np.array(values[offset : offset + limit]), record

    # -- models ---------------------------------------------------------------------------

    def create_model(self, dataset_id: str, params: dict[str, Any] | None) -> dict[str, Any]:
        """Queue a fit of ``dataset_id`` with ``params``; returns the queued model."""
        params = dict(params or {})
        dataset = self.get_dataset(dataset_id)
        k = params.get("n_clusters", DEFAULT_N_CLUSTERS)
        if k > dataset["rows"]:
            default = "" if "n_clusters" in params else ", the default"
            raise Unprocessable(
                f"n_clusters ({k}{default}) is larger than the number of rows ({dataset['rows']})"
                f" of dataset {dataset_id}",
                parameter="n_clusters",
            )
        record = {
            "id": new_id("m"),
            "dataset_id": dataset_id,
            "status": "queued",
            "params": params,
            "created_at": now(),
            "rows": dataset["rows"],
            "n_features": dataset["n_features"],
            "columns": dataset["columns"],
            "worker": worker_name(),
        }
        self.store.add_model(record)
        self.runner.submit(record["id"], lambda: self.run_fit(record["id"]))
        return self.get_model(record["id"])

    def run_fit(self, model_id: str) -> None:
        """Fit a queued model and record the outcome; never raises."""
        try:
            model = self.store.get_model(model_id)
            if model is None or not self.store.update_model(
                model_id, only_if_status=("queued",), status="running", started_at=now(), worker=worker_name()
            ):
                return  # deleted (or taken) while it waited in the queue
            values = self.store.load_array(self.store.dataset_path(model["dataset_id"]), mmap=True)
            started = time.perf_counter()
            result = engine.fit(values, model["params"])
            seconds = time.perf_counter() - started
            sizes = np.bincount(result.labels, minlength=result.centers.shape[0])
            self.store.finish_model(
                model_id,
                result.centers,
                result.labels,
                finished_at=now(),
                fit_seconds=round(seconds, 6),
                inertia=result.inertia,
                n_iter=result.n_iter,
                cluster_sizes=sizes.tolist(),
            )
        except Exception as exc:  # the fit's failure belongs to the model, not the server
            log.exception("fit of model %s failed", model_id)
            detail = str(exc) if isinstance(exc, (ValueError, ProblemError, FileNotFoundError)) else (
                f"the fit failed: {type(exc).__name__}: {exc}"
            )
            if isinstance(exc, FileNotFoundError):
                detail = "the dataset's data file is missing; it was deleted while the fit waited"
            with suppress(Exception):
                self.store.update_model(
                    model_id,
                    only_if_status=ACTIVE,
                    status="failed",
                    finished_at=now(),
                    error=FitFailed(detail).to_problem(),
                )

    def wait_for_model(self, model_id: str, timeout: float) -> dict[str, Any]:
        """Block until the model leaves queued/running (or ``timeout`` passes); return it."""
        deadline = time.monotonic() + timeout
        future = self.runner.local_future(model_id)
        if future is not None:
            with suppress(FutureTimeout):
                future.result(timeout=timeout)
        delay = 0.01
        while True:
            model = self.get_model(model_id)
            if model["status"] not in ACTIVE or time.monotonic() >= deadline:
                return model
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)

    def get_model(self, model_id: str) -> dict[str, Any]:
        record = self.store.get_model(model_id)
        if record is None:
            raise NotFound(f"no model with id {model_id}")
        return _public(record)

    def list_models(
        self, offset: int, limit: int, dataset_id: str | None = None, status: str | None = None
    ) -> dict[str, Any]:
        items, total = self.store.list_models(offset, limit, dataset_id, status)
        return {"items": [_public(m) for m in items], "offset": offset, "limit": limit, "total": total}

    def delete_model(self, model_id: str) -> None:
        if not self.store.delete_model(model_id):
            raise NotFound(f"no model with id {model_id}")

    def _fitted(self, model_id: str) -> dict[str, Any]:
        model = self.get_model(model_id)
        if model["status"] != "succeeded":
            raise Conflict(
                f"model {model_id} is {model['status']}; it has centers and labels only once it has succeeded"
            )
        return model

    def model_labels(self, model_id: str) -> np.ndarray:
        """The training rows' labels."""
        self._fitted(model_id)
        return self.store.load_array(self.store.labels_path(model_id))

    def model_centers(self, model_id: str) -> tuple[np.ndarray, list[str]]:
        """The centers and the column names they are in."""
        model = self._fitted(model_id)
        return _cached_centers(str(self.store.centers_path(model_id))), model["columns"]

    def predict(self, model_id: str, values: np.ndarray) -> np.ndarray:
        """Labels for ``values`` with a fitted model."""
        return self._predict(self._fitted(model_id), values)

    def predict_rows(self, model_id: str, data: Sequence[Sequence[float]]) -> np.ndarray:
        """Labels for JSON rows."""
        return self.predict(model_id, csvio.check_rows(data))

    def predict_stream(self, model_id: str, source: Upload) -> np.ndarray:
        """Labels for the points of an uploaded CSV."""
        model = self._fitted(model_id)  # a 404/409 before reading a possibly large body
        table, _ = self.read_table(source)
        return self._predict(model, table.values)

    def _predict(self, model: dict[str, Any], values: np.ndarray) -> np.ndarray:
        if values.shape[1] != model["n_features"]:
            raise Unprocessable(
                f"the points have {values.shape[1]} columns but model {model['id']} was fitted on"
                f" {model['n_features']} ({', '.join(model['columns'])})"
            )
        return engine.predict(_cached_centers(str(self.store.centers_path(model["id"]))), values)

    # -- classic flow ---------------------------------------------------------------------

    def classic_upload(self, source: Upload, filename: str | None) -> dict[str, Any]:
        """Store an upload and number it; the same name and content give the same job_id."""
        name = display_name(filename)
        table, spooled = self.read_table(source)
        upload = self.store.find_upload(name, spooled.sha256)
        if upload is None:
            dataset = self._add_dataset(table, name, spooled.sha256, spooled.size)
            job_id = self.store.add_upload(name, spooled.sha256, dataset["id"])
        else:
            dataset = self.get_dataset(upload["dataset_id"])
            job_id = upload["job_id"]
        return {
            "job_id": job_id,
            "filename": name,
            "dataset_id": dataset["id"],
            "rows": dataset["rows"],
            "n_features": dataset["n_features"],
        }

    def _upload(self, job_id: int) -> dict[str, Any]:
        upload = self.store.get_upload(job_id)
        if upload is None:
            raise NotFound(f"no upload with job_id {job_id}; POST a file to /kmeans/upload first")
        return upload

    def classic_fit(self, job_id: int, params: dict[str, Any] | None) -> tuple[dict[str, Any], np.ndarray]:
        """Fit the upload ``job_id``, wait for it, and return (model, labels)."""
        upload = self._upload(job_id)
        if self.store.get_dataset(upload["dataset_id"]) is None:
            raise NotFound(f"the dataset of job_id {job_id} ({upload['dataset_id']}) was deleted")
        model = self.create_model(upload["dataset_id"], params)
        model = self.wait_for_model(model["id"], self.settings.fit_wait_seconds)
        if model["status"] in ACTIVE:
            raise Conflict(
                f"model {model['id']} is still {model['status']} after"
                f" {self.settings.fit_wait_seconds} s; follow it at /kmeans/models/{model['id']}"
            )
        if model["status"] != "succeeded":
            error = model.get("error") or {}
            raise FitFailed(error.get("detail", f"the fit ended as {model['status']}"), model_id=model["id"])
        self.store.set_upload_model(job_id, model["id"])
        return model, self.model_labels(model["id"])

    def classic_predict(self, job_id: int, source: Upload) -> tuple[str, np.ndarray]:
        """(model id, labels) for an uploaded CSV with the latest model fitted for ``job_id``."""
        upload = self._upload(job_id)
        if upload["model_id"] is None:
            raise Conflict(f"job_id {job_id} has no fitted model yet; POST it to /kmeans/fit first")
        return upload["model_id"], self.predict_stream(upload["model_id"], source)

    # -- lifecycle ------------------------------------------------------------------------

    def recover_orphans(self) -> int:
        """Fail fits whose process died (a crash or restart); returns how many."""
        count = 0
        for model in self.store.active_models():
            if worker_alive(model.get("worker")):
                continue
            problem = FitFailed(
                f"the server process running this fit ({model.get('worker')}) stopped before it"
                " finished; fit the model again"
            ).to_problem()
            if self.store.update_model(
                model["id"], only_if_status=ACTIVE, status="failed", finished_at=now(), error=problem
            ):
                count += 1
        if count:
            log.warning("marked %d fit(s) of stopped processes as failed", count)
        return count
