"""A full disk (issue 14, item 4), on a real small tmpfs: every way of storing data answers 507
saying the data dir is out of space, nothing stored before is lost or corrupted, no temp file is
left, a fit that cannot store its result ends (failed saying so, or done once space is back),
and the service works again as soon as space is freed."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app
from tests.api.api_helpers import CSV, assert_problem
from tests.conftest import local_client, wait_for_model

SMALL = b"x,y\n1,2\n1,4\n10,2\n10,4\n"
BIG = b"x,y\n" + b"".join(b"%d,%d\n" % (i, 2 * i) for i in range(100_000))  # 1.3 MB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs, mounted for this test (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Take all of the disk's free space but ``leave`` bytes; returns the filler file."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return filler


def uploads(client: TestClient, content: bytes) -> dict[str, object]:
    """Each way of storing a table, with ``content``."""
    rows = [[float(v) for v in line.split(b",")] for line in content.splitlines()[1:]]
    return {
        "raw CSV": client.post("/kmeans/datasets", content=content, headers={"Content-Type": CSV}),
        "multipart": client.post("/kmeans/datasets", files={"file": ("big.csv", content, CSV)}),
        "classic": client.post("/kmeans/upload", files={"file": ("big.csv", content, CSV)}),
        "JSON": client.post("/kmeans/datasets", json={"data": rows, "columns": ["x", "y"]}),
    }


def test_a_full_disk_is_507_loses_nothing_and_the_service_recovers(small_disk: Path):
    data_dir = small_disk / "data"
    settings = Settings(data_dir=data_dir, max_upload_bytes=50_000_000, heartbeat_timeout=2, max_concurrent_fits=1)
    with local_client(build_app(settings)) as client:
        kept = client.post("/kmeans/datasets", content=SMALL, headers={"Content-Type": CSV})
        assert kept.status_code == 201, kept.text
        kept_id = kept.json()["id"]
        filler = fill(small_disk, 60_000)

        for how, response in uploads(client, BIG).items():
            problem = assert_problem(response, 507, "data dir is out of space")
            assert "Errno" not in problem["detail"] and str(small_disk) not in problem["detail"], how
        assert sorted(p.name for p in (data_dir / "tmp").iterdir()) == []
        listed = client.get("/kmeans/datasets").json()
        assert [d["id"] for d in listed["items"]] == [kept_id]
        assert client.get(f"/kmeans/datasets/{kept_id}/rows").json()["items"] == [[1, 2], [1, 4], [10, 2], [10, 4]]

        # A fit whose result cannot be stored ends, one way or the other, once space is back.
        started = client.post("/kmeans/models", json={"dataset_id": kept_id, "params": {"n_clusters": 2}})
        if started.status_code == 507:
            assert_problem(started, 507, "out of space")
            model = None
        else:
            assert started.status_code == 202, started.text
            time.sleep(1.0)
            model = started.json()["id"]

        filler.unlink()
        if model is not None:
            deadline = time.monotonic() + 60
            shown = wait_for_model(client, model, timeout=30)
            while shown["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
                time.sleep(0.2)
                shown = client.get(f"/kmeans/models/{model}").json()
            assert shown["status"] in ("succeeded", "failed"), shown
            if shown["status"] == "failed":
                assert "out of space" in shown["error"]["detail"], shown

        for how, response in uploads(client, BIG).items():
            assert response.status_code in (200, 201), (how, response.text)
        fitted = client.post("/kmeans/models", json={"dataset_id": kept_id, "params": {"n_clusters": 2}})
        assert wait_for_model(client, fitted.json()["id"])["status"] == "succeeded"
    with sqlite3.connect(data_dir / "kmeans.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert sorted(p.name for p in (data_dir / "tmp").iterdir()) == []
