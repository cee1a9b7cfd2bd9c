"""CSV in and out: text people write by hand or export, to float64 arrays and back.

The fast path is pandas' C parser, run on line-aligned blocks of the file in parallel
threads (its tokenizer releases the GIL). Whenever that path meets anything it cannot be
sure of (a quote, a failure, a ragged or non-finite block) the file is read again by one
chunked pandas reader, which is what decides: it returns the table, or a second pass with
the standard ``csv`` module finds the first bad cell so that the error can name its row and
column. Good files never pay for those passes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from kmeans.errors import Unprocessable

# A header row longer than this is not a header anyone wrote by hand.
MAX_FIRST_LINE_BYTES = 1024 * 1024
# The part of the head looked at first for the first line (see _first_line).
FIRST_LINE_WINDOW = 64 * 1024
# Rows parsed at a time: peak memory is the final array plus one chunk, not a multiple of it.
CHUNK_ROWS = 262144
# Bytes per block of the parallel fast path: an input up to this size is parsed by one
# pandas call in the calling thread; larger ones in blocks by PARSE_THREADS threads. Peak
# memory is the final array plus a few blocks in flight, as with CHUNK_ROWS (each costs
# pandas several times its size: 4 MiB blocks took a 100 MB upload from 1.4x to 1.8x its
# array at peak, 2 MiB ones to 1.36x, at the same speed).
BLOCK_BYTES = 2 * 1024 * 1024
# The CPUs this process may use (not the machine's: a container may get fewer), at most 4.
PARSE_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# What a cell holding no value looks like (``?na_values=`` replaces the list).
NA_VALUES = ("", "NA", "N/A", "NaN", "null", "None")
DELIMITERS = (",", ";", "\t", "|")
# Lines of the head looked at to detect the delimiter.
SNIFF_LINES = 50


@dataclass(frozen=True)
class Options:
    """How to read a CSV: the delimiter (None: detected), the decimal mark, the NA markers."""

    delimiter: str | None = None
    decimal: str = "."
    na_values: tuple[str, ...] = NA_VALUES
    # Every cell a finite number, as the classic endpoints have always required.
    numeric_only: bool = False
    # What the body is: "csv", or "parquet" / "arrow" (read by kmeans.arrowio, which takes
    # none of the options above).
    format: str = "csv"

    @property
    def plain(self) -> bool:
        """Whether the fast numeric path may read it (commas, decimal points, default NA markers)."""
        return self.delimiter in (None, ",") and self.decimal == "." and self.na_values == NA_VALUES

    @property
    def na_set(self) -> set[str]:
        """The NA markers, also in lower and upper case (``na``, ``NULL``, ``none`` …)."""
        return {v for m in self.na_values for v in (m, m.lower(), m.upper())}


@dataclass(frozen=True)
class Expect:
    """What a reader knows of the table it reads, from the model it is for: the columns the
    model takes (its features, then its id column), those to keep as text whatever they look
    like (categorical features, the id: "007" stays "007"), and the category values a data
    row may hold (to tell a first row of categories from a header row)."""

    names: tuple[str, ...] = ()
    text: frozenset[str] = frozenset()
    known: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Table:
    """A parsed table: the numeric columns as the row chunks they were parsed in (float64, C
    order, NaN where a value is missing), the text columns as Arrow large_string arrays
    (null: missing)."""

    chunks: list[np.ndarray]
    columns: list[str]
    # Names of the chunks' columns, in order (None: every column is numeric).
    numeric: list[str] | None = None
    text: dict[str, pa.Array] = field(default_factory=dict)
    # Whether the column names came with the data (a header row, JSON objects) or are x1, x2, ….
    named: bool = True
    # The row number (as errors count them) of the first data row: 2 after a CSV header.
    first_row: int = 1
    # Rows that were JSON objects: their names are keys, their order means nothing.
    keyed: bool = False
    # The CSV delimiter the table was read with.
    delimiter: str = ","

    @classmethod
    def of(cls, values: np.ndarray, columns: list[str]) -> Table:
        return cls([np.ascontiguousarray(values, dtype=np.float64)], columns)

    def _named(self, named: bool) -> Table:
        return dataclasses.replace(self, named=named)

    @property
    def rows(self) -> int:
        if not self.chunks and self.text:
            return len(next(iter(self.text.values())))
        return sum(len(c) for c in self.chunks)

    @property
    def n_features(self) -> int:
        return len(self.columns)

    @property
    def numeric_columns(self) -> list[str]:
        return self.columns if self.numeric is None else self.numeric

    def numeric_column(self, name: str) -> np.ndarray:
        """One numeric column's values (float64)."""
        index = self.numeric_columns.index(name)
        return np.concatenate([c[:, index] for c in self.chunks]) if self.chunks else np.empty(0)

    @property
    def values(self) -> np.ndarray:
        """All rows as one array (a copy when there are several chunks)."""
        return self.chunks[0] if len(self.chunks) == 1 else np.concatenate(self.chunks)


