"""Batch scoring: label every row of a stored dataset with a model, as a job of the one queue.

A scoring is a job kind like a fit or a sweep (see :mod:`kmeans.jobs`): it waits its turn,
runs in a job process (or on Dask) under a time limit, can be cancelled, reports progress,
and is taken up again if its process dies. It reads the dataset a chunk of CHUNK_ROWS rows at
a time from its memory-mapped arrays, turns each chunk into the table a prediction request
would have made (columns by name, categories and ids as text) and puts it through the one
prediction preparation (:func:`kmeans.prep.points_space`), so its labels are the model's
predictions of the same rows; distances and anomaly flags are :func:`kmeans.scoring.score`'s.

The result is stored as plain files, never pickled: ``labels`` (int32), ``distances``
(float64) and ``anomalies`` (bool) as ``.npy``, the dataset's ids as an Arrow file (a copy: the
result outlives its dataset), and the whole result as one Parquet file, all renamed into place
in the transaction that marks the scoring succeeded. Pages of JSON and CSV are read from the
``.npy`` files, a chunk at a time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kmeans import csvio, engine, fitjob, prep, schema, scoring
from kmeans.errors import Conflict, NotFound, ScoringFailed, Unprocessable
from kmeans.store import Store, new_id, now

CHUNK_ROWS = 131_072  # rows scored at once: memory stays at a few chunks, whatever the dataset's size
CSV_CHUNK_ROWS = 65_536  # rows per piece of a streamed CSV answer
CHECK_ROWS = 1000  # rows put through the prediction preparation when a scoring is asked for
FILE_CHUNK = 1024 * 1024


def dataset_table(
    dataset: dict[str, Any], values: np.ndarray, codes: np.ndarray | None, ids: pa.Array | None, start: int, stop: int
) -> csvio.Table:
    """Rows ``start..stop`` of a stored dataset as the table a prediction request of them would be:
    every column by name, numbers as float64, categories and the id as text (null: missing)."""
    columns = schema.of_dataset(dataset)
    text: dict[str, pa.Array] = {}
    numeric: list[str] = []
    c_index = 0
    for entry in columns:
        if entry["type"] == "numeric":
            numeric.append(entry["name"])
        elif entry["type"] == "categorical":
            block = np.asarray(codes[start:stop, c_index])
            c_index += 1
            categories = pa.array(entry["categories"], type=pa.large_string())
            text[entry["name"]] = categories.take(pa.array(block, mask=block < 0))
        elif ids is not None:
            text[entry["name"]] = ids.slice(start, stop - start)
    chunk = np.array(values[start:stop], dtype=np.float64)
    return csvio.Table([chunk], [e["name"] for e in columns], numeric=numeric, text=text, first_row=start + 1)


def load_ids(path: Path) -> pa.Array | None:
    """The id column stored at ``path`` (memory-mapped), or None when there is none."""
    if not path.exists():
        return None
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all().column(0).combine_chunks()


def _complete_rows_only(feature: dict[str, Any], pre: dict[str, Any]) -> bool:
    """Whether predictions of ``feature`` refuse a missing value (no fill value, no missing category)."""
    if feature["type"] == "numeric":
        return feature.get("fill") is None
    return not feature.get("missing_category") and pre.get("missing", "mean") in ("error", "drop_rows")


def check(store: Store, model: dict[str, Any], dataset: dict[str, Any], centers: np.ndarray) -> None:
    """Refuse (422 naming the column, row or option) a dataset the model cannot score, before it is queued:
    its first rows go through the prediction preparation, and a column with missing values is refused
    where predictions take complete rows."""
    pre = model.get("preprocessing") or {"feature_columns": model["columns"]}
    if dataset["project"] != model["project"]:
        raise Unprocessable(
            f"dataset {dataset['id']} is in project {dataset['project']!r} and model {model['id']} in"
            f" {model['project']!r}; a scoring takes a dataset of the model's project",
            parameter="dataset_id",
        )
    by_name = {e["name"]: e for e in schema.of_dataset(dataset)}
    for feature in prep.features_of(pre):
        column = by_name.get(feature["name"])
        if column is not None and column.get("missing") and _complete_rows_only(feature, pre):
            raise Unprocessable(
                f"column {feature['name']!r} of dataset {dataset['id']} has {column['missing']} missing values, and"
                f" model {model['id']} (missing: {pre.get('missing', 'error')!r}) scores complete rows only",
                parameter=feature["name"],
            )
    try:
        values, codes = store.dataset_arrays(dataset["id"])
    except FileNotFoundError:  # deleted while this request ran
        raise NotFound(f"no dataset with id {dataset['id']}") from None
    ids = load_ids(store.ids_path(dataset["id"]))
    table = dataset_table(dataset, values, codes, ids, 0, min(CHECK_ROWS, len(values)))
    prep.points_space(table, model.get("preprocessing"), centers, model["id"], model["columns"])


def new_record(
    model: dict[str, Any], dataset: dict[str, Any], threshold: float | None, time_limit: float
) -> dict[str, Any]:
    """The record of a queued scoring (``threshold``: the anomaly threshold that applies, if any)."""
    stamp = now()
    return {
        "id": new_id("sc"),
        "project": model["project"],
        "model_id": model["id"],
        "dataset_id": dataset["id"],
        "status": "queued",
        "threshold": threshold,
        "model_version": model.get("center_version"),
        "rows": dataset["rows"],
        "rows_scored": 0,
        "has_ids": int(bool(dataset.get("id_column"))),
        "created_at": stamp,
        "queued_at": stamp,
        "phase": "queued",
        "time_limit": time_limit,
    }


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A scoring as the API shows it."""
    hidden = ("worker", "run_token", "heartbeat", "version", "callback_secret", "callback_url", "callback", "kind")
    out = {k: v for k, v in record.items() if k not in hidden}
    out["has_ids"] = bool(out.get("has_ids"))
    where = f"/kmeans/models/{record['model_id']}/scorings/{record['id']}/result"
    out["result"] = where if record["status"] == "succeeded" else None
    return out


