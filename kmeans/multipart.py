"""Multipart bodies parsed as they stream in: file parts go straight to disk, hashed on the way.

python-multipart does the parsing; this module only decides where the bytes go, so that an
upload of any size costs a bounded amount of memory and is written to disk exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header

from kmeans.errors import BadRequest

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16
# A reader of a part that is still arriving waits at most this long for its next bytes.
GROWTH_TIMEOUT = 600.0


@dataclass
class SpooledFile:
    """An uploaded file already on disk, with its digest and size.

    A multipart part is ``"writing"`` while it arrives (``size`` grows), then ``"complete"``, or
    ``"abandoned"`` if its request failed or ended; ``parsed`` is the parse of it that was
    started as it arrived, if one was (see MultipartSpooler's ``on_file``).
    """

    path: Path | None  # None: a small body that was parsed in memory, never written
    filename: str | None = None
    field: str = "file"
    content_type: str | None = None
    sha256: str = ""
    size: int = 0
    state: str = "complete"
    parsed: Future | None = None
    # (dataclasses.field in full: "field" in this class body is the attribute above)
    _growth: threading.Condition = dataclasses.field(default_factory=threading.Condition, repr=False, compare=False)

    def open(self) -> BinaryIO:
        return open(self.path, "rb")

    def grew(self, more: int = 0, state: str | None = None) -> None:
        """Record ``more`` bytes written, or a new state; wakes the readers of the part."""
        with self._growth:
            self.size += more
            if state is not None and self.state != "abandoned":
                self.state = state
            self._growth.notify_all()

    def wait_for(self, end: int) -> None:
        """Wait until the part has ``end`` bytes or is complete; raise if it was abandoned."""
        deadline = time.monotonic() + GROWTH_TIMEOUT
        with self._growth:
            while self.state == "writing" and self.size < end and time.monotonic() < deadline:
                self._growth.wait(timeout=1.0)
            if self.state != "complete" and self.size < end:
                raise BadRequest("the upload ended before the file was complete")


class GrowingReader(io.RawIOBase):
    """A reader of a spooled part while it still arrives: a read past the bytes written so far
    waits for more, so a parser can work on an upload alongside its receipt."""

    def __init__(self, spooled: SpooledFile) -> None:
        super().__init__()
        self._spooled = spooled
        self._file = open(spooled.path, "rb", buffering=0)  # noqa: SIM115 -- closed by close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            self._spooled.wait_for(1 << 62)
        return self._file.seek(offset, whence)

    def readinto(self, buffer: Any) -> int:
        self._spooled.wait_for(self._file.tell() + len(buffer))
        return self._file.readinto(buffer)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            self._spooled.wait_for(1 << 62)
            return self._file.read()
        self._spooled.wait_for(self._file.tell() + size)
        return self._file.read(size)

    read1 = read

    def close(self) -> None:
        self._file.close()
        super().close()


class SpoolingReader(io.RawIOBase):
    """A body stream that a parser reads while it still arrives: every byte pulled from
    ``stream`` is written to ``path`` and hashed on the way, and a seek back reads the file.

    ``limit`` bounds the body; ``too_large()`` is raised past it. ``finish`` reads what the
    parser left, and gives the file with its sha256 and size; the caller removes the file.
    """

    def __init__(self, stream: BinaryIO, head: bytes, path: Path, limit: int, too_large: Callable[[], Exception],
                 chunk_bytes: int = 1024 * 1024) -> None:
        super().__init__()
        self._stream, self._limit, self._too_large, self._chunk = stream, limit, too_large, chunk_bytes
        self._digest = hashlib.sha256()
        self._file = open(path, "w+b")  # noqa: SIM115 -- closed by close()
        self._path = path
        self._size = self._pos = 0
        self._ended = False
        try:
            self._append(head)
        except BaseException:
            self._file.close()
            raise

    def _append(self, chunk: bytes) -> None:
        if self._size + len(chunk) > self._limit:
            raise self._too_large()
        self._file.seek(self._size)
        self._file.write(chunk)
        self._digest.update(chunk)
        self._size += len(chunk)

    def _pull(self, wanted: int) -> bytes:
        """Up to ``wanted`` new bytes of the body (fewer only at its end), spooled and hashed."""
        pieces: list[bytes] = []
        got = 0
        while got < wanted and not self._ended:
            chunk = self._stream.read(max(self._chunk, wanted - got))
            if not chunk:
                self._ended = True
                break
            self._append(chunk)
            pieces.append(chunk)
            got += len(chunk)
        return b"".join(pieces)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            self.finish()
            offset += self._size
        self._pos = max(0, offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.finish().size - self._pos)
        front = self._size
        fresh = self._pull(self._pos + size - front) if self._pos + size > front else b""
        if self._pos == front:  # reading as the body arrives: no read back from the file
            data = fresh[:size]
        else:
            self._file.seek(self._pos)
            data = self._file.read(max(0, min(size, self._size - self._pos)))
        self._pos += len(data)
        return data

    read1 = read

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def complete_file(self) -> BinaryIO:
        """The whole body on disk (spooled now), opened at this reader's position: for a parser
        that reads in threads of its own (a request body is read on the event loop's terms)."""
        self.finish()
        handle = open(self._path, "rb")  # noqa: SIM115 -- closed by the caller
        handle.seek(self._pos)
        return handle

    def finish(self) -> SpooledFile:
        """Spool the rest of the body; the file, its sha256 and its size."""
        while self._pull(self._chunk):
            pass
        self._file.flush()
        return SpooledFile(path=self._path, sha256=self._digest.hexdigest(), size=self._size)

    def close(self) -> None:
        self._file.close()
        super().close()


# Large request bodies are written and hashed by these threads while the event loop goes on
# receiving them (as a parse thread overlapped receipt before); they wait on the disk only, never
# on a client.
_WRITERS = ThreadPoolExecutor(2, thread_name_prefix="kmeans-spool")
WRITE_BATCH = 1024 * 1024  # bytes handed to a writer thread at once


class BodySpool:
    """A request body collected as it arrives (on the event loop, so that no thread waits for a
    slow client): in memory up to ``memory_bytes``, past that in a file at ``new_path()``, written
    once and hashed on the way, as a multipart file part is.

    ``result()`` is the body's bytes (a small one) or its SpooledFile; ``files`` lists the file
    for its owner to remove (see :func:`remove`), also when the body failed half-way.
    """

    def __init__(self, new_path: Callable[[], Path], memory_bytes: int = 1024 * 1024) -> None:
        self._new_path = new_path
        self._memory_bytes = memory_bytes
        self._pieces: list[bytes] = []  # received, not yet handed to a writer
        self._held = 0  # their bytes
        self._size = 0
        self._out: BinaryIO | None = None
        self._digest = hashlib.sha256()
        self._pending: Future | None = None  # the batch a writer thread has
        self.files: list[SpooledFile] = []

    async def write(self, chunk: bytes) -> None:
        """Add the next piece of the body."""
        if not chunk:
            return
        self._size += len(chunk)
        self._pieces.append(chunk)
        self._held += len(chunk)
        if self._out is None and self._size < self._memory_bytes:
            return
        if self._out is None:
            spooled = SpooledFile(path=self._new_path(), field="", state="writing")
            self.files.append(spooled)  # listed first, so that a failure still cleans it up
            self._out = open(spooled.path, "wb")  # noqa: SIM115 -- closed in result()/close()
        if self._held >= WRITE_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        """Hand what was received to a writer thread, once it is done with the batch before (so at
        most two batches are held in memory)."""
        await self._written()
        pieces, self._pieces, self._held = self._pieces, [], 0
        self._pending = _WRITERS.submit(self._add, pieces)

    async def _written(self) -> None:
        """Wait until the writer thread has the file to itself no more."""
        if self._pending is not None and not self._pending.cancelled():
            await asyncio.wrap_future(self._pending)
        self._pending = None

    def _add(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self._out.write(piece)
            self._digest.update(piece)

    async def result(self) -> bytes | SpooledFile:
        """The whole body: its bytes when it stayed in memory, else its complete file."""
        if self._out is None:
            return b"".join(self._pieces)
        await self._flush()
        await self._written()
        self._out.close()
        self._out = None
        spooled = self.files[-1]
        spooled.sha256, spooled.size, spooled.state = self._digest.hexdigest(), self._size, "complete"
        return spooled

    async def close(self) -> None:
        """Close the file of a body that failed half-way (its path stays in ``files``)."""
        if self._out is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._written()  # a writer still at it must finish before the file is closed
            self._out.close()
            self._out = None
            self.files[-1].grew(state="abandoned")


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    data: bytearray = field(default_factory=bytearray)
    spooled: SpooledFile | None = None
    out: BinaryIO | None = None
    digest: hashlib._Hash | None = None


class MultipartSpooler:
    """Feed it a multipart body chunk by chunk; read ``fields`` and ``files`` when finished.

    ``on_file`` is called with each file part as soon as it begins (still ``"writing"``).
    """

    def __init__(
        self, content_type: str, new_path: Callable[[], Path], on_file: Callable[[SpooledFile], None] | None = None
    ) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise BadRequest("the multipart/form-data body has no boundary in its Content-Type")
        self._new_path = new_path
        self._on_file = on_file
        self.fields: list[tuple[str, str]] = []
        self.files: list[SpooledFile] = []
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._parts = 0
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    def write(self, chunk: bytes) -> None:
        """Parse the next piece of the body."""
        try:
            self._parser.write(chunk)
        except (BadRequest, OSError):  # an OSError is ours (writing the spool file: a full disk), not the body's
            raise
        except Exception as exc:
            raise BadRequest(f"the multipart/form-data body is malformed: {exc}") from None

    def finish(self) -> None:
        """Check that the body ended properly."""
        try:
            self._parser.finalize()
        except Exception as exc:
            raise BadRequest(f"the multipart/form-data body is malformed: {exc}") from None
        if self._part.out is not None:
            raise BadRequest("the multipart/form-data body ended in the middle of a file")

    def close(self) -> None:
        """Close a file left open by a body that failed half-way (its path is in ``files``)."""
        if self._part.out is not None:
            self._part.out.close()
            self._part.out = None
            self._part.spooled.grew(state="abandoned")

    # -- python-multipart callbacks --------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise BadRequest(f"the multipart/form-data body has more than {MAX_PARTS} parts")
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._part.headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._part.headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise BadRequest('a multipart part has no Content-Disposition "name"')
        self._part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            ctype = self._part.headers.get(b"content-type")
            spooled = SpooledFile(
                path=self._new_path(),
                filename=options[b"filename"].decode("utf-8", "replace"),
                field=self._part.name,
                content_type=ctype.decode("latin-1") if ctype else None,
                state="writing",
            )
            self.files.append(spooled)  # listed first, so that a failure still cleans it up
            self._part.spooled = spooled
            # Unbuffered: a GrowingReader sees every byte as soon as it is counted.
            self._part.out = open(spooled.path, "wb", buffering=0)  # noqa: SIM115 -- closed in _on_part_end/close
            self._part.digest = hashlib.sha256()
            if self._on_file is not None:
                self._on_file(spooled)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        part = self._part
        if part.out is not None:
            view = memoryview(chunk)
            while view:  # an unbuffered write may take less than it was given
                view = view[part.out.write(view) :]
            part.digest.update(chunk)
            part.spooled.grew(len(chunk))
        else:
            part.data += chunk
            if len(part.data) > MAX_FIELD_BYTES:
                raise BadRequest(f"the form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _on_part_end(self) -> None:
        part = self._part
        if part.out is not None:
            part.out.close()
            part.out = None
            part.spooled.sha256 = part.digest.hexdigest()
            part.spooled.grew(state="complete")
        else:
            self.fields.append((part.name, part.data.decode("utf-8", "replace")))


def remove(files: list[SpooledFile]) -> None:
    """Delete spooled files (after the request that brought them)."""
    for spooled in files:
        spooled.grew(state="abandoned")  # a parse still reading it stops
        if spooled.parsed is not None:
            spooled.parsed.cancel()  # a parse still waiting for a thread never starts
        spooled.path.unlink(missing_ok=True)