def default_columns(n: int) -> list[str]:
    """Names for columns that came without a header: x1, x2, …."""
    return [f"x{i}" for i in range(1, n + 1)]


def _is_number(cell: str, decimal: str = ".") -> bool:
    try:
        float(cell.replace(decimal, ".") if decimal != "." else cell)
    except ValueError:
        return False
    return True


def _first_line(handle: BinaryIO) -> tuple[str, int]:
    """The first non-blank line of the file, decoded (BOM removed), and the byte offset where
    the next line starts. Lines end with LF, CRLF or a lone CR (old Mac files)."""
    head = handle.read(MAX_FIRST_LINE_BYTES)
    # First lines are short: split a window of the head before all of it (a 10,000-row
    # prediction body fits in the head, and splitting it took longer than parsing a row).
    if len(head) > FIRST_LINE_WINDOW and (found := _first_nonblank(head[:FIRST_LINE_WINDOW], cut=True)):
        return found
    if found := _first_nonblank(head, cut=len(head) == MAX_FIRST_LINE_BYTES):
        return found
    if len(head) == MAX_FIRST_LINE_BYTES:
        raise Unprocessable(f"the first {MAX_FIRST_LINE_BYTES} bytes of the CSV file hold no complete row")
    raise Unprocessable("the CSV file is empty: it has no rows")


def _first_nonblank(head: bytes, cut: bool) -> tuple[str, int] | None:
    """_first_line within ``head``; ``cut``: its last line may be incomplete, so skip it."""
    lines = head.splitlines(keepends=True)
    if cut and lines:
        lines.pop()
    end = 0
    for number, raw in enumerate(lines, start=1):
        end += len(raw)
        if raw.strip().lstrip(b"\xef\xbb\xbf").strip():
            try:
                return raw.decode("utf-8").lstrip("\ufeff").rstrip("\r\n"), end
            except UnicodeDecodeError as exc:
                around = raw[max(0, exc.start - 20) : exc.end + 20]
                raise Unprocessable(
                    f"row {number} is not UTF-8 text (byte {exc.start + 1}: {around!r}); save the file as UTF-8",
                    row=number,
                ) from None
    return None


def _header(
    first_line: str, delimiter: str = ",", decimal: str = ".", expect: Expect | None = None
) -> list[str] | None:
    """Column names if the first line is a header, else None. A header has no number in it;
    and when the reader expects a model's columns, a row that names none of them but holds
    only categories the model knows is a data row."""
    cells = [c.strip() for c in next(csv.reader([first_line], delimiter=delimiter, skipinitialspace=True))]
    if any(_is_number(c, decimal) for c in cells if c):
        return None
    if not any(cells):
        return None
    if expect is not None and not set(cells) & set(expect.names) and {c for c in cells if c} <= expect.known:
        return None
    names = [c or f"x{i}" for i, c in enumerate(cells, start=1)]
    check_names(names, row=1)
    return names


# Characters a column name may not hold: it is echoed in headers and CSV answers.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_names(names: Sequence[str], row: int | None = None, parameter: str | None = None) -> None:
    """Unprocessable for a column name that appears twice or holds a control character (a line
    break …); ``row``: the header's row, ``parameter``: the request field that gave the names."""
    seen: set[str] = set()
    for i, name in enumerate(names, start=1):
        where = f"row {row}, column {i}: " if row is not None else f"{parameter or 'column'} {i}: "
        if _CONTROL.search(name):
            raise Unprocessable(
                f"{where}column name {name[:40]!r} holds a control character", row=row, column=i, parameter=parameter
            )
        if name in seen:
            raise Unprocessable(
                f"{where}column name {name!r} appears twice", row=row, column=i, parameter=parameter
            )
        seen.add(name)