def centers_of(store: Store, model: dict[str, Any], version: int | None) -> np.ndarray:
    """A model's fitted-space centers: of the version pinned when the scoring was asked for."""
    if version is None:
        return Store.load_array(store.centers_path(model["id"]))
    from kmeans import online

    return online.centers(store, model, version)


def _open(store: Store, dtype: Any, rows: int) -> tuple[Path, np.ndarray]:
    path = store.temp_path(".npy")
    return path, np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows,))


def _sync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def run(store: Store, record: dict[str, Any], job: fitjob.JobRun) -> str:
    """Score every row of the dataset a chunk at a time, store the result; returns how it ended."""
    model = store.get_model(record["model_id"])
    dataset = store.get_dataset(record["dataset_id"])
    if model is None or model["status"] != "succeeded":
        raise ScoringFailed(f"model {record['model_id']} was deleted before the scoring ran")
    if dataset is None:
        raise ScoringFailed(f"dataset {record['dataset_id']} was deleted before the scoring ran")
    centers = centers_of(store, model, record.get("model_version"))
    values, codes = store.dataset_arrays(dataset["id"])
    ids = load_ids(store.ids_path(dataset["id"]))
    n = len(values)
    threshold = record.get("threshold")
    staged: dict[str, Path] = {}
    try:
        staged["labels"], labels = _open(store, np.int32, n)
        staged["distances"], distances = _open(store, np.float64, n)
        if threshold is not None:
            staged["anomalies"], flags = _open(store, np.bool_, n)
        unknown: dict[str, int] = {}
        for start in range(0, n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n)
            table = dataset_table(dataset, values, codes, ids, start, stop)
            space, seen = prep.points_space(table, model.get("preprocessing"), centers, model["id"], model["columns"])
            chunk_labels = engine.predict(centers, space)
            scored = scoring.score(model, centers, space, chunk_labels, distances=True, threshold=threshold)
            labels[start:stop] = chunk_labels
            distances[start:stop] = scored["distances"]
            if threshold is not None:
                flags[start:stop] = scored["anomalies"]
            for name, count in seen.items():
                unknown[name] = unknown.get(name, 0) + count
            job.progress(0.9 * stop / n, f"scored {stop} of {n} rows")
            job.update(rows_scored=stop)
        for path, array in ((staged["labels"], labels), (staged["distances"], distances)):
            array.flush()
            _sync(path)
        if threshold is not None:
            flags.flush()
            _sync(staged["anomalies"])
        if ids is not None:
            staged["ids"] = store.temp_path(".arrow")
            shutil.copyfile(store.ids_path(dataset["id"]), staged["ids"])
            _sync(staged["ids"])
        job.progress(0.95, "writing the Parquet file")
        staged["parquet"] = store.temp_path(".parquet")
        write_parquet(staged["parquet"], ids, labels, distances, flags if threshold is not None else None)
        sizes = np.bincount(np.asarray(labels), minlength=len(centers))
        done = store.finish_scoring(
            record["id"], job.run_token, staged, finished_at=now(), progress=1.0, phase="done", rows_scored=n,
            cluster_sizes=sizes.tolist(), anomalies=int(np.count_nonzero(flags)) if threshold is not None else None,
            unknown_categories=unknown,
        )
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
    return "succeeded" if done else "stopped"


