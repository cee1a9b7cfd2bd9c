"""Column types of a dataset: numeric, categorical (text or booleans) or id, and their statistics.

A dataset is stored as plain arrays (see Store.add_dataset): its numeric columns as one
float64 matrix (NaN where a value is missing), its categorical columns as int32 codes (-1:
missing) into each column's sorted category list (kept in the ``schema``), and its id column
as text. Nothing is pickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from kmeans import prep
from kmeans.csvio import Table, _as_text, text_array
from kmeans.errors import Unprocessable

# A text column with more distinct values than this is no category (most likely an id).
MAX_CATEGORIES = 1000
# Distinct counts of numeric columns are computed at ingest up to this many rows (a hash of
# every value: ~0.1 s per million); beyond it by GET /datasets/{id}/columns.
DISTINCT_AT_INGEST_ROWS = 200_000
TOP_CATEGORIES = 10


@dataclass(frozen=True)
class Typed:
    """A table as a dataset stores it."""

    schema: list[dict[str, Any]]
    numeric: list[np.ndarray]  # row chunks of the numeric columns (float64, NaN: missing)
    codes: np.ndarray | None  # rows x categorical columns, int32, -1: missing
    ids: pa.Array | None  # the id column as text ("" where missing)
    id_column: str | None


def numeric_schema(columns: list[str]) -> list[dict[str, Any]]:
    """The schema of a dataset stored before column types existed: every column numeric, complete."""
    return [{"name": c, "type": "numeric", "missing": 0, "distinct": None} for c in columns]


def _looks_like_id(values: pa.Array) -> bool:
    """Text unique in every row, none missing, and each value with a digit in it (A1, 2024-17 …)
    or too many values to be categories."""
    if values.null_count or not _unique(values):
        return False
    return len(values) > MAX_CATEGORIES or bool(pc.all(pc.match_substring_regex(values, r"\d")).as_py())


# Values looked at first for a repeat: a column of categories has one among its first few.
UNIQUE_HEAD = 1024


def _unique(values: pa.Array) -> bool:
    """Whether no value appears twice (nulls are not looked at). Hashing a million ids takes a
    quarter of a second, so first the cheap answers: a repeat near the top (categories), or
    values in strictly increasing or decreasing order (ids as they are usually written)."""
    n = len(values)
    if n < 2:
        return True
    head = values.slice(0, UNIQUE_HEAD)
    if len(pc.unique(head)) < len(head):
        return False
    if not values.null_count:
        before, after = values.slice(0, n - 1), values.slice(1)
        if pc.all(pc.less(before, after)).as_py() or pc.all(pc.greater(before, after)).as_py():
            return True
    return len(pc.unique(values)) == n


def categories_of(values: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Text values as int32 codes into their sorted distinct values (-1: missing), and those values."""
    encoded = pc.dictionary_encode(values)
    found = encoded.dictionary.to_pylist()
    order = sorted(range(len(found)), key=found.__getitem__)
    rank = np.empty(len(found), dtype=np.int32)
    rank[order] = np.arange(len(found), dtype=np.int32)
    indices = encoded.indices
    codes = rank[indices.fill_null(0).to_numpy(zero_copy_only=False)] if len(found) else np.zeros(len(values), np.int32)
    codes[indices.is_null().to_numpy(zero_copy_only=False)] = -1
    return codes.astype(np.int32, copy=False), [found[i] for i in order]


# The longest text value a category or an id may have (api.yaml's Cell: maxLength).
MAX_TEXT = 10000


def _check_length(name: str, values: pa.Array) -> None:
    longest = pc.max(pc.utf8_length(values)).as_py() or 0
    if longest > MAX_TEXT:
        raise Unprocessable(
            f"column {name!r} has a value of {longest} characters; categories and ids may have at most {MAX_TEXT}",
            parameter=name,
        )