def read_csv(handle: BinaryIO, options: Options | None = None, expect: Expect | None = None) -> Table:
    """Parse a seekable binary CSV stream into a table, or raise Unprocessable.

    ``expect``: what the model the rows are for takes (a prediction): which columns stay
    text, and how to tell a header row from a row of categories.
    """
    options = options or Options()
    if options.delimiter is not None and options.delimiter == options.decimal:
        raise Unprocessable(f"delimiter and decimal cannot both be {options.decimal!r}", parameter="decimal")
    first, header_end = _first_line(handle)
    handle.seek(0)
    head = handle.read(FIRST_LINE_WINDOW)
    delimiter = _delimiter(head, options)
    header = _header(first, delimiter, options.decimal, expect)
    handle.seek(0)
    # pandas starts after the header (given one name fewer than the rows have values, it
    # would quietly make the first column an index), or after a UTF-8 BOM (rather than
    # decode the whole file to find it).
    start = header_end if header else 3 if handle.read(3) == b"\xef\xbb\xbf" else 0
    handle.seek(start)
    table = None
    as_text = _text_columns(header, expect)
    if delimiter == "," and options.plain and not as_text:
        chunks = _read_blocks(handle)
        if chunks is not None:
            width = chunks[0].shape[1]
            columns = header if header is not None else default_columns(width)
            if len(columns) == width:
                table = Table(chunks=chunks, columns=columns, named=header is not None, first_row=1 + bool(header))
        handle.seek(start)
    if table is None:
        table = _read_typed(handle, header, delimiter, options, expect)
    if options.numeric_only and not all_numbers(table):
        handle.seek(0)
        _diagnose(handle, header is not None, delimiter, cells=True)
        raise Unprocessable("the CSV file has a cell that is not a number")  # _diagnose names it first
    return table


def _text_columns(header: list[str] | None, expect: Expect | None) -> set[int]:
    """Positions (0-based) of the columns to keep as text; {-1} when there is no header and
    the positions come from the model's column order (known once the width is)."""
    if expect is None or not expect.text:
        return set()
    if header is not None:
        return {i for i, name in enumerate(header) if name in expect.text}
    return {-1}


def all_numbers(table: Table) -> bool:
    """Whether every cell of ``table`` is a number (no text column, no missing value)."""
    return not table.text and not any(np.isnan(chunk).any() for chunk in table.chunks)


# What the classic endpoints read, as they always have: commas, every cell a finite number.
CLASSIC = Options(delimiter=",", numeric_only=True)


def _delimiter(head: bytes, options: Options) -> str:
    """The delimiter given, or the one among DELIMITERS that splits the first lines into the
    same number (> 1) of columns, the most columns winning; ',' when none splits anything."""
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    if len(head) == FIRST_LINE_WINDOW:
        text = text[: text.rfind("\n") + 1] or text
    lines = text.splitlines()[:SNIFF_LINES]
    widths: dict[str, list[int]] = {}
    for candidate in DELIMITERS:
        if candidate == options.decimal:
            continue
        try:
            rows = [r for r in csv.reader(lines, delimiter=candidate) if any(c.strip() for c in r)]
        except csv.Error:
            continue
        widths[candidate] = [len(r) for r in rows]
    consistent = [d for d, w in widths.items() if w and min(w) == max(w) > 1]
    splitting = max(consistent, key=lambda d: widths[d][0], default=None)
    given = options.delimiter
    if given is not None:
        if splitting not in (None, given) and widths.get(given) and max(widths[given]) == 1:
            raise Unprocessable(
                f"delimiter {given!r} splits no row into columns; the file looks {splitting!r}-separated",
                parameter="delimiter",
            )
        return given
    if splitting is not None:
        return splitting
    # Nothing splits consistently: the most common first-row splitter, for the error to name the row.
    ragged = [d for d, w in widths.items() if w and w[0] > 1]
    return ragged[0] if ragged else ","