def _frame(
    ids: pa.Array | None, labels: np.ndarray, distances: np.ndarray, flags: np.ndarray | None, start: int, stop: int
) -> dict[str, Any]:
    """Columns ``[id], row, label, distance, [anomaly]`` of rows ``start..stop``."""
    columns: dict[str, Any] = {}
    if ids is not None:
        columns["id"] = ids.slice(start, stop - start)
    columns["row"] = np.arange(start, stop, dtype=np.int64)
    columns["label"] = np.asarray(labels[start:stop])
    columns["distance"] = np.asarray(distances[start:stop])
    if flags is not None:
        columns["anomaly"] = np.asarray(flags[start:stop])
    return columns


def write_parquet(
    path: Path, ids: pa.Array | None, labels: np.ndarray, distances: np.ndarray, flags: np.ndarray | None
) -> None:
    """The result as one Parquet file, written a row group at a time (fsynced)."""
    import pyarrow.parquet as pq

    writer = None
    try:
        for start in range(0, len(labels), CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, len(labels))
            table = pa.table(_frame(ids, labels, distances, flags, start, stop))
            if writer is None:
                writer = pq.ParquetWriter(str(path), table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    _sync(path)


def _text(value: str) -> pa.Scalar:
    return pa.scalar(value, pa.large_string())


def _csv_lines(columns: dict[str, Any]) -> bytes:
    """Rows of ``columns`` as CSV lines, built by Arrow's kernels a column at a time (formatting a
    million floats one by one in Python takes seconds): numbers as the shortest text that reads back
    as the same float64, flags as true/false, ids quoted only where they hold a delimiter, quote or
    line break."""
    import pyarrow.compute as pc

    cells = []
    for name, values in columns.items():
        if name == "id":
            quoted = pc.binary_join_element_wise(
                _text('"'), pc.replace_substring(values, '"', '""'), _text('"'), _text("")
            )
            cells.append(pc.if_else(pc.match_substring_regex(values, r'[,"\r\n]'), quoted, values))
        elif name == "anomaly":
            cells.append(pc.if_else(pa.array(values), _text("true"), _text("false")))
        else:
            cells.append(pc.cast(pa.array(values), pa.large_string()))
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*cells, _text(",")), _text(""), _text("\n"))
    _, offsets, data = lines.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int64)[lines.offset : lines.offset + len(lines) + 1]
    return data.to_pybytes()[bounds[0] : bounds[-1]]


class Result:
    """A succeeded scoring's stored result, read a piece at a time."""

    def __init__(self, store: Store, record: dict[str, Any]) -> None:
        if record["status"] != "succeeded":
            raise Conflict(
                f"scoring {record['id']} is {record['status']}; its result exists once it has succeeded"
            )
        self.store, self.record = store, record
        sid = record["id"]
        self.labels = Store.load_array(store.scoring_path(sid, "labels"), mmap=True)
        self.distances = Store.load_array(store.scoring_path(sid, "distances"), mmap=True)
        flagged = record.get("threshold") is not None  # the flags exist exactly when a threshold applies
        self.flags = Store.load_array(store.scoring_path(sid, "anomalies"), mmap=True) if flagged else None
        self.ids = load_ids(store.scoring_path(sid, "ids")) if record.get("has_ids") else None

    def page(self, offset: int, limit: int) -> dict[str, Any]:
        """``{"items": [{[id], row, label, distance, [anomaly]}], offset, limit, total}``."""
        stop = min(offset + limit, len(self.labels))
        start = min(offset, stop)
        columns = _frame(self.ids, self.labels, self.distances, self.flags, start, stop)
        lists = {k: (v.to_pylist() if isinstance(v, pa.Array) else v.tolist()) for k, v in columns.items()}
        items = [dict(zip(lists, row, strict=True)) for row in zip(*lists.values(), strict=True)]
        return {"scoring_id": self.record["id"], "items": items, "offset": offset, "limit": limit,
                "total": len(self.labels)}

    def csv_chunks(self) -> Iterator[bytes]:
        """The result as CSV (header ``[id,]row,label,distance[,anomaly]``), CSV_CHUNK_ROWS rows a piece."""
        for start in range(0, len(self.labels), CSV_CHUNK_ROWS):
            stop = min(start + CSV_CHUNK_ROWS, len(self.labels))
            columns = _frame(self.ids, self.labels, self.distances, self.flags, start, stop)
            header = (",".join(columns) + "\n").encode() if start == 0 else b""
            yield header + _csv_lines(columns)

    def parquet_chunks(self) -> Iterator[bytes]:
        """The stored Parquet file, FILE_CHUNK bytes a piece."""
        with open(self.store.scoring_path(self.record["id"], "parquet"), "rb") as handle:
            while piece := handle.read(FILE_CHUNK):
                yield piece
