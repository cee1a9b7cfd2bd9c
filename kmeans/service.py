"""Use cases of the service. Imports no web framework: handlers call in, errors come out."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import numpy as np

from kmeans import access, csvio, engine, prep, schema, sweeps, webhooks
from kmeans.config import Settings
from kmeans.errors import (
    Conflict,
    FitFailed,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
)
from kmeans.jobs import DaskLauncher, Deliveries, Dispatcher, Launcher, LocalLauncher
from kmeans.multipart import GrowingReader, SpooledFile, SpoolingReader
from kmeans.store import ACTIVE, TERMINAL, Store, new_id, now

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
EVENT_POLL = 0.25  # seconds between looks at a model whose events are streamed
TOKEN_RECHECK_POLLS = 20  # an event stream re-checks its token every this many polls (~5 s)
PRUNE_EVERY = 600.0  # seconds between prunings of finished webhook deliveries
DELIVERIES_KEPT_SECONDS = 7 * 86400  # a finished delivery is kept this long (its outcome stays on the resource)
DEFAULT_N_CLUSTERS = 8
PUBLIC_HIDDEN = ("worker", "run_token", "heartbeat", "version", "callback_secret", "kind")
# What a job of each kind is called.
WHAT = {"fit": "model", "sweep": "sweep", "webhook": "delivery", "evaluation": "evaluation", "scoring": "scoring"}
COLLECTION = {"fit": "models", "sweep": "sweeps", "push": "models", "restore": "models"}  # where an event's resource is
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
    public = {k: v for k, v in record.items() if k not in PUBLIC_HIDDEN}
    if isinstance(public.get("checkpoint"), dict):  # which run saved it is the store's business
        public["checkpoint"] = {k: v for k, v in public["checkpoint"].items() if k != "run"}
    return public


def _public_scoring(record: dict[str, Any]) -> dict[str, Any]:
    from kmeans import scorejob

    return scorejob.public(record)


# Profiles' statistics per (database, model): a model's labels and its dataset's rows never
# change (ids are never reused), so a profile is computed once per process (a second of a
# million rows), then named afresh at each request. The oldest goes past PROFILES_KEPT.
_PROFILES: dict[tuple[str, str], dict[str, Any]] = {}
PROFILES_KEPT = 32
_PROFILES_LOCK = threading.Lock()


@lru_cache(maxsize=256)
def _cached_centers(path: str) -> np.ndarray:
    # Safe to cache by path: a model's centers never change and ids are never reused.
    return Store.load_array(Path(path))


def _parse(
    open_csv: Callable[[], BinaryIO], size: int, options: csvio.Options | None = None,
    expect: csvio.Expect | None = None,
) -> csvio.Table:
    if size == 0:
        raise Unprocessable("the CSV file is empty: it has no rows")
    with open_csv() as handle:
        return csvio.read_csv(handle, options, expect)


async def _wait(event: anyio.Event, seconds: float) -> None:
    """Wait until ``event`` is set, or ``seconds`` at most."""
    with anyio.move_on_after(seconds):
        await event.wait()


def _parse_arriving(spooled: SpooledFile) -> csvio.Table:
    with GrowingReader(spooled) as reader:
        return csvio.read_csv(reader)


# A Parquet or Arrow table may take this many times the upload limit in memory (rows x
# columns x 8 bytes): a CSV of one-digit numbers takes 4 times its size as float64.
TABLE_EXPANSION = 8
# Media types (and file name endings) of the columnar formats a table may come in.
COLUMNAR_TYPES = {
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/vnd.apache.arrow.file": "arrow",
    "application/vnd.apache.arrow.stream": "arrow",
}
COLUMNAR_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".feather": "arrow",
                     ".arrows": "arrow", ".ipc": "arrow"}


def table_format(content_type: str | None, filename: str | None = None) -> str:
    """"csv", "parquet" or "arrow": what an upload holds, by its media type or else its file name."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type in COLUMNAR_TYPES:
        return COLUMNAR_TYPES[media_type]
    suffix = Path(filename or "").suffix.lower()
    return COLUMNAR_SUFFIXES.get(suffix, "csv")


def _public_dataset(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k != "stats"}
    out["schema"] = schema.public(schema.of_dataset(record))
    return out