def _read_typed(
    handle: BinaryIO, header: list[str] | None, delimiter: str, options: Options, expect: Expect | None = None
) -> Table:
    """The general reader, pyarrow's: quoted fields with delimiters and line breaks inside, NA
    markers, decimal commas, text columns. pyarrow types each column (numbers, booleans,
    dates, text); a text column that holds nothing but numbers (quoted, say) is numeric, one
    that is mostly numbers with a few words is an error naming the first of them."""
    start = handle.tell()
    head = handle.read(FIRST_LINE_WINDOW).decode("utf-8", "replace").lstrip("\ufeff")
    handle.seek(start)
    first = next((line for line in head.splitlines() if line.strip()), "")
    width = len(header) if header else max(1, len(next(csv.reader([first], delimiter=delimiter), [""])))
    names = header or default_columns(width)
    # Without a header, columns are the model's by position (when it expects some).
    model_names = list(expect.names) if expect is not None and header is None else []
    forced = set(expect.text) if expect is not None else set()
    as_text = [
        n for i, n in enumerate(names) if n in forced or (i < len(model_names) and model_names[i] in forced)
    ]
    na = sorted(options.na_set)
    # pyarrow reads ahead in threads of its own; a request body must be on disk first.
    complete = getattr(handle, "complete_file", None)
    source = complete() if complete is not None else handle
    try:
        arrow = pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(column_names=names, encoding="utf8"),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                newlines_in_values=True,
                ignore_empty_lines=True,
                invalid_row_handler=_skip_blank_rows,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.large_string() for n in as_text},
                null_values=na,
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                decimal_point=options.decimal,
                true_values=["true", "True", "TRUE"],
                false_values=["false", "False", "FALSE"],
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        if "Empty CSV file" in str(exc):
            raise Unprocessable("the CSV file has a header row but no data rows") from None
        handle.seek(0)
        _diagnose(handle, header is not None, delimiter, cells=False)
        raise Unprocessable(f"the CSV file could not be read: {exc}") from None
    finally:
        if source is not handle:
            source.close()
    if arrow.num_rows == 0:
        raise Unprocessable("the CSV file has a header row but no data rows")
    text: dict[str, pa.Array] = {}
    numeric: list[str] = []
    numeric_values: dict[str, np.ndarray] = {}
    rows = arrow.num_rows
    # Each column is let go once converted, and the columns pyarrow typed as numbers go straight
    # into the one float64 block: the table, the converted columns and the block are never all
    # held at once.
    columns = dict(zip(names, arrow.columns, strict=True))
    del arrow
    sure = [n for n in names if n not in as_text and _numeric_type(columns[n].type)]
    block = np.empty((rows, len(sure)))
    for position, name in enumerate(names, start=1):
        column = columns.pop(name)
        try:
            kind, values = _arrow_column(column, name in as_text, options, na)
        except _BadCell as bad:
            handle.seek(0)
            if bad.reason.endswith("not UTF-8 text"):
                _not_utf8(handle, header is not None, delimiter)
            # A user counts the file's lines (the header and blank ones too), not data rows.
            line = _line_of(handle, header is not None, delimiter, bad.index)
            raise Unprocessable(f"row {line}, column {position}: {bad.reason}", row=line, column=position) from None
        if kind == "text":
            if delimiter != "," and options.decimal == ".":
                _hint_decimal_commas(name, values)
            text[name] = values
        else:
            numeric.append(name)
            if numeric == sure[: len(numeric)]:
                block[:, len(numeric) - 1] = values
            else:  # text pyarrow kept that holds numbers (quoted ones, say): placed below
                numeric_values[name] = values
        del column, values
    if numeric != sure:
        placed = {n: block[:, j] for j, n in enumerate(sure)}
        block = np.empty((rows, len(numeric)))
        for j, name in enumerate(numeric):
            block[:, j] = numeric_values.pop(name) if name in numeric_values else placed[name]
        del placed
    return Table(
        chunks=[block] if numeric else [],
        columns=names,
        numeric=numeric,
        text=text,
        named=header is not None,
        first_row=2 if header else 1,
        delimiter=delimiter,
    )


def _numeric_type(kind: pa.DataType) -> bool:
    """Whether typed_arrow_column makes a column of this Arrow type numeric (or refuses it)."""
    types = pa.types
    return types.is_integer(kind) or types.is_floating(kind) or types.is_decimal(kind) or types.is_null(kind)


