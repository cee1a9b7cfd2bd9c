"""kmeans.multipart.SpoolingReader: a body parsed while it arrives, spooled and hashed on the way."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kmeans import csvio
from kmeans.errors import BadRequest, PayloadTooLarge, Unprocessable
from kmeans.multipart import GrowingReader, MultipartSpooler, SpooledFile, SpoolingReader


class Trickle(io.RawIOBase):
    """A body that arrives in small pieces, as a network stream does."""

    def __init__(self, data: bytes, piece: int = 7) -> None:
        self.data, self.piece, self.at = data, piece, 0

    def read(self, size: int = -1) -> bytes:
        size = self.piece if size < 0 else min(size, self.piece)
        out = self.data[self.at : self.at + size]
        self.at += len(out)
        return out


def reader(tmp_path: Path, body: bytes, head: int = 10, limit: int = 10**9) -> SpoolingReader:
    return SpoolingReader(Trickle(body[head:]), body[:head], tmp_path / "spool.csv", limit,
                          lambda: PayloadTooLarge("too large"), chunk_bytes=16)


def test_reads_seeks_and_finish_give_the_body_its_hash_and_size(tmp_path):
    body = bytes(range(256)) * 10
    spool = reader(tmp_path, body)
    assert spool.read(3) == body[:3]
    assert spool.read(100) == body[3:103]
    spool.seek(1)
    assert spool.read(50) == body[1:51]
    spool.seek(2000)
    assert spool.read(5) == body[2000:2005] and spool.tell() == 2005
    spool.seek(0)
    assert spool.read() == body
    assert spool.read(10) == b""
    done = spool.finish()
    assert (done.size, done.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    spool.close()
    assert done.path.read_bytes() == body


def test_finish_spools_what_the_parser_did_not_read(tmp_path):
    body = b"x" * 1000
    spool = reader(tmp_path, body)
    spool.read(20)
    assert spool.finish().sha256 == hashlib.sha256(body).hexdigest()


def test_a_body_over_the_limit_raises_as_it_is_read(tmp_path):
    spool = reader(tmp_path, b"1,2\n" * 100, limit=200)
    with pytest.raises(PayloadTooLarge):
        spool.read(1000)
    with pytest.raises(PayloadTooLarge):
        reader(tmp_path, b"1,2\n" * 100, head=300, limit=200)


@pytest.mark.parametrize("block_bytes", [64, 4 * 1024 * 1024])
def test_read_csv_over_it_equals_read_csv_of_the_bytes(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(csvio, "BLOCK_BYTES", block_bytes)
    values = np.random.default_rng(0).normal(size=(300, 3))
    out = io.BytesIO()
    np.savetxt(out, values, fmt="%.6f", delimiter=",", header="a,b,c", comments="")
    body = out.getvalue()
    table = csvio.read_csv(reader(tmp_path, body))
    assert table.columns == ["a", "b", "c"]
    assert np.array_equal(table.values, csvio.read_csv(io.BytesIO(body)).values)


@pytest.mark.parametrize("block_bytes", [64, 4 * 1024 * 1024])
def test_errors_over_it_name_the_same_row_and_column(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(csvio, "BLOCK_BYTES", block_bytes)
    body = b"1,2\n" * 50 + b'3,"x"\n' + b"1,2\n" * 50
    with pytest.raises(Unprocessable) as direct:
        csvio.read_csv(io.BytesIO(body))
    with pytest.raises(Unprocessable) as spooled:
        csvio.read_csv(reader(tmp_path, body))
    assert (spooled.value.detail, spooled.value.extra) == (direct.value.detail, direct.value.extra) != ("", {})
    assert direct.value.extra == {"row": 51, "column": 2}


# -- GrowingReader: a multipart part parsed while it arrives ---------------------------------


def multipart_body(content: bytes, boundary: str = "XyZ") -> bytes:
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'.encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode()


def spool_in_pieces(tmp_path: Path, body: bytes, piece: int, on_file, pause: float = 0.0) -> MultipartSpooler:
    spooler = MultipartSpooler("multipart/form-data; boundary=XyZ", lambda: tmp_path / "part", on_file)
    for start in range(0, len(body), piece):
        spooler.write(body[start : start + piece])
        time.sleep(pause)
    spooler.finish()
    return spooler


def test_a_part_is_parsed_while_it_arrives_with_the_same_result(tmp_path: Path):
    content = b"a,b\n" + b"".join(b"%d,%d.5\n" % (i, i) for i in range(20000))
    started: list[tuple[str, int]] = []
    results: dict[str, csvio.Table] = {}

    def on_file(spooled: SpooledFile) -> None:
        started.append((spooled.state, spooled.size))

        def parse() -> None:
            with GrowingReader(spooled) as growing:
                results["table"] = csvio.read_csv(growing)

        thread = threading.Thread(target=parse)
        thread.start()
        results["thread"] = thread

    spooler = spool_in_pieces(tmp_path, multipart_body(content), 4096, on_file, pause=0.0005)
    results["thread"].join(timeout=30)
    assert started == [("writing", 0)]  # told at the part's first byte, not its last
    (spooled,) = spooler.files
    assert spooled.state == "complete" and spooled.size == len(content)
    assert spooled.sha256 == hashlib.sha256(content).hexdigest()
    expected = csvio.read_csv(io.BytesIO(content))
    assert results["table"].columns == expected.columns == ["a", "b"]
    assert np.array_equal(results["table"].values, expected.values)


def test_a_reader_of_an_abandoned_part_stops_with_an_error(tmp_path: Path):
    spooler = MultipartSpooler("multipart/form-data; boundary=XyZ", lambda: tmp_path / "part")
    spooler.write(multipart_body(b"1,2\n" * 1000)[:-200])  # the body breaks off inside the file
    (spooled,) = spooler.files
    errors: list[Exception] = []

    def read_all() -> None:
        with GrowingReader(spooled) as growing:
            try:
                growing.read()
            except BadRequest as exc:
                errors.append(exc)

    thread = threading.Thread(target=read_all)
    thread.start()
    time.sleep(0.05)
    assert thread.is_alive()  # waiting for the rest of the part
    spooler.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and len(errors) == 1 and "ended before the file was complete" in errors[0].detail