def classify(table: Table, id_column: str | None = None) -> Typed:
    """Give every column of ``table`` its type (422 naming the column when one cannot be used)."""
    if id_column is not None and id_column not in table.columns:
        raise Unprocessable(
            f"id_column: the table has no column {id_column!r} (it has {', '.join(table.columns)})",
            parameter="id_column",
        )
    numeric_names = table.numeric_columns
    detected = id_column is None
    if detected:
        id_column = next((n for n in table.columns if n in table.text and _looks_like_id(table.text[n])), None)
    rows = table.rows
    schema: list[dict[str, Any]] = []
    codes: list[np.ndarray] = []
    ids = None
    keep = [i for i, n in enumerate(numeric_names) if n != id_column]
    for name in table.columns:
        if name == id_column:
            if name in table.text:
                cells = table.text[name]
            else:
                cells = text_array([_as_text(v) if v == v else None for v in table.numeric_column(name).tolist()])
            _check_length(name, cells)
            missing = cells.null_count
            ids = cells.fill_null("")
            # A detected id column is unique and complete (_looks_like_id): no need to count again.
            distinct = len(ids) if detected else len(pc.unique(ids))
            schema.append({"name": name, "type": "id", "missing": missing, "distinct": distinct})
        elif name in table.text:
            code, categories = categories_of(table.text[name])
            missing = int((code < 0).sum())
            if missing == rows:
                raise Unprocessable(f"column {name!r} is empty: it has no values", parameter=name)
            if len(categories) > MAX_CATEGORIES:
                raise Unprocessable(
                    f"column {name!r} has {len(categories)} distinct values, more than the {MAX_CATEGORIES} a"
                    f" categorical column may have: if it identifies rows, name it with id_column",
                    parameter="id_column",
                )
            _check_length(name, table.text[name])
            codes.append(code)
            schema.append({
                "name": name, "type": "categorical", "missing": missing, "distinct": len(categories),
                "categories": categories,
            })
        else:
            schema.append({"name": name, "type": "numeric", "missing": 0, "distinct": None})
    numeric_chunks = [c if len(keep) == len(numeric_names) else np.ascontiguousarray(c[:, keep]) for c in table.chunks]
    # Missing counts and (small tables) distinct counts of numeric columns, from the chunks.
    index = 0
    for entry in schema:
        if entry["type"] != "numeric":
            continue
        column = [c[:, index] for c in numeric_chunks]
        entry["missing"] = int(sum(np.isnan(c).sum() for c in column))
        if entry["missing"] == rows:
            raise Unprocessable(f"column {entry['name']!r} is empty: it has no values", parameter=entry["name"])
        if rows <= DISTINCT_AT_INGEST_ROWS:
            entry["distinct"] = int(pd.Series(np.concatenate(column)).nunique())
        index += 1
    if not any(e["type"] != "id" for e in schema):
        raise Unprocessable(f"the table has no column to cluster on besides its id column {id_column!r}")
    return Typed(
        schema=schema,
        numeric=numeric_chunks,
        codes=np.column_stack(codes) if codes else None,
        ids=ids,
        id_column=id_column,
    )


def public(schema: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The schema as a dataset shows it (without the category lists)."""
    return [{k: v for k, v in entry.items() if k != "categories"} for entry in schema]


def column_stats(schema: list[dict[str, Any]], numeric: np.ndarray, codes: np.ndarray | None) -> list[dict]:
    """Per column, what BigQuery's ML.FEATURE_INFO gives: min, max, mean, median, stddev,
    missing, distinct, and for categorical columns the most frequent categories."""
    out: list[dict[str, Any]] = []
    n_index = c_index = 0
    for entry in schema:
        item: dict[str, Any] = {k: entry[k] for k in ("name", "type", "missing", "distinct")}
        if entry["type"] == "numeric":
            values = np.asarray(numeric[:, n_index], dtype=np.float64)
            n_index += 1
            present = values[~np.isnan(values)]
            item["distinct"] = int(pd.Series(present).nunique())
            item.update(
                min=float(present.min()), max=float(present.max()), mean=prep.finite_mean(present),
                median=prep.finite_median(present),
                stddev=prep.finite_std(present, ddof=1) if len(present) > 1 else 0.0,
            )
            for key in ("mean", "median", "stddev"):
                if not np.isfinite(item[key]):
                    item[key] = None  # past float64's range even scaled: not a number to send
        elif entry["type"] == "categorical":
            counts = np.bincount(codes[:, c_index][codes[:, c_index] >= 0], minlength=len(entry["categories"]))
            c_index += 1
            order = np.argsort(-counts, kind="stable")[:TOP_CATEGORIES]
            item["top_categories"] = [{"category": entry["categories"][i], "count": int(counts[i])} for i in order]
        out.append(item)
    return out


def of_dataset(dataset: dict[str, Any]) -> list[dict[str, Any]]:
    """A dataset's column schema (all numeric for one stored before column types existed)."""
    return dataset.get("schema") or numeric_schema(dataset["columns"])