class _BadCell(Exception):
    """A cell that cannot be what its column is: ``index`` its data row (0-based)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index, self.reason = index, reason


# What float() takes that a CSV writer means as a number (no "1_000", no non-ASCII digits).
_NUMBER = r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(?i:inf|infinity|nan)"


def _arrow_column(column: pa.ChunkedArray, as_text: bool, options: Options, na: list[str]) -> tuple[str, Any]:
    """One column pyarrow read as ``("numeric", float64 values, NaN missing)`` or ``("text",
    a large_string Arrow array, null missing)``; _BadCell for a typo among numbers or a number
    that is not finite."""
    # A column to keep as text is always read as large_string (ConvertOptions column_types), so
    # as_text only ever matters below, among the strings.
    typed = typed_arrow_column(column, as_text)
    if typed is not None:
        return typed
    kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):  # what pyarrow makes of bytes that are not UTF-8
        raise _BadCell(0, "the CSV file is not UTF-8 text")
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):  # any other type: text as written
        return "text", column.cast(pa.large_string()).combine_chunks()
    cells = _unquoted(pc.utf8_trim_whitespace(column.cast(pa.large_string())))
    cells = pc.if_else(pc.is_in(cells, pa.array(na, pa.large_string())), pa.scalar(None, pa.large_string()), cells)
    cells = cells.combine_chunks()
    if as_text:
        return "text", _booleans_as_words(cells)
    present = len(cells) - cells.null_count
    if present == 0:
        return "numeric", np.full(len(cells), np.nan)
    written = cells if options.decimal == "." else pc.replace_substring(cells, options.decimal, ".")
    looks = pc.match_substring_regex(written, f"^({_NUMBER})$")
    numbers = pc.sum(looks).as_py() or 0
    if numbers == present:  # numbers pyarrow kept as text (quoted after a space, say)
        return "numeric", _finite(written.cast(pa.float64()).to_numpy(zero_copy_only=False), cells)
    # A column of text with some numbers in it is categorical; one of numbers with a few
    # words is a typo, named (half and half counts as a typo: the answer would be silent).
    if numbers * 2 < present:
        return "text", _booleans_as_words(cells)
    odd = pc.and_(cells.is_valid(), pc.invert(looks.fill_null(False)))
    index = int(np.flatnonzero(odd.to_numpy(zero_copy_only=False))[0])
    raise _BadCell(index, f"{str(cells[index].as_py())[:40]!r} is not a number")


def typed_arrow_column(column: pa.ChunkedArray, as_text: bool = False, quoted: bool = True) -> tuple[str, Any] | None:
    """A null, boolean, number or date/time column as ("numeric", float64) or ("text", large_string); else None."""
    # The CSV and the Parquet/Arrow readers' shared part. ``as_text``: a column to keep as text
    # (numbers as written, whole floats without ".0"); ``quoted``: the _finite message, the CSV's
    # (the cell quoted, and why) or the bare value. _BadCell for a number that is not finite.
    kind = column.type
    if pa.types.is_null(kind):
        if as_text:
            return "text", pa.nulls(len(column), pa.large_string())
        return "numeric", np.full(len(column), np.nan)
    if pa.types.is_boolean(kind):
        return "text", pc.if_else(column, "true", "false").cast(pa.large_string()).combine_chunks()
    if as_text and (pa.types.is_integer(kind) or pa.types.is_decimal(kind) or pa.types.is_temporal(kind)):
        return "text", column.cast(pa.large_string()).combine_chunks()
    if as_text and pa.types.is_floating(kind):
        return "text", text_array([None if v is None or v != v else _as_text(v) for v in column.to_pylist()])
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        # Integers past 2**53 round to the nearest float64 (in a CSV too).
        values = np.asarray(column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64)
        return "numeric", _finite(values, column, quoted)
    if pa.types.is_temporal(kind):  # dates, times: text as written
        return "text", column.cast(pa.large_string()).combine_chunks()
    return None


def _finite(values: np.ndarray, column: Any, quoted: bool = True) -> np.ndarray:
    """``values`` (float64, NaN where missing) if every present one is finite, else _BadCell."""
    bad = np.flatnonzero(np.isinf(values))
    if len(bad):
        index = int(bad[0])
        text = str(column[index].as_py())[:40]
        if not quoted:  # Parquet/Arrow: the value itself (only ever inf or -inf)
            raise _BadCell(index, f"{text} is not a finite number")
        raise _BadCell(index, f"{text!r} is not a finite number (NaN and infinity are not allowed)")
    return values


def _hint_decimal_commas(name: str, cells: pa.Array) -> None:
    """Unprocessable when a text column of a file not separated by commas holds nothing but
    numbers written with decimal commas: read with ``decimal=.`` it would silently become
    categories."""
    present = cells.drop_null()
    if not len(present) or not pc.any(pc.match_substring(present, ",")).as_py():
        return
    if pc.all(pc.match_substring_regex(present, rf"^([+-]?\d*,\d+|{_NUMBER})$")).as_py():
        raise Unprocessable(
            f"column {name!r} holds numbers with decimal commas ({str(present[0].as_py())[:20]!r}); pass"
            " decimal=, to read them as numbers",
            parameter="decimal",
        )


def _skip_blank_rows(row: pacsv.InvalidRow) -> str:
    """pyarrow's handler of rows of the wrong width: a line of spaces is a blank line."""
    return "skip" if not (row.text or "").strip() else "error"


def _unquoted(cells: pa.ChunkedArray) -> pa.ChunkedArray:
    """Cells quoted after a space (``1, "2.5"``, which Python's csv module reads with
    skipinitialspace but pyarrow keeps as written) without their quotes."""
    quoted = pc.and_(pc.starts_with(cells, '"'), pc.ends_with(cells, '"'))
    if not pc.any(quoted).as_py():
        return cells
    inner = pc.replace_substring(pc.utf8_slice_codeunits(cells, 1, -1), '""', '"')
    return pc.if_else(quoted, inner, cells)


