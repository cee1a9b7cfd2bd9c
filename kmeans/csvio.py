"""CSV in and out: text people write by hand or export, to float64 arrays and back.

The fast path is pandas' C parser. When it refuses a file, or the result holds NaN or
infinity, a second pass with the standard ``csv`` module finds the first bad cell so that
the error can name its row and column. Good files never pay for that pass.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pandas as pd

from kmeans.errors import Unprocessable

# A header row longer than this is not a header anyone wrote by hand.
MAX_FIRST_LINE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Table:
    """A parsed numeric table."""

    values: np.ndarray  # float64, shape (rows, n_features)
    columns: list[str]


def default_columns(n: int) -> list[str]:
    """Names for columns that came without a header: x1, x2, …."""
    return [f"x{i}" for i in range(1, n + 1)]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _first_line(handle: BinaryIO) -> str:
    """The first non-blank line of the file, decoded (BOM removed)."""
    raw = b""
    while not raw.strip():
        raw = handle.readline(MAX_FIRST_LINE_BYTES)
        if not raw:
            raise Unprocessable("the CSV file is empty: it has no rows")
        if len(raw) >= MAX_FIRST_LINE_BYTES and not raw.endswith(b"\n"):
            raise Unprocessable(f"row 1 is longer than {MAX_FIRST_LINE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unprocessable(f"row 1 is not UTF-8 text (byte {exc.start})", row=1) from None
    return text.lstrip("\ufeff")


def _header(first_line: str) -> list[str] | None:
    """Column names if the first line is a header (no cell in it is a number), else None."""
    cells = [c.strip() for c in next(csv.reader([first_line]))]
    if any(_is_number(c) for c in cells if c):
        return None
    if not any(cells):
        return None
    names = [c or f"x{i}" for i, c in enumerate(cells, start=1)]
    seen: set[str] = set()
    for i, name in enumerate(names, start=1):
        if name in seen:
            raise Unprocessable(f"row 1, column {i}: column name {name!r} appears twice", row=1, column=i)
        seen.add(name)
    return names


def read_csv(handle: BinaryIO) -> Table:
    """Parse a seekable binary CSV stream into a float64 table, or raise Unprocessable."""
    header = _header(_first_line(handle))
    handle.seek(0)
    try:
        frame = pd.read_csv(
            handle,
            header=0 if header else None,
            dtype=np.float64,
            skipinitialspace=True,
            encoding="utf-8-sig",
            engine="c",
            skip_blank_lines=True,
        )
        values = frame.to_numpy(dtype=np.float64, copy=False)
        del frame
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        handle.seek(0)
        _diagnose(handle, header is not None)
        raise Unprocessable(f"the CSV file could not be read: {exc}") from None
    if values.shape[0] == 0:
        raise Unprocessable("the CSV file has a header row but no data rows")
    if not np.isfinite(values).all():
        handle.seek(0)
        _diagnose(handle, header is not None)
        raise Unprocessable("the CSV file holds values that are not finite numbers")
    columns = header if header is not None else default_columns(values.shape[1])
    if len(columns) != values.shape[1]:
        raise Unprocessable(
            f"the header names {len(columns)} columns but the rows have {values.shape[1]}"
        )
    if not values.flags.writeable or not values.flags.c_contiguous:
        values = np.ascontiguousarray(values).copy()
    return Table(values=values, columns=columns)


def _diagnose(handle: BinaryIO, has_header: bool) -> None:
    """Walk the file cell by cell and raise Unprocessable at the first bad one."""
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    width: int | None = None
    width_row = 0
    try:
        for cells in reader:
            row = reader.line_num
            if not cells or all(not c.strip() for c in cells) and len(cells) == 1:
                continue
            if width is None:
                width, width_row = len(cells), row
                if has_header:
                    continue
            if len(cells) != width:
                raise Unprocessable(
                    f"row {row} has {len(cells)} values but row {width_row} has {width}",
                    row=row,
                )
            for col, cell in enumerate(cells, start=1):
                _check_cell(cell, row, col)
    except UnicodeDecodeError:
        raise Unprocessable("the CSV file is not UTF-8 text") from None
    except csv.Error as exc:
        raise Unprocessable(f"row {reader.line_num}: {exc}", row=reader.line_num) from None
    finally:
        text.detach()


def _check_cell(cell: str, row: int, col: int) -> None:
    value = cell.strip()
    if not value:
        raise Unprocessable(f"row {row}, column {col}: the value is empty", row=row, column=col)
    try:
        number = float(value)
    except ValueError:
        raise Unprocessable(
            f"row {row}, column {col}: {value[:40]!r} is not a number", row=row, column=col
        ) from None
    if not math.isfinite(number):
        raise Unprocessable(
            f"row {row}, column {col}: {value[:40]!r} is not a finite number "
            "(NaN and infinity are not allowed)",
            row=row,
            column=col,
        )


def check_rows(data: Sequence[Sequence[float]], width: int | None = None) -> np.ndarray:
    """A float64 array from JSON rows, or Unprocessable naming the first bad row."""
    expected = width if width is not None else len(data[0])
    for i, row in enumerate(data, start=1):
        if len(row) != expected:
            raise Unprocessable(
                f"data row {i} has {len(row)} values; expected {expected}", row=i
            )
    values = np.asarray(data, dtype=np.float64)
    if not np.isfinite(values).all():
        r, c = np.argwhere(~np.isfinite(values))[0]
        raise Unprocessable(
            f"data row {r + 1}, column {c + 1}: NaN and infinity are not allowed",
            row=int(r + 1),
            column=int(c + 1),
        )
    return values


def format_labels(labels: Iterable[int] | np.ndarray) -> str:
    """One integer label per line, with a trailing newline."""
    items = labels.tolist() if isinstance(labels, np.ndarray) else list(labels)
    return "\n".join(map(str, items)) + "\n" if items else ""


def format_table(values: np.ndarray, columns: Sequence[str]) -> str:
    """A CSV text with a header row; floats keep their full precision (repr)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(values.tolist())
    return out.getvalue()