class KMeansService:
    """Datasets, models and the classic job flow, on top of a Store and a runner."""

    def __init__(self, settings: Settings, store: Store | None = None, launcher: Launcher | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.data_dir)
        self.access = access.Access(
            self.store, settings.auth_required, settings.insecure, settings.access_token_ttl, settings.refresh_token_ttl
        )
        self._launcher = launcher
        self.dispatcher: Dispatcher | None = None
        self._next_prune = 0.0
        # Parses of multipart uploads while they arrive (threads start when first needed).
        self._arriving = ThreadPoolExecutor(4, thread_name_prefix="kmeans-arriving")

    def start(self) -> None:
        """Start running queued fits from this process (and recovering stalled ones)."""
        if self.dispatcher is None:
            removed = self.store.remove_leftovers()  # of processes killed mid-upload or mid-write
            if removed:
                log.info("removed %d temp files that no live process owned", removed)
            data_dir = str(self.store.root.resolve())
            launcher = self._launcher or (
                DaskLauncher(data_dir, self.settings.dask_address)
                if self.settings.dask_address
                else LocalLauncher(data_dir)
            )
            self.dispatcher = Dispatcher(
                self.store,
                launcher,
                self.settings.max_concurrent_fits,
                self.settings.heartbeat_timeout,
                on_terminal=self.notify,
                deliveries=Deliveries(self._deliver, max_attempts=self.settings.webhook_attempts),
                housekeeping=self._housekeeping,
            )
            self.dispatcher.start()

    def stop(self) -> None:
        """Stop running fits here; those running are re-queued for another process."""
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None

    # -- ingest ---------------------------------------------------------------------------

    def parse_as_it_arrives(self, spooled: SpooledFile) -> None:
        """Start parsing a multipart file part while the rest of it still arrives (read_table
        then takes the result): the parse no longer waits for the whole upload."""
        if table_format(spooled.content_type, spooled.filename) == "csv":
            spooled.parsed = self._arriving.submit(_parse_arriving, spooled)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the upload is larger than the limit of {self.settings.max_upload_bytes} bytes")

    def read_table(
        self, source: Upload, hashed: bool = True, options: csvio.Options | None = None,
        expect: csvio.Expect | None = None,
    ) -> tuple[csvio.Table, SpooledFile]:
        """Parse an uploaded CSV: the table, and the file it came in (with its sha256 and size;
        ``hashed`` False: a small body's sha256 is left empty, for callers that never look).

        ``source`` is a file already on disk (a streamed multipart part, removed by its
        owner) or a stream. A stream that ends within CHUNK_BYTES (a typical prediction
        request) is parsed in memory; a longer one is parsed as it arrives, spooled to a temp
        file on the way (which is removed here). ``expect``: what the model the rows are for
        takes (see csvio.Expect).
        """
        if options is not None and options.format != "csv":
            return self._read_columnar(source, options.format, expect)
        plain = options in (None, csvio.Options(), csvio.CLASSIC) and expect is None
        if isinstance(source, SpooledFile):
            # Parsed while it arrived; a parse still waiting for one of the few threads (busy with
            # uploads whose clients are slow, or stalled) is not waited for: the file is here now.
            if source.parsed is not None and not source.parsed.cancel() and source.size and plain:
                table = source.parsed.result()
                if options is not csvio.CLASSIC or (table.delimiter == "," and csvio.all_numbers(table)):
                    return table, source
            return _parse(source.open, source.size, options, expect), source
        head = source.read(CHUNK_BYTES)
        if len(head) < CHUNK_BYTES:  # that was the whole body
            if len(head) > self.settings.max_upload_bytes:
                raise self._too_large()
            sha256 = hashlib.sha256(head).hexdigest() if hashed else ""  # 0.4 ms of a 10,000-row prediction
            received = SpooledFile(path=None, sha256=sha256, size=len(head))
            return _parse(lambda: io.BytesIO(head), len(head), options, expect), received
        path = self.store.temp_path(".csv")
        try:
            with SpoolingReader(source, head, path, self.settings.max_upload_bytes, self._too_large) as reader:
                try:
                    table = csvio.read_csv(reader, options, expect)
                except Unprocessable:
                    reader.finish()  # a body over the size limit is a 413 whatever is in it
                    raise
                return table, reader.finish()
        finally:
            path.unlink(missing_ok=True)

    def _read_columnar(
        self, source: Upload, kind: str, expect: csvio.Expect | None = None
    ) -> tuple[csvio.Table, SpooledFile]:
        """A Parquet or Arrow IPC upload (read from a file: both formats keep their index at the end)."""
        from kmeans import arrowio

        limit = self.settings.max_upload_bytes * TABLE_EXPANSION
        if isinstance(source, SpooledFile):
            if source.path is None or not source.size:
                raise Unprocessable(f"the {arrowio.LABELS[kind]} file is empty")
            return arrowio.read_file(source.path, kind, limit, expect), source
        path = self.store.temp_path(".bin")
        try:
            with SpoolingReader(source, b"", path, self.settings.max_upload_bytes, self._too_large) as reader:
                spooled = reader.finish()
            if not spooled.size:
                raise Unprocessable(f"the {arrowio.LABELS[kind]} file is empty")
            table = arrowio.read_file(path, kind, limit, expect)
            return table, SpooledFile(path=None, sha256=spooled.sha256, size=spooled.size)
        finally:
            path.unlink(missing_ok=True)

    def _add_dataset(
        self, table: csvio.Table, name: str, sha: str, size: int, project: str, id_column: str | None = None
    ) -> dict[str, Any]:
        typed = schema.classify(table, id_column)
        rows = table.rows
        record = {
            "id": new_id("ds"),
            "name": name,
            "rows": rows,
            "n_features": sum(e["type"] != "id" for e in typed.schema),
            "columns": table.columns,
            "sha256": sha,
            "size_bytes": size,
            "created_at": now(),
            "project": project,
            "schema": typed.schema,
            "id_column": typed.id_column,
        }
        self.store.add_dataset(record, typed.numeric, typed.codes, typed.ids)
        return _public_dataset(record)

    def create_dataset_from_stream(
        self,
        source: Upload,
        name: str | None,
        project: str | None = None,
        options: csvio.Options | None = None,
        id_column: str | None = None,
    ) -> dict[str, Any]:
        """A dataset from CSV bytes, in ``project`` (the caller's own by default)."""
        project = self.access.home(project)  # 403/404 before reading the body
        expect = csvio.Expect(text=frozenset([id_column])) if id_column else None  # ids as written: 007
        table, spooled = self.read_table(source, options=options, expect=expect)
        name = name or getattr(source, "filename", None)
        return self._add_dataset(
            table, display_name(name, f"dataset.{(options or csvio.Options()).format}"), spooled.sha256, spooled.size,
            project, id_column,
        )

    def create_dataset_from_rows(
        self,
        data: Sequence[Sequence[Any] | dict],
        columns: Sequence[str] | None,
        name: str | None,
        project: str | None = None,
        id_column: str | None = None,
    ) -> dict[str, Any]:
        """A dataset from JSON rows (arrays, with optional column names, or objects), in ``project``."""
        project = self.access.home(project)
        table = csvio.rows_table(data, columns, csvio.Expect(text=frozenset([id_column])) if id_column else None)
        canonical = json.dumps({"columns": table.columns, "data": data}).encode()
        sha = hashlib.sha256(canonical).hexdigest()
        return self._add_dataset(table, display_name(name, "dataset.json"), sha, len(canonical), project, id_column)

    def list_datasets(self, offset: int, limit: int, project: str | None = None) -> dict[str, Any]:
        """A page of the datasets the caller sees, newest first."""
        items, total = self.store.list_datasets(offset, limit, access.current().scope(project))
        return {"items": [_public_dataset(d) for d in items], "offset": offset, "limit": limit, "total": total}

    def dataset_record(self, dataset_id: str) -> dict[str, Any]:
        return access.visible(self.store.get_dataset(dataset_id), "dataset", dataset_id)

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        """One dataset (404 if unknown or in another project)."""
        return _public_dataset(self.dataset_record(dataset_id))

    def dataset_columns(self, dataset_id: str) -> dict[str, Any]:
        """Per column: type, missing, distinct, min, max, mean, median, stddev, top categories."""
        record = self.dataset_record(dataset_id)
        if record.get("stats") is None:
            values, codes = self.store.dataset_arrays(dataset_id)
            record["stats"] = schema.column_stats(schema.of_dataset(record), values, codes)
            self.store.set_dataset_stats(dataset_id, record["stats"])
        return {"dataset_id": dataset_id, "rows": record["rows"], "items": record["stats"]}

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset (409 while a fit on it runs)."""
        self.get_dataset(dataset_id)
        if not self.store.delete_dataset(dataset_id):
            raise NotFound(f"no dataset with id {dataset_id}")

    def dataset_rows(self, dataset_id: str, offset: int, limit: int) -> tuple[list[list[Any]], dict[str, Any]]:
        """Rows ``offset .. offset+limit`` of a dataset (every column, None where a value is
        missing), and the dataset."""
        record = self.dataset_record(dataset_id)
        values, codes = self.store.dataset_arrays(dataset_id)
        ids = self.store.load_ids(dataset_id, offset, limit)
        numeric = np.array(values[offset : offset + limit])
        cols: list[list[Any]] = []
        n_index = c_index = 0
        for entry in schema.of_dataset(record):
            if entry["type"] == "numeric":
                column = numeric[:, n_index]
                cols.append([None if v != v else v for v in column.tolist()])
                n_index += 1
            elif entry["type"] == "categorical":
                cats = entry["categories"]
                cols.append([cats[c] if c >= 0 else None for c in codes[offset : offset + limit, c_index].tolist()])
                c_index += 1
            else:
                cols.append([str(v) or None for v in ids])
        return [list(row) for row in zip(*cols, strict=True)], _public_dataset(record)

    # -- models ---------------------------------------------------------------------------

    def create_model(
        self,
        dataset_id: str,
        params: dict[str, Any] | None,
        time_limit: float | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        copied_from: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Queue a fit of ``dataset_id``; returns (the model, whether it was created now).

        With an ``idempotency_key`` seen before, the earlier model comes back (created False),
        or Unprocessable if that request's body was different.
        """
        params = prep.as_meant(params or {})
        request = {"dataset_id": dataset_id, "params": params, "time_limit": time_limit, "callback_url": callback_url}
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        dataset = self.dataset_record(dataset_id)
        pre = self.plan_fit(dataset, params)
        k = prep.n_clusters(params)
        if k > dataset["rows"]:
            default = "" if "n_clusters" in params else ", the default"
            raise Unprocessable(
                f"n_clusters ({k}{default}) is larger than the number of rows ({dataset['rows']})"
                f" of dataset {dataset_id}",
                parameter="n_clusters",
            )
        secret = self._callback_secret(callback_url)
        stamp = now()
        record = {
            "id": new_id("m"),
            "dataset_id": dataset_id,
            "status": "queued",
            "params": params,
            "created_at": stamp,
            "queued_at": stamp,
            "phase": "queued",
            "rows": dataset["rows"],
            "n_features": len(pre["feature_columns"]),
            "columns": pre["feature_columns"],
            "preprocessing": pre,
            "time_limit": time_limit or self.settings.fit_time_limit,
            "callback_url": callback_url,
            "callback_secret": secret,
            "project": dataset["project"],
            "copied_from": copied_from,
        }
        # Keys are per project: one project's key never finds another's model.
        key = (f"{dataset['project']}/{idempotency_key}", fingerprint) if idempotency_key else None
        stored = self.store.add_model(record, key)
        if stored["id"] != record["id"]:
            if stored.get("fingerprint") != fingerprint:
                raise Unprocessable(
                    f"Idempotency-Key {idempotency_key!r} was used for a different request"
                    f" (model {stored['id']}); use a new key for a new fit",
                    parameter="Idempotency-Key",
                )
            # The same answer as the first time, secret included: a retry is a client that lost it.
            return self._with_secret(self.get_model(stored["id"]), stored.get("callback_secret")), False
        self._queued()
        return self._with_secret(self.get_model(record["id"]), secret), True

    def plan_fit(self, dataset: dict[str, Any], params: dict[str, Any], sweep: bool = False) -> dict[str, Any]:
        """Check fit options against the dataset (422 naming the option); the preprocessing plan."""
        pre = prep.plan(params, schema.of_dataset(dataset), sweep=sweep)
        try:
            values = self.store.load_array(self.store.dataset_path(dataset["id"]), mmap=True)
        except FileNotFoundError:  # deleted meanwhile: the fit fails saying so, as a fit of it would
            return pre
        weights = prep.weights(values, pre) if pre["weight_index"] is not None else None
        if not params.get("standardize") and pre["distance"] == "euclidean":
            # Unscaled, the values themselves are squared: refuse now what the fit would overflow on.
            numeric = [f for f in prep.features_of(pre) if f["type"] == "numeric"]
            tops = prep.magnitudes(values)[[f["index"] for f in numeric]] if numeric else np.zeros(0)
            mass = float(weights.sum()) if weights is not None else float(dataset["rows"])
            column = prep.overflowing(tops, mass)
            if column is not None:
                raise prep.too_large(numeric[column]["name"], float(tops[column]), mass, False)
        return pre

    def _queued(self) -> None:
        self.start()  # normally done at app start-up; a no-op then
        self.dispatcher.wake()

    def _callback_secret(self, callback_url: str | None) -> str | None:
        """Check a callback URL (422 unless allowed); the new key that signs its deliveries."""
        if callback_url is None:
            return None
        webhooks.check_url(callback_url, list(self.settings.webhook_allow))
        return webhooks.new_secret()

    @staticmethod
    def _with_secret(record: dict[str, Any], secret: str | None) -> dict[str, Any]:
        """The record as created: with the webhook secret, shown this once."""
        return {**record, "callback_secret": secret} if secret else record

    # -- jobs of every kind -----------------------------------------------------------------

    def _job(self, kind: str, job_id: str) -> dict[str, Any]:
        """A job the caller may see (404 if unknown or another project's)."""
        return access.visible(self.store.get_job(kind, job_id), WHAT[kind], job_id)

    def _cancel(self, kind: str, job_id: str) -> bool:
        """Mark a queued, running or paused job cancelled (its owner kills its process); False if it was not."""
        cancelled = self.store.update_job(
            kind, job_id, (*ACTIVE, "paused"), status="cancelled", finished_at=now(), phase="cancelled",
            run_token=None,
        )
        if cancelled:
            if self.dispatcher is not None:
                self.dispatcher.wake()
            self.notify(kind, job_id)
        return cancelled

    def cancel(self, kind: str, job_id: str) -> dict[str, Any]:
        """Stop a queued, running or paused job: it is ``cancelled`` at once and its process is killed."""
        self._job(kind, job_id)
        if not self._cancel(kind, job_id):
            job = self._job(kind, job_id)  # its state now, for the message
            raise Conflict(
                f"{WHAT[kind]} {job_id} is already {job['status']}; only queued, running or paused ones can be"
                " cancelled"
            )
        return _public(self._job(kind, job_id))

    def cancel_model(self, model_id: str) -> dict[str, Any]:
        """Stop a queued, running or paused fit."""
        return self.cancel("fit", model_id)

    def pause_model(self, model_id: str) -> dict[str, Any]:
        """Pause a queued or running KMeans fit: its process is freed, its latest centers kept."""
        model = self.get_model(model_id)
        if not engine.can_checkpoint(model["params"]):
            raise Conflict(
                f"model {model_id} is fitted with method {model['params'].get('method', 'kmeans')}, which cannot be"
                " paused; only method kmeans fits can (cancel this one instead)"
            )
        paused = False
        for _ in range(3):  # a queued fit may start between the read and the update: look again
            record = self.store.get_model(model_id) or {}
            was = record.get("phase") or record.get("status")
            if record.get("status") == "running":
                # The checkpoint to resume from is this run's (its own file): kept by the token.
                paused = self.store.update_job(
                    "fit", model_id, ("running",), record["run_token"], status="paused", run_token=None,
                    phase=f"paused ({was})", checkpoint={"run": record["run_token"], "paused_at": now()},
                )
            elif record.get("status") == "queued":  # it keeps the checkpoint it had (if paused before)
                paused = self.store.update_job(
                    "fit", model_id, ("queued",), status="paused", phase=f"paused ({was})"
                )
            if paused or record.get("status") not in ACTIVE:
                break
        if not paused:
            status = self.get_model(model_id)["status"]
            raise Conflict(f"model {model_id} is {status}; only queued or running fits can be paused")
        if self.dispatcher is not None:
            self.dispatcher.wake()  # its owner kills the process now
        return self.get_model(model_id)

    def resume_model(self, model_id: str) -> dict[str, Any]:
        """Queue a paused fit again; it starts from the centers it had when it was paused.

        Its attempts start again from 0 (a pause is nobody's failure)."""
        record = access.visible(self.store.get_model(model_id), "model", model_id)
        checkpoint = record.get("checkpoint")
        saved = checkpoint and self.store.checkpoint_path(model_id, checkpoint["run"]).exists()
        phase = "queued: resumes from its checkpoint" if saved else "queued: resumed (from the start: no checkpoint)"
        fields: dict[str, Any] = {"checkpoint": {**checkpoint, "resumed_at": now()}} if saved else {"checkpoint": None}
        if not self.store.update_job(
            "fit", model_id, ("paused",), status="queued", queued_at=now(), phase=phase, progress=0, attempts=0,
            **fields,
        ):
            raise Conflict(f"model {model_id} is {record['status']}; only paused fits can be resumed")
        self._queued()
        return self.get_model(model_id)

    def copy_model(
        self,
        model_id: str,
        params: dict[str, Any] | None = None,
        dataset_id: str | None = None,
        time_limit: float | None = None,
        callback_url: str | None = None,
        unset: Sequence[str] = (),
    ) -> dict[str, Any]:
        """A new fit of a model's dataset (or ``dataset_id``) with its params, ``params`` overriding
        them and the options in ``unset`` left out."""
        source = self.get_model(model_id)
        dataset_id = dataset_id or source["dataset_id"]
        if not dataset_id:
            raise Conflict(f"model {model_id} was imported and has no dataset; name one with dataset_id")
        unknown = [name for name in unset if name not in source["params"]]
        if unknown:
            raise Unprocessable(
                f"unset names {', '.join(map(repr, unknown))}, which model {model_id}'s params do not have"
                f" (they have {', '.join(map(repr, source['params'])) or 'none'})",
                parameter="unset",
            )
        merged = {**{k: v for k, v in source["params"].items() if k not in unset}, **(params or {})}
        model, _ = self.create_model(dataset_id, merged, time_limit or source.get("time_limit"), callback_url,
                                     copied_from=model_id)
        return model

    def notify(self, kind: str | None = None, job_id: str | None = None) -> None:
        """Queue the webhook delivery of every finished fit or sweep that has a callback and none
        queued yet (of ``job_id``'s, in particular), and have it sent soon."""
        if self._queue_deliveries() and self.dispatcher is not None:
            self.dispatcher.wake()

    def _queue_deliveries(self) -> int:
        return len(self.store.enqueue_deliveries(self._delivery_record))

    def _housekeeping(self) -> None:
        """Every dispatcher sweep: queue missed deliveries; now and then forget old finished ones."""
        self._queue_deliveries()
        moment = time.monotonic()
        if moment >= self._next_prune:
            self._next_prune = moment + PRUNE_EVERY
            cutoff = datetime.fromtimestamp(time.time() - DELIVERIES_KEPT_SECONDS, UTC).isoformat()
            self.store.prune_deliveries(cutoff)

    @classmethod
    def _delivery_record(cls, kind: str, record: dict[str, Any]) -> dict[str, Any]:
        what = WHAT[kind]
        event = f"{what}.{record['status']}"
        stamp = now()
        body = {**(cls._public_sweep(record) if kind == "sweep" else _public(record)), "callback": None}
        return {
            "id": new_id("wh"),
            "project": record["project"],
            "target_kind": kind,
            "target_id": record["id"],
            "event": event,
            "url": record["callback_url"],
            # Standard Webhooks' shape (type, timestamp, data), and the resource under its own name.
            "payload": {"type": event, "timestamp": stamp, "data": body, "event": event, what: body},
            "status": "queued",
            "created_at": stamp,
            "queued_at": stamp,
            "phase": "queued",
        }

    def _deliver(self, delivery: dict[str, Any]) -> None:
        """One attempt at a webhook delivery (a job run in a thread), recorded on the delivery and
        on its resource: delivered, re-queued with backoff, or failed for good."""
        target = self.store.get_job(delivery["target_kind"], delivery["target_id"])
        if target is None:  # deleted meanwhile: nothing to report on, and no key to sign with
            self.store.update_job(
                "webhook", delivery["id"], ("running",), delivery["run_token"], status="cancelled", finished_at=now(),
                phase=f"cancelled: its {WHAT[delivery['target_kind']]} was deleted",
            )
            return
        outcome = webhooks.attempt(
            delivery["url"], delivery["payload"], list(self.settings.webhook_allow), target.get("callback_secret"),
            delivery["id"],
        )
        attempts = delivery["attempts"]
        last = {"status_code": outcome.status_code, "error": outcome.error}
        fields: dict[str, Any] = {"last": last, "progress": 1.0}
        if outcome.state == "retry" and attempts < self.settings.webhook_attempts:
            wait = max(webhooks.backoff(attempts, self.settings.webhook_max_wait), outcome.retry_after or 0)
            state = "retrying"
            fields.update(status="queued", run_token=None, queued_at=now(), not_before=time.time() + wait,
                          phase=f"attempt {attempts} failed; next in {wait:.1f} s", progress=0)
        elif outcome.state == "delivered":
            state = "delivered"
            fields.update(status="succeeded", finished_at=now(), phase="delivered")
        else:
            state = "failed"
            fields.update(status="failed", finished_at=now(), phase="failed",
                          error={"detail": outcome.error or f"the receiver answered {outcome.status_code}"})
        callback = {"state": state, "delivery_id": delivery["id"], "attempts": attempts, "at": now(),
                    **{k: v for k, v in last.items() if v is not None}}
        self.store.end_delivery_attempt(delivery, delivery["run_token"], callback, **fields)
        if state == "failed":
            log.warning("webhook %s failed after %d attempt(s): %s", delivery["id"], attempts, last)

    def job_events(
        self, kind: str, job_id: str, last_event_id: int | None, max_seconds: float,
        stop: anyio.Event | None = None,
    ) -> AsyncIterator[tuple[int, dict]]:
        """(event id, job) each time the job changes, until it ends or ``max_seconds`` pass.

        Read from the database, so it follows a job wherever it runs. With ``last_event_id``
        (a reconnecting client), states up to that one are not sent again. Between changes
        it yields (0, {}) about every EVENT_POLL seconds, a chance to send a keep-alive. It
        ends early when ``stop`` is set (the client hung up). An async iterator: it waits on the
        event loop, and takes a thread only for each short database read.
        """
        self._job(kind, job_id)  # 404 now, before a stream starts
        caller = access.current()
        return self._events(kind, job_id, last_event_id or 0, max_seconds, stop, caller)

    def model_events(
        self, model_id: str, last_event_id: int | None, max_seconds: float, stop: anyio.Event | None = None
    ) -> AsyncIterator[tuple[int, dict]]:
        """:meth:`job_events` of a fit."""
        return self.job_events("fit", model_id, last_event_id, max_seconds, stop)

    async def _events(
        self, kind: str, job_id: str, seen: int, max_seconds: float, stop: anyio.Event | None, caller: access.Caller
    ) -> AsyncIterator[tuple[int, dict]]:
        stop = stop or anyio.Event()
        deadline = time.monotonic() + max_seconds
        for polls in itertools.count():
            if time.monotonic() >= deadline or stop.is_set() or not await self._caller_still_valid(caller, polls):
                return
            record = await anyio.to_thread.run_sync(self.store.get_job, kind, job_id)
            if record is None:
                return
            if record["version"] > seen:
                seen = record["version"]
                public = {"evaluation": self._public_evaluation, "scoring": _public_scoring}.get(kind, _public)
                yield seen, public(record)
            if record["status"] in TERMINAL:
                return
            yield 0, {}
            await _wait(stop, EVENT_POLL)

    def list_jobs(
        self, offset: int, limit: int, status: str | None = None, kind: str | None = None, project: str | None = None
    ) -> dict[str, Any]:
        """The queue: the caller's project's jobs (an admin's: all), running ones first, then the
        queued ones in the order they will start, each with its place."""
        statuses = (status,) if status else (*ACTIVE, "paused")
        rows, total = self.store.list_jobs(access.current().scope(project), statuses, kind, offset, limit)
        return {"items": [self._job_summary(r) for r in rows], "offset": offset, "limit": limit, "total": total}

    def _job_summary(self, row: dict[str, Any]) -> dict[str, Any]:
        keep = ("id", "kind", "project", "status", "phase", "progress", "attempts", "time_limit", "position",
                "created_at", "queued_at", "started_at", "finished_at", "error")
        summary = {k: row.get(k) for k in keep}
        summary["resource"] = self._resource_path(row["kind"], row["id"])
        return summary

    def _resource_path(self, kind: str, resource_id: str) -> str | None:
        """Where a job's resource is (an evaluation's or a scoring's is under its model); None for a delivery."""
        if kind in ("evaluation", "scoring"):
            record = self.store.get_job(kind, resource_id)
            return f"/kmeans/models/{record['model_id']}/{kind}s/{resource_id}" if record else None
        collection = COLLECTION.get(kind)
        return f"/kmeans/{collection}/{resource_id}" if collection else None

    def project_events(
        self, last_event_id: int | None, max_seconds: float, project: str | None = None,
        stop: anyio.Event | None = None,
    ) -> AsyncIterator[tuple[int, dict]]:
        """(event id, event) for every change of a job in the caller's project (an admin's: all,
        or ``project``) and every push to an online model, from after ``last_event_id`` (default:
        from now on), until ``max_seconds`` pass or ``stop`` is set."""
        caller = access.current()
        scope = caller.scope(project)
        seen = self.store.last_event() if last_event_id is None else last_event_id
        return self._project_events(scope, seen, max_seconds, stop, caller)

    async def _caller_still_valid(self, caller: access.Caller, polls: int) -> bool:
        """Every TOKEN_RECHECK_POLLS polls of a stream: whether its token is still good (a revoked
        token's stream ends at the next check, not after its hour); the database read in a thread."""
        if polls % TOKEN_RECHECK_POLLS != 0 or polls == 0:
            return True
        return await anyio.to_thread.run_sync(self.access.still_valid, caller)

    async def _project_events(
        self, scope: str | None, seen: int, max_seconds: float, stop: anyio.Event | None, caller: access.Caller
    ) -> AsyncIterator[tuple[int, dict]]:
        stop = stop or anyio.Event()
        deadline = time.monotonic() + max_seconds
        for polls in itertools.count():
            if time.monotonic() >= deadline or stop.is_set() or not await self._caller_still_valid(caller, polls):
                return
            for event in await anyio.to_thread.run_sync(self.store.events_since, seen, scope):
                seen = event["seq"]
                if event["kind"] in ("evaluation", "scoring"):
                    resource = await anyio.to_thread.run_sync(self._resource_path, event["kind"], event["resource_id"])
                else:
                    resource = self._resource_path(event["kind"], event["resource_id"])
                yield seen, {
                    "kind": event["kind"], "id": event["resource_id"], "project": event["project"],
                    "status": event["status"], "phase": event["phase"], "at": event["at"],
                    "resource": resource,
                    **({"data": event["data"]} if event["data"] is not None else {}),
                }
            yield 0, {}
            await _wait(stop, EVENT_POLL)

    # -- sweeps -----------------------------------------------------------------------------

    def create_sweep(
        self, dataset_id: str, k_min: int, k_max: int, params: dict[str, Any] | None,
        time_limit: float | None = None, callback_url: str | None = None, stability_runs: int = 0,
        rule: str = "consensus",
    ) -> dict[str, Any]:
        """Check and queue a sweep over ``k_min..k_max`` (see kmeans.sweeps for ``rule`` and
        ``stability_runs``)."""
        if rule == "max_stability" and not stability_runs:
            raise Unprocessable("rule max_stability needs stability_runs (at least 1)", parameter="rule")
        params = prep.as_meant(params or {}, sweep=True)
        dataset = self.dataset_record(dataset_id)
        sweeps.check_range(dataset, k_min, k_max)
        pre = self.plan_fit(dataset, params, sweep=True)
        secret = self._callback_secret(callback_url)
        record = sweeps.new_record(
            dataset, k_min, k_max, params, pre, time_limit=time_limit or self.settings.fit_time_limit,
            callback_url=callback_url, callback_secret=secret, stability_runs=stability_runs, rule_requested=rule,
        )
        self.store.add_sweep(record)
        self._queued()
        return self._with_secret(self.get_sweep(record["id"]), secret)

    def get_sweep(self, sweep_id: str, rule: str | None = None) -> dict[str, Any]:
        """One sweep the caller may see; with ``rule``, its recommendation under that rule."""
        sweep = self._public_sweep(self._job("sweep", sweep_id))
        if rule is not None and sweep["status"] == "succeeded" and sweep["results"]:
            if rule == "max_stability" and not sweep.get("stability_runs"):
                raise Unprocessable(f"sweep {sweep_id} has no stability runs to rank k by", parameter="rule")
            sweep.update(sweeps.recommend(sweep["results"], rule))
        return sweep

    @staticmethod
    def _public_sweep(record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in _public(record).items() if k != "preprocessing"}

    def list_sweeps(
        self, offset: int, limit: int, dataset_id: str | None = None, project: str | None = None
    ) -> dict[str, Any]:
        """A page of the sweeps the caller sees, newest first."""
        items, total = self.store.list_sweeps(offset, limit, dataset_id, access.current().scope(project))
        return {"items": [self._public_sweep(i) for i in items], "offset": offset, "limit": limit, "total": total}

    def delete_sweep(self, sweep_id: str) -> None:
        """Delete a sweep; a queued or running one is cancelled first."""
        self._job("sweep", sweep_id)
        self._cancel("sweep", sweep_id)
        if not self.store.delete_sweep(sweep_id):
            raise NotFound(f"no sweep with id {sweep_id}")

    # -- evaluations and comparisons (see kmeans.evaluate) ---------------------------------------

    def create_evaluation(
        self, model_id: str, dataset_id: str, label_column: str | None = None, time_limit: float | None = None
    ) -> dict[str, Any]:
        """Check and queue an evaluation of a fitted model on a dataset (422 naming a missing column)."""
        from kmeans import evaluate

        model = self._fitted(model_id)
        dataset = self.dataset_record(dataset_id)
        evaluate.check_columns(model, dataset, label_column)
        record = evaluate.new_record(model, dataset, label_column, time_limit or self.settings.fit_time_limit)
        self.store.add_evaluation(record)
        self._queued()
        return self.get_evaluation(model_id, record["id"])

    def _evaluation(self, model_id: str, evaluation_id: str) -> dict[str, Any]:
        """An evaluation of ``model_id`` the caller may see (404 otherwise)."""
        self.get_model(model_id)
        record = self._job("evaluation", evaluation_id)
        if record["model_id"] != model_id:
            raise NotFound(f"model {model_id} has no evaluation with id {evaluation_id}")
        return record

    def get_evaluation(self, model_id: str, evaluation_id: str) -> dict[str, Any]:
        """One evaluation: its state and, once it has succeeded, its result."""
        return self._public_evaluation(self._evaluation(model_id, evaluation_id))

    @staticmethod
    def _public_evaluation(record: dict[str, Any]) -> dict[str, Any]:
        # Evaluations take no callback: the queue's callback columns are not theirs to show.
        return {k: v for k, v in _public(record).items() if k not in ("callback_url", "callback")}

    def list_evaluations(self, model_id: str, offset: int, limit: int) -> dict[str, Any]:
        """A page of a model's evaluations, newest first."""
        self.get_model(model_id)
        items, total = self.store.list_evaluations(model_id, offset, limit)
        return {"items": [self._public_evaluation(i) for i in items], "offset": offset, "limit": limit,
                "total": total}

    def cancel_evaluation(self, model_id: str, evaluation_id: str) -> dict[str, Any]:
        """Stop a queued or running evaluation."""
        self._evaluation(model_id, evaluation_id)
        return self._public_evaluation(self.cancel("evaluation", evaluation_id))

    def delete_evaluation(self, model_id: str, evaluation_id: str) -> None:
        """Delete an evaluation; a queued or running one is cancelled first."""
        self._evaluation(model_id, evaluation_id)
        self._cancel("evaluation", evaluation_id)
        if not self.store.delete_evaluation(evaluation_id):
            raise NotFound(f"model {model_id} has no evaluation with id {evaluation_id}")

    def evaluation_events(
        self, model_id: str, evaluation_id: str, last_event_id: int | None, max_seconds: float,
        stop: anyio.Event | None = None,
    ) -> AsyncIterator[tuple[int, dict]]:
        """:meth:`job_events` of an evaluation."""
        self._evaluation(model_id, evaluation_id)
        return self.job_events("evaluation", evaluation_id, last_event_id, max_seconds, stop)

    def compare_models(self, model_id: str, other_model_id: str, dataset_id: str | None = None) -> dict[str, Any]:
        """How two fitted models' labellings of one dataset (default: the first one's training
        dataset) agree; synchronous, for at most evaluate.MAX_COMPARE_ROWS rows."""
        from kmeans import evaluate

        model = self._fitted(model_id)
        try:
            other = self._fitted(other_model_id)
        except NotFound:
            raise NotFound(f"no model with id {other_model_id} (other_model_id)") from None
        dataset_id = dataset_id or model.get("dataset_id")
        if not dataset_id:
            raise Unprocessable(
                f"model {model_id} was imported and has no training dataset; name one with dataset_id",
                parameter="dataset_id",
            )
        dataset = self.dataset_record(dataset_id)
        if dataset["rows"] > evaluate.MAX_COMPARE_ROWS:
            raise Unprocessable(
                f"dataset {dataset_id} has {dataset['rows']} rows; a comparison labels at most"
                f" {evaluate.MAX_COMPARE_ROWS} (evaluate each model on it instead)",
                parameter="dataset_id",
            )
        evaluate.check_columns(model, dataset)
        evaluate.check_columns(other, dataset, parameter="other_model_id")
        labellings = []
        kept = np.ones(dataset["rows"], dtype=bool)
        for each in (model, other):
            centers = evaluate.centers_of(self.store, each)
            space, rows, _ = evaluate.model_space(self.store, each, dataset, centers)
            labels = np.full(dataset["rows"], -1, dtype=np.int64)
            labels[rows] = engine.predict(centers, space)
            labellings.append((labels, len(centers)))
            kept &= rows
        if not kept.any():
            raise Unprocessable(f"no row of dataset {dataset_id} has every feature both models need",
                                parameter="dataset_id")
        (first, k_first), (second, k_second) = labellings
        result = evaluate.compare(first[kept], second[kept], k_first, k_second)
        return {
            "model_id": model_id, "other_model_id": other_model_id, "dataset_id": dataset_id,
            "n_clusters": k_first, "other_n_clusters": k_second, "rows_left_out": int((~kept).sum()), **result,
        }

    # -- batch scorings (kmeans.scorejob) -------------------------------------------------------

    def create_scoring(
        self, model_id: str, dataset_id: str, threshold: float | None = None, time_limit: float | None = None
    ) -> dict[str, Any]:
        """Check and queue the scoring of every row of ``dataset_id`` with a fitted model: 404/409 for
        the model, 422 naming what the dataset lacks; the anomaly threshold is ``threshold`` or the model's."""
        from kmeans import scorejob

        model = self._fitted(model_id)
        dataset = self.dataset_record(dataset_id)
        centers = self.fitted_centers(model)
        scorejob.check(self.store, model, dataset, centers)
        applied = threshold if threshold is not None else model.get("anomaly_threshold")
        record = scorejob.new_record(model, dataset, applied, time_limit or self.settings.fit_time_limit)
        self.store.add_scoring(record)
        self._queued()
        return self.get_scoring(model_id, record["id"])

    def _scoring(self, model_id: str, scoring_id: str) -> dict[str, Any]:
        """A scoring of ``model_id`` the caller may see (404 otherwise)."""
        self.get_model(model_id)
        record = self._job("scoring", scoring_id)
        if record["model_id"] != model_id:
            raise NotFound(f"model {model_id} has no scoring with id {scoring_id}")
        return record

    def get_scoring(self, model_id: str, scoring_id: str) -> dict[str, Any]:
        """One scoring: status, progress, rows scored, and where its result is once it has succeeded."""
        from kmeans import scorejob

        return scorejob.public(self._scoring(model_id, scoring_id))

    def list_scorings(self, model_id: str, offset: int, limit: int) -> dict[str, Any]:
        """A page of a model's scorings, newest first."""
        from kmeans import scorejob

        self.get_model(model_id)
        items, total = self.store.list_scorings(model_id, offset, limit)
        return {"items": [scorejob.public(i) for i in items], "offset": offset, "limit": limit, "total": total}

    def cancel_scoring(self, model_id: str, scoring_id: str) -> dict[str, Any]:
        """Stop a queued or running scoring (409 once it has ended)."""
        from kmeans import scorejob

        self._scoring(model_id, scoring_id)
        self.cancel("scoring", scoring_id)
        return scorejob.public(self._job("scoring", scoring_id))

    def delete_scoring(self, model_id: str, scoring_id: str) -> None:
        """Delete a scoring and its result; a queued or running one is cancelled first."""
        self._scoring(model_id, scoring_id)
        self._cancel("scoring", scoring_id)
        if not self.store.delete_scoring(scoring_id):
            raise NotFound(f"no scoring with id {scoring_id}")

    def scoring_events(
        self, model_id: str, scoring_id: str, last_event_id: int | None, max_seconds: float,
        stop: anyio.Event | None = None,
    ) -> AsyncIterator[tuple[int, dict]]:
        """:meth:`job_events` of a scoring."""
        self._scoring(model_id, scoring_id)
        return self.job_events("scoring", scoring_id, last_event_id, max_seconds, stop)

    def scoring_result(self, model_id: str, scoring_id: str) -> Any:
        """The stored result of a succeeded scoring (a :class:`kmeans.scorejob.Result`; 409 before)."""
        from kmeans import scorejob

        return scorejob.Result(self.store, self._scoring(model_id, scoring_id))

    def _delete_scorings_of(self, model_id: str) -> None:
        """Cancel and delete every scoring of a model being deleted (they score with its centers)."""
        while True:
            items, _ = self.store.list_scorings(model_id, 0, 1000)
            if not items:
                return
            for item in items:
                self._cancel("scoring", item["id"])
                self.store.delete_scoring(item["id"])

    # -- models (continued) -------------------------------------------------------------------

    def wait_for_model(self, model_id: str, timeout: float) -> dict[str, Any]:
        """Block until the model leaves queued/running (or ``timeout`` passes); return it."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            model = self.get_model(model_id)
            if model["status"] not in ACTIVE or time.monotonic() >= deadline:
                return model
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)

    def get_model(self, model_id: str) -> dict[str, Any]:
        """One model (404 if unknown or in another project)."""
        return _public(access.visible(self.store.get_model(model_id), "model", model_id))

    def list_models(
        self,
        offset: int,
        limit: int,
        dataset_id: str | None = None,
        status: str | None = None,
        project: str | None = None,
    ) -> dict[str, Any]:
        """A page of the models the caller sees, newest first."""
        items, total = self.store.list_models(offset, limit, dataset_id, status, access.current().scope(project))
        return {"items": [_public(m) for m in items], "offset": offset, "limit": limit, "total": total}

    def delete_model(self, model_id: str) -> None:
        """Delete a model; a queued or running fit is cancelled first."""
        self.get_model(model_id)  # 404 if unknown or another project's
        self._cancel("fit", model_id)
        for evaluation_id in self.store.evaluation_ids(model_id):  # nothing left to evaluate
            self._cancel("evaluation", evaluation_id)
            self.store.delete_evaluation(evaluation_id)
        self._delete_scorings_of(model_id)
        if not self.store.delete_model(model_id):
            raise NotFound(f"no model with id {model_id}")

    def _fitted(self, model_id: str) -> dict[str, Any]:
        model = self.get_model(model_id)
        if model["status"] != "succeeded":
            raise Conflict(
                f"model {model_id} is {model['status']}; it has centers and labels only once it has succeeded"
            )
        return model

    def model_labels(self, model_id: str) -> tuple[np.ndarray, Any]:
        """The training rows' labels (-1: a row left out for a missing value), and the
        dataset's ids (an Arrow text column) when it has an id column."""
        labels, ids, _ = self.named_labels(model_id)
        return labels, ids

    def named_labels(self, model_id: str) -> tuple[np.ndarray, Any, list[str | None] | None]:
        """:meth:`model_labels` and each label's cluster name (None when the model names none)."""
        model = self._fitted(model_id)
        path = self.store.labels_path(model_id)
        if not path.exists():
            raise Conflict(f"model {model_id} was imported: it has no training rows, so no labels")
        labels = self.store.load_array(path)
        return labels, self.store.load_id_column(model["dataset_id"]), self.label_names(model, labels)

    def name_clusters(self, model_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Apply ``patch`` (cluster number -> name, null removes one; JSON merge patch) to a fitted
        model's cluster names; 422 naming clusters the model does not have, and nothing changes."""
        from kmeans import insight

        self._fitted(model_id)

        def change(record: dict[str, Any]) -> dict[str, str]:
            return insight.merge_names(record.get("cluster_names"), patch, len(self.fitted_centers(record)))

        model = self.store.change_cluster_names(model_id, change)
        if model is None:
            raise NotFound(f"no model with id {model_id}")
        return _public(model)

    def training_data(self, model_id: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None, np.ndarray]:
        """A fitted model, its dataset's numeric values and category codes (memory-mapped) and its
        training labels; 409 when the model was imported or its dataset deleted."""
        model = self._fitted(model_id)
        if not self.store.labels_path(model_id).exists():
            raise Conflict(f"model {model_id} was imported: it has no training rows to describe")
        if self.store.get_dataset(model["dataset_id"]) is None:
            raise Conflict(
                f"the dataset of model {model_id} ({model['dataset_id']}) was deleted, so its training rows are gone"
            )
        values, codes = self.store.dataset_arrays(model["dataset_id"])
        return model, values, codes, self.store.load_array(self.store.labels_path(model_id), mmap=True)

    def model_profile(self, model_id: str) -> dict[str, Any]:
        """What sets each cluster apart, in the dataset's units (see kmeans.insight.profile)."""
        from kmeans import insight

        key = (str(self.store.db_path), model_id)
        model = self._fitted(model_id)
        doc = _PROFILES.get(key)
        if doc is None or self.store.get_dataset(model["dataset_id"]) is None:
            model, values, codes, labels = self.training_data(model_id)
            doc = insight.statistics(model, values, codes, labels)
            with _PROFILES_LOCK:  # handlers run in several threads
                while len(_PROFILES) >= PROFILES_KEPT:
                    _PROFILES.pop(next(iter(_PROFILES)))
                _PROFILES[key] = doc
        return insight.named(doc, model.get("cluster_names"))

    def model_centers(self, model_id: str) -> tuple[np.ndarray, list[str]]:
        """The centers in original units (category columns as shares) and the columns they are in."""
        model = self._fitted(model_id)
        pre = model.get("preprocessing")
        return prep.to_original(self.fitted_centers(model), pre), prep.encoded_columns(pre)

    def fitted_centers(self, model: dict[str, Any], version: int | None = None) -> np.ndarray:
        """A model's centers in its fitted space: the current version's, or those of ``version``."""
        if version is None and not model.get("center_version"):
            return _cached_centers(str(self.store.centers_path(model["id"])))
        from kmeans import online

        return online.centers(self.store, model, version)

    def points(
        self, model: dict[str, Any], data: Any = None, source: Upload | None = None,
        options: csvio.Options | None = None,
    ) -> csvio.Table:
        """Prediction rows sent as JSON ``data`` or as a CSV ``source``, as a table."""
        if options is csvio.CLASSIC:  # the classic /predict: by position, as it always was
            return self.read_table(source, hashed=False, options=options)[0]._named(False)
        expect = prep.expect(model.get("preprocessing") or {"feature_columns": model["columns"]})
        if data is not None:
            return csvio.rows_table(data, expect=expect)
        return self.read_table(source, hashed=False, options=options, expect=expect)[0]

    def predict(
        self, model_id: str, data: Any = None, source: Upload | None = None, options: csvio.Options | None = None
    ) -> dict[str, Any]:
        """``{"labels", "ids" (when the rows have the model's id column), "unknown_categories"}``
        for rows sent as JSON ``data`` or as a CSV ``source``."""
        model = self._fitted(model_id)  # a 404/409 before reading a possibly large body
        table = self.points(model, data, source, options)
        labels, _, unknown = self._predict(model, table)
        return {"labels": labels, "ids": prep.ids_of(table, model["preprocessing"]), "unknown_categories": unknown,
                "label_names": self.label_names(model, labels)}

    @staticmethod
    def label_names(model: dict[str, Any], labels: np.ndarray) -> list[str | None] | None:
        """Each label's cluster name (None: unnamed), or None when the model names no cluster."""
        from kmeans import insight

        return insight.label_names(labels, model.get("cluster_names"))

    def _predict(
        self, model: dict[str, Any], table: csvio.Table, version: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """(labels, the rows in the fitted space, unknown categories per column)."""
        centers = self.fitted_centers(model, version)
        space, unknown = prep.points_space(table, model.get("preprocessing"), centers, model["id"], model["columns"])
        return engine.predict(centers, space), space, unknown

    def score(
        self,
        model_id: str,
        data: Any = None,
        source: Upload | None = None,
        options: csvio.Options | None = None,
        **scoring_options: Any,
    ) -> dict[str, Any]:
        """Labels of rows (JSON ``data``, or the CSV ``source``), and with ``options`` (distances,
        all_distances, anomalies, threshold) their distances and anomaly flags; see
        :func:`kmeans.scoring.score`."""
        from kmeans import scoring

        model = self._fitted(model_id)
        version = scoring_options.pop("version", None)
        centers = self.fitted_centers(model, version)  # a 404 for an unknown version before reading the body
        table = self.points(model, data, source, options)
        labels, space, unknown = self._predict(model, table, version)
        result: dict[str, Any] = scoring.score(model, centers, space, labels, **scoring_options)
        names = self.label_names(model, labels)
        if names is not None:
            result["label_names"] = names
        result["ids"] = prep.ids_of(table, model["preprocessing"])
        result["unknown_categories"] = unknown
        return result

    # -- classic flow ---------------------------------------------------------------------

    def classic_upload(self, source: Upload, filename: str | None) -> dict[str, Any]:
        """Store an upload and number it; the same name and content give the same job_id."""
        name = display_name(filename)
        project = self.access.home(None)
        table, spooled = self.read_table(source, options=csvio.CLASSIC)
        upload = self.store.find_upload(name, spooled.sha256, project)
        if upload is None:
            dataset = self._add_dataset(table, name, spooled.sha256, spooled.size, project)
            upload = self.store.get_upload(self.store.add_upload(name, spooled.sha256, dataset["id"], project))
            if upload["dataset_id"] != dataset["id"]:  # a concurrent upload of the same file won
                self.store.delete_dataset(dataset["id"])
        dataset = self.get_dataset(upload["dataset_id"])
        return {
            "job_id": upload["job_id"],
            "filename": name,
            "dataset_id": dataset["id"],
            "rows": dataset["rows"],
            "n_features": dataset["n_features"],
        }

    def _upload(self, job_id: int) -> dict[str, Any]:
        """The upload ``job_id`` if the caller sees its project; else exactly the 404 of a job_id never
        given out, whatever state the upload is in (its dataset or model deleted, fitted or not).

        An upload is in its dataset's project or, once that is deleted, its model's; one with neither
        left has no known project, and only callers of every project (admins) still see it."""
        upload = self.store.get_upload(job_id)
        owner = None
        if upload is not None:
            dataset = self.store.get_dataset(upload["dataset_id"])
            model = self.store.get_model(upload["model_id"]) if dataset is None and upload["model_id"] else None
            owner = (dataset or model or {}).get("project")
        caller = access.current()
        if upload is None or not (caller.sees(owner) if owner is not None else caller.project is None):
            raise NotFound(f"no upload with job_id {job_id}; POST a file to /kmeans/upload first")
        return upload

    def classic_fit(self, job_id: int, params: dict[str, Any] | None) -> tuple[dict[str, Any], np.ndarray]:
        """Fit the upload ``job_id``, wait for it, and return (model, labels)."""
        upload = self._upload(job_id)
        if self.store.get_dataset(upload["dataset_id"]) is None:
            raise NotFound(f"the dataset of job_id {job_id} ({upload['dataset_id']}) was deleted")
        model, _ = self.create_model(upload["dataset_id"], params)
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
        return model, self.model_labels(model["id"])[0]

    def classic_predict(self, job_id: int, source: Upload) -> tuple[str, np.ndarray]:
        """(model id, labels) for an uploaded CSV with the latest model fitted for ``job_id``."""
        upload = self._upload(job_id)
        if upload["model_id"] is None:
            raise Conflict(f"job_id {job_id} has no fitted model yet; POST it to /kmeans/fit first")
        return upload["model_id"], self.predict(upload["model_id"], source=source, options=csvio.CLASSIC)["labels"]