_BOOLEAN_WORDS = {"true", "false"}


def _booleans_as_words(cells: pa.Array) -> pa.Array:
    """A column of booleans however written (True, FALSE, …) as the words true and false, as JSON
    and Parquet booleans are: one category whatever the file format."""
    first = _first_present(cells)
    if first is None or first.lower() not in _BOOLEAN_WORDS:  # no need to hash a million ids to know
        return cells
    distinct = pc.unique(cells.drop_null())
    if 0 < len(distinct) <= 6 and set(pc.utf8_lower(distinct).to_pylist()) <= _BOOLEAN_WORDS:
        return pc.utf8_lower(cells)
    return cells


def _first_present(cells: pa.Array) -> str | None:
    """The first value of a text column that is not missing (None: there is none)."""
    if cells.null_count == len(cells):
        return None
    if not cells.null_count:
        return cells[0].as_py()
    start, size = 0, 1024
    while True:
        found = cells.slice(start, size).drop_null()
        if len(found):
            return found[0].as_py()
        start, size = start + size, size * 4


def text_array(values: Sequence[object]) -> pa.Array:
    """Text cells (None: missing) as the large_string Arrow array a Table holds."""
    return pa.array(list(values), type=pa.large_string())


def _as_text(value: object) -> str:
    """A JSON value as the text of a category: booleans as true/false, numbers as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _parse_block(block: bytes) -> np.ndarray | None:
    """One block of whole lines as a float64 array; None if pandas refuses it or it holds
    NaN or infinity (the chunked reader then reads the file and names the error)."""
    # pandas reads true/false (any case) as 1/0 even into float64: a column of booleans is
    # categories, which the general reader decides (no number has a t or an f in it; inf,
    # which has, is refused there too).
    if b"t" in block or b"f" in block or b"T" in block or b"F" in block:
        return None
    try:
        frame = pd.read_csv(
            io.BytesIO(block),
            header=None,
            dtype=np.float64,
            engine="c",
            # Only spaces are skipped, so without one the option changes nothing, and it
            # costs a third of the parse.
            skipinitialspace=b" " in block,
            skip_blank_lines=True,
            low_memory=False,  # the block is already small; one pass, no internal chunks
        )
        values = np.ascontiguousarray(frame.to_numpy(dtype=np.float64))
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    return values if len(values) and np.isfinite(values).all() else None


def _blocks(handle: BinaryIO, first: bytes) -> Iterator[bytes | None]:
    """``first`` and the rest of the file in blocks of about BLOCK_BYTES that end at a line
    feed; None for a block that cannot be split safely (no line feed: lone-CR line ends or
    a huge line; or a quote, which may hold a line feed of its own)."""
    data, pending = first, b""
    while data:
        cut = data.rfind(b"\n") + 1
        # One copy per block: the previous block's unfinished line joined to this one's lines.
        block = pending + memoryview(data)[:cut] if pending else data[:cut] if cut < len(data) else data
        if cut == 0 or b'"' in block:
            yield None
            return
        pending = data[cut:]
        yield block
        del block
        data = handle.read(BLOCK_BYTES)
    if pending:
        yield pending if b'"' not in pending else None


def _read_blocks(handle: BinaryIO) -> list[np.ndarray] | None:
    """The fast path: the rows from the current position as float64 arrays, one per block,
    parsed in parallel; None whenever the chunked reader must decide instead."""
    first = handle.read(BLOCK_BYTES)
    while 0 < len(first) < BLOCK_BYTES and (more := handle.read(BLOCK_BYTES - len(first))):
        first += more  # a stream may return less than asked before its end
    if len(first) < BLOCK_BYTES:  # the whole input: one call, no threads (predictions)
        values = _parse_block(first) if first else None
        return [values] if values is not None else None
    chunks: list[np.ndarray] = []
    with ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="kmeans-csv") as pool:
        pending: deque[Future[np.ndarray | None]] = deque()
        try:
            for block in _blocks(handle, first):
                if block is None:
                    return None
                pending.append(pool.submit(_parse_block, block))
                del block
                # A bounded number of blocks in flight bounds the memory they take.
                while len(pending) > PARSE_THREADS:
                    if not _collect(pending.popleft(), chunks):
                        return None
            while pending:
                if not _collect(pending.popleft(), chunks):
                    return None
        finally:
            for future in pending:
                future.cancel()
    return chunks


def _collect(future: Future[np.ndarray | None], chunks: list[np.ndarray]) -> bool:
    """Append a parsed block to ``chunks``; False if it failed or its width differs."""
    values = future.result()
    if values is None or (chunks and values.shape[1] != chunks[0].shape[1]):
        chunks.clear()
        return False
    chunks.append(values)
    return True


def _line_of(handle: BinaryIO, has_header: bool, delimiter: str, index: int) -> int:
    """The file line (1-based, blank lines counted) where data row ``index`` (0-based) starts."""
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, delimiter=delimiter, skipinitialspace=True)
    seen = -2 if has_header else -1
    try:
        start = 1
        for values in reader:
            if len(values) > 1 or values and values[0].strip():
                seen += 1
                if seen == index:
                    return start
            start = reader.line_num + 1
    finally:
        text.detach()
    return index + 1


def _diagnose(handle: BinaryIO, has_header: bool, delimiter: str = ",", cells: bool = True) -> None:
    """Walk the file row by row (and, with ``cells``, cell by cell as numbers) and raise
    Unprocessable at the first bad one."""
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, delimiter=delimiter, skipinitialspace=True)
    width: int | None = None
    width_row = 0
    try:
        for values in reader:
            row = reader.line_num
            if not values or all(not c.strip() for c in values) and len(values) == 1:
                continue
            if width is None:
                width, width_row = len(values), row
                if has_header:
                    continue
            if len(values) != width:
                raise Unprocessable(
                    f"row {row} has {len(values)} values but row {width_row} has {width}",
                    row=row,
                )
            for col, cell in enumerate(values if cells else (), start=1):
                _check_cell(cell, row, col)
    except UnicodeDecodeError:
        handle.seek(0)
        _not_utf8(handle, has_header, delimiter)
    except csv.Error as exc:
        raise Unprocessable(f"row {reader.line_num}: {exc}", row=reader.line_num) from None
    finally:
        text.detach()


def _not_utf8(handle: BinaryIO, has_header: bool, delimiter: str) -> NoReturn:
    """Raise Unprocessable naming the row (the file line where its record starts, as
    everywhere) and column of the first cell that is not UTF-8, with its byte offset."""
    # Undecodable bytes become lone surrogates, so the csv module still splits the file as the
    # parser did (quotes, delimiters and line breaks are ASCII) and the first cell holding one
    # is the first bad one; only this error path pays for the second read.
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, delimiter=delimiter, skipinitialspace=True)
    start, first = 1, True
    try:
        for values in reader:
            for col, cell in enumerate(values, start=1):
                if _SURROGATE.search(cell) is None:
                    continue
                where = "the header row" if has_header and first else f"row {start}"
                written = cell.strip().encode("utf-8", "surrogateescape")
                raise Unprocessable(
                    f"{where}, column {col}: {written[:40]!r} is not UTF-8 text; save the file as UTF-8",
                    row=start,
                    column=col,
                )
            if len(values) > 1 or values and values[0].strip():
                first = False
            start = reader.line_num + 1
    except csv.Error:
        pass
    finally:
        text.detach()
    raise Unprocessable("the CSV file is not UTF-8 text; save it as UTF-8")


_SURROGATE = re.compile("[\udc80-\udcff]")


def _check_cell(cell: str, row: int, col: int) -> None:
    value = cell.strip()
    if not value:
        raise Unprocessable(f"row {row}, column {col}: the value is empty", row=row, column=col)
    try:
        # float() also takes "1_000" and non-ASCII digits, which the CSV parser does not.
        if "_" in value or not value.isascii():
            raise ValueError(value)
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
    try:
        values = np.asarray(data, dtype=np.float64)
    except (OverflowError, ValueError, TypeError):
        for i, row in enumerate(data, start=1):
            for j, cell in enumerate(row, start=1):
                try:
                    float(cell)
                except (OverflowError, ValueError, TypeError):
                    raise Unprocessable(
                        f"data row {i}, column {j}: {str(cell)[:40]} does not fit in a 64-bit float",
                        row=i,
                        column=j,
                    ) from None
        raise
    if not np.isfinite(values).all():
        r, c = np.argwhere(~np.isfinite(values))[0]
        raise Unprocessable(
            f"data row {r + 1}, column {c + 1}: NaN and infinity are not allowed",
            row=int(r + 1),
            column=int(c + 1),
        )
    return values


def format_labels(labels: np.ndarray) -> bytes:
    """One integer label per line, with a trailing newline, as bytes.

    Each label's text is looked up in a small table of pre-encoded labels and the bytes are
    gathered with numpy: for a million labels this takes milliseconds where ``np.savetxt``
    took over a second and a join of ``str`` calls over a tenth of one.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return b""
    if labels.min() < -1:
        raise ValueError("labels must be -1 or more")
    if labels.min() == -1:  # rows left out of a fit: rare, so the plain way
        return "".join(f"{v}\n" for v in labels.tolist()).encode()
    if labels.max() < 10:  # the common case, ten times faster again: a digit and a newline
        out = np.empty((labels.size, 2), dtype=np.uint8)
        out[:, 0] = labels + ord("0")
        out[:, 1] = ord("\n")
        return out.tobytes()
    encoded = [f"{i}\n".encode() for i in range(int(labels.max()) + 1)]
    lengths = np.array([len(e) for e in encoded])
    table = np.zeros((len(encoded), lengths.max()), dtype=np.uint8)
    for i, text in enumerate(encoded):
        table[i, : len(text)] = np.frombuffer(text, dtype=np.uint8)
    keep = np.arange(table.shape[1]) < lengths[labels][:, None]
    return table[labels][keep].tobytes()


