"""Distances and anomaly flags for predictions (numpy only).

Distances are Euclidean, measured in the space the model was fitted in: in standard
deviations per feature for ``standardize`` models, between L2-normalised rows for
``cosine`` models (the chord distance, sqrt(2 - 2 cos θ), monotone in cosine distance).
The anomaly threshold of ``contamination`` models is in the same units.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from kmeans import engine
from kmeans.errors import Unprocessable


def score(
    model: dict[str, Any],
    centers: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,  # ``values``: rows in the model's fitted space
    distances: bool = False,
    all_distances: bool = False,
    anomalies: bool = False,
    threshold: float | None = None,
) -> dict[str, np.ndarray]:
    """``{"labels", ["distances"], ["all_distances"], ["anomalies"]}`` for ``values``.

    Anomalies are rows farther from their center than ``threshold``, or, without one, than
    the model's ``anomaly_threshold`` (set at fit time from ``contamination``).
    """
    out: dict[str, np.ndarray] = {"labels": labels}
    if not (distances or all_distances or anomalies or threshold is not None):
        return out
    if anomalies and threshold is None:
        threshold = model.get("anomaly_threshold")
        if threshold is None:
            raise Unprocessable(
                f"model {model['id']} has no anomaly threshold: fit it with params.contamination, or pass threshold",
                parameter="anomalies",
            )
    space = values  # already in the fitted space
    own = np.linalg.norm(space - centers[labels], axis=1)
    if distances:
        out["distances"] = own
    if all_distances:
        out["all_distances"] = engine.distances(centers, space)
    if threshold is not None:
        out["anomalies"] = own > threshold
    return out


def csv_bytes(result: dict[str, Any]) -> bytes:
    """A CSV with a header: [id], label, [label_name], [distance], [distance_0 … distance_{k-1}], [anomaly]."""
    header = ["label"]
    ids = result.get("ids")
    given = {k for k, v in result.items() if v is not None}
    if ids is not None and not given - {"labels", "ids", "unknown_categories"}:
        if not isinstance(ids, list):  # the stored Arrow column: Arrow kernels, no row at a time
            return id_label_csv(ids, np.asarray(result["labels"]))
        # id,label only (every labels answer of a dataset with ids): one join, not a row at a time.
        cells = ids if not _QUOTED.search("\x00".join(ids)) else [_csv_cell(v) for v in ids]
        labels = map(str, np.asarray(result["labels"]).astype(np.int64).tolist())
        return ("id,label\n" + "\n".join(map(",".join, zip(cells, labels, strict=True))) + "\n").encode()
    if ids is not None and not isinstance(ids, list):  # the stored Arrow column, with other columns
        ids = ["" if v is None else v for v in ids.to_pylist()]
    parts = [result["labels"].astype(np.int64)[:, None].astype(str)]
    if result.get("label_names") is not None:
        header.append("label_name")
        parts.append(np.array([_csv_cell(v or "") for v in result["label_names"]], dtype=object)[:, None])
    if ids is not None:
        header.insert(0, "id")
        parts.insert(0, np.array([_csv_cell(v) for v in ids], dtype=object)[:, None])
    if "distances" in result:
        header.append("distance")
        parts.append(np.array([repr(float(v)) for v in result["distances"]], dtype=object)[:, None])
    if "all_distances" in result:
        k = result["all_distances"].shape[1]
        header += [f"distance_{i}" for i in range(k)]
        parts.append(np.vectorize(lambda v: repr(float(v)), otypes=[object])(result["all_distances"]))
    if "anomalies" in result:
        header.append("anomaly")
        parts.append(np.where(result["anomalies"], "true", "false")[:, None])
    table = np.concatenate([p.astype(object) for p in parts], axis=1) if parts else np.empty((0, 0))
    lines = [",".join(header)] + [",".join(row) for row in table.tolist()]
    return ("\n".join(lines) + "\n").encode()


_QUOTED = re.compile(r'[,"\r\n]')


def id_label_csv(ids: Any, labels: np.ndarray) -> bytes:
    """``id,label`` CSV bytes from an Arrow text column of ids and integer labels (-1 or more)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    column = column.cast(pa.large_string()).fill_null("")
    if len(column) and pc.any(pc.match_substring_regex(column, r'[,"\r\n]')).as_py():
        column = pa.array([_csv_cell(v) for v in column.to_pylist()], type=pa.large_string())
    labels = labels.astype(np.int64, copy=False)
    low = int(labels.min()) if len(labels) else 0
    # Each label's text and line end, looked up: a handful of distinct labels, a million rows.
    texts = pa.array([f"{v}\n" for v in range(low, int(labels.max()) + 1 if len(labels) else 1)], pa.large_string())
    comma = pa.scalar(",", pa.large_string())
    lines = pc.binary_join_element_wise(column, texts.take(pa.array(labels - low)), comma)
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset : lines.offset + len(lines) + 1]
    data = lines.buffers()[2]
    body = data[int(offsets[0]) : int(offsets[-1])].to_pybytes() if len(lines) and data is not None else b""
    return b"id,label\n" + body


def _csv_cell(value: str) -> str:
    if _QUOTED.search(value):
        return '"' + value.replace('"', '""') + '"'
    return value


def json_body(model_id: str, result: dict[str, Any]) -> dict[str, Any]:
    out = {"model_id": model_id}
    for key, value in result.items():
        if key in ("ids", "unknown_categories", "label_names"):
            if value:
                out[key] = value
        else:
            out[key] = value.tolist()
    return out
