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
import io
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pandas as pd

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


@dataclass(frozen=True)
class Table:
    """A parsed numeric table, kept as the row chunks it was parsed in (float64, C order)."""

    chunks: list[np.ndarray]
    columns: list[str]

    @classmethod
    def of(cls, values: np.ndarray, columns: list[str]) -> Table:
        return cls([np.ascontiguousarray(values, dtype=np.float64)], columns)

    @property
    def rows(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def n_features(self) -> int:
        return len(self.columns)

    @property
    def values(self) -> np.ndarray:
        """All rows as one array (a copy when there are several chunks)."""
        return self.chunks[0] if len(self.chunks) == 1 else np.concatenate(self.chunks)


def default_columns(n: int) -> list[str]:
    """Names for columns that came without a header: x1, x2, …."""
    return [f"x{i}" for i in range(1, n + 1)]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
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
                raise Unprocessable(f"row {number} is not UTF-8 text (byte {exc.start})", row=number) from None
    return None


def _header(first_line: str) -> list[str] | None:
    """Column names if the first line is a header (no cell in it is a number), else None."""
    cells = [c.strip() for c in next(csv.reader([first_line], skipinitialspace=True))]
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
    first, header_end = _first_line(handle)
    header = _header(first)
    handle.seek(0)
    # pandas starts after the header (given one name fewer than the rows have values, it
    # would quietly make the first column an index), or after a UTF-8 BOM (rather than
    # decode the whole file to find it).
    start = header_end if header else 3 if handle.read(3) == b"\xef\xbb\xbf" else 0
    handle.seek(start)
    chunks = _read_blocks(handle)
    if chunks is None:  # the one reader whose results and errors are the reference
        handle.seek(start)
        chunks = _read_chunked(handle, header is not None)
    width = chunks[0].shape[1]
    columns = header if header is not None else default_columns(width)
    if len(columns) != width:
        handle.seek(0)
        _diagnose(handle, True)
        raise Unprocessable(f"the header names {len(columns)} columns but the rows have {width}")
    return Table(chunks=chunks, columns=columns)


def _read_chunked(handle: BinaryIO, has_header: bool) -> list[np.ndarray]:
    """The rows from the current position as float64 chunks of CHUNK_ROWS rows, read by one
    pandas reader; on any failure, Unprocessable naming the first bad row and column."""
    chunks: list[np.ndarray] = []
    try:
        reader = pd.read_csv(
            handle,
            header=None,
            dtype=np.float64,
            engine="c",
            skipinitialspace=True,  # '1, "2"': a quoted value after the space is still quoted
            skip_blank_lines=True,
            chunksize=CHUNK_ROWS,
        )
        with reader:
            for frame in reader:
                chunk = np.ascontiguousarray(frame.to_numpy(dtype=np.float64))
                del frame
                if chunks and chunk.shape[1] != chunks[0].shape[1]:
                    raise ValueError("rows of different widths")
                if not np.isfinite(chunk).all():
                    raise ValueError("values that are not finite numbers")
                chunks.append(chunk)
    except pd.errors.EmptyDataError:
        raise Unprocessable("the CSV file has a header row but no data rows") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        chunks.clear()
        handle.seek(0)
        _diagnose(handle, has_header)
        raise Unprocessable(f"the CSV file could not be read: {exc}") from None
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise Unprocessable("the CSV file has a header row but no data rows")
    return chunks


def _parse_block(block: bytes) -> np.ndarray | None:
    """One block of whole lines as a float64 array; None if pandas refuses it or it holds
    NaN or infinity (the chunked reader then reads the file and names the error)."""
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


def _diagnose(handle: BinaryIO, has_header: bool) -> None:
    """Walk the file cell by cell and raise Unprocessable at the first bad one."""
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, skipinitialspace=True)
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
    if labels.min() < 0:
        raise ValueError("labels must not be negative")
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


def format_table(values: np.ndarray, columns: Sequence[str]) -> str:
    """A CSV text with a header row; floats keep their full precision (repr)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(values.tolist())
    return out.getvalue()