def format_table(values: np.ndarray | list[list[object]], columns: Sequence[str]) -> str:
    """A CSV text with a header row; floats keep their full precision (repr), missing values are empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(values.tolist() if isinstance(values, np.ndarray) else values)
    return out.getvalue()


def rows_table(
    data: Sequence[Sequence[object] | dict], columns: Sequence[str] | None = None, expect: Expect | None = None
) -> Table:
    """JSON rows, as arrays (by position, named by ``columns`` or x1, x2, …) or as objects
    keyed by column name, as a table; ``null`` is a missing value. JSON says each value's
    type: a column is numeric when all its values are numbers, else text (strings, booleans)."""
    forced = set(expect.text) if expect is not None else set()
    if all(type(row) is dict for row in data):
        names: dict[str, None] = {}
        for row in data:
            names.update(dict.fromkeys(row))
        if columns is not None:
            raise Unprocessable("columns is for rows given as arrays; objects name their own", parameter="columns")
        check_names(list(names), parameter="data")
        cells = [[row.get(name) for row in data] for name in names]
        return _typed_table(list(names), cells, named=True, keyed=True, text=forced)
    if any(type(row) is not list for row in data):
        raise Unprocessable("data rows must all be arrays or all be objects", parameter="data")
    expected = len(data[0])
    for i, row in enumerate(data, start=1):
        if len(row) != expected:
            raise Unprocessable(f"data row {i} has {len(row)} values; expected {expected}", row=i)
    if columns is not None:
        if len(columns) != expected:
            raise Unprocessable(
                f"columns names {len(columns)} columns but the rows have {expected}", parameter="columns"
            )
        check_names(list(columns), parameter="columns")
    names_list = list(columns) if columns is not None else default_columns(expected)
    # Without names the columns are the model's, by position.
    meant = names_list if columns is not None or expect is None else list(expect.names) + names_list[len(expect.names):]
    if not forced & set(meant) and all(type(v) in (int, float) for row in data for v in row):
        return Table.of(check_rows(data), names_list)._named(columns is not None)
    cells = [[row[j] for row in data] for j in range(expected)]
    text = {n for n, m in zip(names_list, meant, strict=False) if m in forced}
    return _typed_table(names_list, cells, named=columns is not None, text=text)


def _typed_table(
    names: list[str], cells: list[list[object]], named: bool, keyed: bool = False, text: set[str] | None = None
) -> Table:
    numeric: dict[str, np.ndarray] = {}
    texts: dict[str, pa.Array] = {}
    for position, (name, column) in enumerate(zip(names, cells, strict=True), start=1):
        if name in (text or ()) or any(type(v) not in (int, float) for v in column if v is not None):
            texts[name] = _booleans_as_words(text_array([None if v is None else _as_text(v) for v in column]))
            continue
        numeric[name] = _json_numbers(column, position)
    chunks = [np.column_stack([numeric[n] for n in names if n in numeric])] if numeric else []
    return Table(
        chunks=chunks, columns=names, numeric=[n for n in names if n in numeric], text=texts, named=named, keyed=keyed
    )


def _json_numbers(column: list[object], position: int) -> np.ndarray:
    """A column of JSON numbers (None: missing) as float64; Unprocessable naming the first that
    does not fit in a 64-bit float."""
    values = np.full(len(column), np.nan)
    for i, v in enumerate(column):
        if v is None:
            continue
        try:
            values[i] = float(v)
            if not math.isfinite(values[i]):
                raise OverflowError
        except OverflowError:
            raise Unprocessable(
                f"data row {i + 1}, column {position}: {str(v)[:40]} does not fit in a 64-bit float",
                row=i + 1,
                column=position,
            ) from None
    return values
