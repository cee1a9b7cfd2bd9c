"""Parquet and Arrow IPC files in, through pyarrow, as the same typed tables the CSV reader makes.

The file's own types decide: integer, floating and decimal columns are numeric (null and NaN
are missing), strings and booleans are text (categories or ids), dates and times are text in
ISO form. Nested columns (lists, structs, maps) and binary ones are refused, naming the column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kmeans.csvio import (
    Expect,
    Table,
    _BadCell,
    _booleans_as_words,
    check_names,
    release_arrow_memory,
    typed_arrow_column,
)
from kmeans.errors import PayloadTooLarge, Unprocessable

PARQUET = "parquet"
ARROW = "arrow"
LABELS = {PARQUET: "Parquet", ARROW: "Arrow IPC"}


def read_file(path: Path, kind: str, max_bytes: int, expect: Expect | None = None) -> Table:
    """A Parquet (``kind`` "parquet") or Arrow IPC file or stream ("arrow") as a Table, or
    Unprocessable; PayloadTooLarge when its rows x columns x 8 bytes would pass ``max_bytes``
    (a compressed file of a few kilobytes can hold billions of rows)."""
    try:
        if kind == PARQUET and (streamed := _stream_parquet(path, max_bytes, expect)) is not None:
            return streamed
        arrow = _read_parquet(path, max_bytes) if kind == PARQUET else _read_ipc(path, max_bytes)
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).replace(f"'{path}'", "").replace(str(path), "")  # never a server path
        raise Unprocessable(f"the body is not a readable {LABELS[kind]} file: {reason[:200]}") from None
    return from_arrow(arrow, expect)


def _bound(rows: int, columns: int, max_bytes: int) -> None:
    if rows * max(columns, 1) * 8 > max_bytes:
        raise PayloadTooLarge(
            f"the table has {rows} rows of {columns} columns: more than the {max_bytes} bytes a table may take"
            " in memory; send fewer rows"
        )


def _read_parquet(path: Path, max_bytes: int) -> pa.Table:
    metadata = pq.ParquetFile(path).metadata
    _bound(metadata.num_rows, metadata.num_columns, max_bytes)
    return pq.read_table(path)


# Rows decoded at a time by the streamed Parquet read: its peak is the final arrays plus one batch.
PARQUET_BATCH_ROWS = 65536
PARQUET_BUFFER_BYTES = 1024 * 1024


def _stream_parquet(path: Path, max_bytes: int, expect: Expect | None = None) -> Table | None:
    """A Parquet file read batch by batch: its numeric columns straight into float64 row blocks,
    the others kept as Arrow arrays, so the whole file's Arrow table is never held. None when the
    whole-table read must decide (and name the error): a name, a type or a value it refuses."""
    # Buffered reads of the file, not its column chunks read whole (pre_buffer): the read's
    # transient memory is that of a batch rather than of a row group (often the whole file).
    parquet = pq.ParquetFile(path, buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False)
    _bound(parquet.metadata.num_rows, parquet.metadata.num_columns, max_bytes)
    schema = parquet.schema_arrow
    names = [str(n) for n in schema.names]
    if not names or parquet.metadata.num_rows == 0 or any(not n.strip() for n in names):
        return None
    try:
        check_names(names)
    except Unprocessable:
        return None
    forced = set(expect.text) if expect is not None else set()
    numeric: list[str] = []
    for name, kind in zip(names, schema.types, strict=True):
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        types = pa.types
        if types.is_nested(kind) or not (
            types.is_integer(kind) or types.is_floating(kind) or types.is_decimal(kind) or types.is_string(kind)
            or types.is_large_string(kind) or types.is_boolean(kind) or types.is_temporal(kind)
        ):
            return None
        if name not in forced and (types.is_integer(kind) or types.is_floating(kind) or types.is_decimal(kind)):
            numeric.append(name)
    rest: dict[str, list[pa.Array]] = {n: [] for n in names if n not in numeric}
    blocks: list[np.ndarray] = []
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            block = np.empty((batch.num_rows, len(numeric)))
            for j, name in enumerate(numeric):
                column = batch.column(name)
                if pa.types.is_dictionary(column.type):
                    column = column.cast(column.type.value_type)
                typed = typed_arrow_column(column, quoted=False)
                assert typed is not None and typed[0] == "numeric"  # its type says so
                block[:, j] = typed[1]
            blocks.append(block)
            for name, arrays in rest.items():
                arrays.append(batch.column(name))
            del batch, block
    except _BadCell:  # a value that is not finite: the whole-table read names its row
        return None
    release_arrow_memory()
    text: dict[str, pa.Array] = {}
    for position, name in enumerate(names, start=1):
        if name in rest:
            arrays = rest.pop(name)
            column = pa.chunked_array(arrays, type=schema.field(name).type)
            del arrays
            kind, values = _column(name, position, column, name in forced)
            del column
            text[name] = values
            release_arrow_memory()
    return Table(chunks=blocks if numeric else [], columns=names, numeric=numeric, text=text, named=True, first_row=1)


def _read_ipc(path: Path, max_bytes: int) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_stream(source)
            batches = iter(reader)
        kept, rows = [], 0
        for batch in batches:
            rows += batch.num_rows
            _bound(rows, batch.num_columns, max_bytes)
            kept.append(batch)
        return pa.Table.from_batches(kept, schema=reader.schema)


def from_arrow(arrow: pa.Table, expect: Expect | None = None) -> Table:
    """An Arrow table as a Table: numeric columns float64 (NaN: missing), the others text;
    the columns ``expect`` names as text (categorical features, the id) always text."""
    names = [str(n) for n in arrow.column_names]
    if not names:
        raise Unprocessable("the file has no columns")
    if arrow.num_rows == 0:
        raise Unprocessable("the file has columns but no rows")
    for position, name in enumerate(names, start=1):
        if not name.strip():
            raise Unprocessable(f"column {position} has no name", column=position)
    check_names(names)
    forced = set(expect.text) if expect is not None else set()
    numeric: dict[str, np.ndarray] = {}
    text: dict[str, pa.Array] = {}
    for position, (name, column) in enumerate(zip(names, arrow.columns, strict=True), start=1):
        kind, values = _column(name, position, column, name in forced)
        (numeric if kind == "numeric" else text)[name] = values
    order = [n for n in names if n in numeric]
    chunks = [np.column_stack([numeric[n] for n in order])] if order else []
    return Table(chunks=chunks, columns=names, numeric=order, text=text, named=True, first_row=1)


def _column(name: str, position: int, column: pa.ChunkedArray, as_text: bool = False) -> tuple[str, Any]:
    """``("numeric", float64 values, NaN missing)`` or ``("text", a large_string array, null missing)``."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_nested(kind):
        raise Unprocessable(
            f"column {name!r} holds nested values ({kind}); only flat columns can be clustered, flatten it first",
            parameter=name,
            column=position,
        )
    try:
        typed = typed_arrow_column(column, as_text, quoted=False)
    except _BadCell as bad:
        row = bad.index + 1
        raise Unprocessable(
            f"row {row}, column {position} ({name!r}): {bad.reason}", row=row, column=position
        ) from None
    if typed is not None:
        return typed
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text", _booleans_as_words(column.cast(pa.large_string()).combine_chunks())
    raise Unprocessable(
        f"column {name!r} is of type {kind}, which is neither numbers nor text", parameter=name, column=position
    )
