"""Parquet and Arrow IPC files in, through pyarrow, as the same typed tables the CSV reader makes.

The file's own types decide: integer, floating and decimal columns are numeric (null and NaN
are missing), strings and booleans are text (categories or ids), dates and times are text in
ISO form. Nested columns (lists, structs, maps) and binary ones are refused, naming the column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kmeans.csvio import Table
from kmeans.errors import Unprocessable

PARQUET = "parquet"
ARROW = "arrow"
LABELS = {PARQUET: "Parquet", ARROW: "Arrow IPC"}


def read_file(path: Path, kind: str) -> Table:
    """A Parquet (``kind`` "parquet") or Arrow IPC file or stream ("arrow") as a Table, or Unprocessable."""
    try:
        arrow = pq.read_table(path) if kind == PARQUET else _read_ipc(path)
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).replace(f"'{path}'", "").replace(str(path), "")  # never a server path
        raise Unprocessable(f"the body is not a readable {LABELS[kind]} file: {reason[:200]}") from None
    return from_arrow(arrow)


def _read_ipc(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_stream(source).read_all()


def from_arrow(arrow: pa.Table) -> Table:
    """An Arrow table as a Table: numeric columns float64 (NaN: missing), the others text."""
    names = [str(n) for n in arrow.column_names]
    if not names:
        raise Unprocessable("the file has no columns")
    if arrow.num_rows == 0:
        raise Unprocessable("the file has columns but no rows")
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if not name.strip():
            raise Unprocessable(f"column {position} has no name", column=position)
        if name in seen:
            raise Unprocessable(f"column name {name!r} appears twice", column=position)
        seen.add(name)
    numeric: dict[str, np.ndarray] = {}
    text: dict[str, np.ndarray] = {}
    for position, (name, column) in enumerate(zip(names, arrow.columns, strict=True), start=1):
        kind, values = _column(name, position, column)
        (numeric if kind == "numeric" else text)[name] = values
    order = [n for n in names if n in numeric]
    chunks = [np.column_stack([numeric[n] for n in order])] if order else []
    return Table(chunks=chunks, columns=names, numeric=order, text=text, named=True, first_row=1)


def _column(name: str, position: int, column: pa.ChunkedArray) -> tuple[str, np.ndarray]:
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_nested(kind):
        raise Unprocessable(
            f"column {name!r} holds nested values ({kind}); only flat columns can be clustered, flatten it first",
            parameter=name,
            column=position,
        )
    if pa.types.is_null(kind):
        return "numeric", np.full(len(column), np.nan)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        values = np.asarray(values, dtype=np.float64)
        infinite = np.flatnonzero(np.isinf(values))
        if len(infinite):
            row = int(infinite[0]) + 1
            raise Unprocessable(
                f"row {row}, column {position} ({name!r}): {values[row - 1]} is not a finite number",
                row=row,
                column=position,
            )
        return "numeric", values
    if pa.types.is_boolean(kind):
        cells = column.to_numpy(zero_copy_only=False)
        return "text", np.asarray([None if v is None else "true" if v else "false" for v in cells], dtype=object)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_temporal(kind):
        strings = column if not pa.types.is_temporal(kind) else pc.cast(column, pa.string())
        return "text", np.asarray(strings.to_numpy(zero_copy_only=False), dtype=object)
    raise Unprocessable(
        f"column {name!r} is of type {kind}, which is neither numbers nor text", parameter=name, column=position
    )
