"""Resource bounds under load (issue 14, item 6), on the Dockerfile's gunicorn command (two
workers), with tokens for two projects: while project A keeps a backlog of long fits and sweeps
running and queued, project B's small fit still runs and finishes; B's fit over its time limit
fails saying so; and cancelling all of A's work frees every job process's CPU within 2 s."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np

from tests.e2e.test_auth_e2e import create_token
from tests.e2e.test_jobs_crash_e2e import cmdline, cpu_seconds, parent
from tests.e2e.test_jobs_e2e import process_tree

SLOW = {"n_clusters": 30, "init": "random", "n_init": 20, "tol": 0, "max_iter": 3000, "random_state": 0}
TERMINAL = ("succeeded", "failed", "cancelled")


def dataset(url: str, headers: dict, rows: int) -> str:
    values = np.random.default_rng(rows).normal(size=(rows, 4)).round(3)
    body = "x1,x2,x3,x4\n" + "\n".join(",".join(map(str, row)) for row in values.tolist()) + "\n"
    headers = {**headers, "Content-Type": "text/csv"}
    response = httpx.post(f"{url}/kmeans/datasets", content=body.encode(), headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def job_processes(server_pid: int) -> list[int]:
    """The job processes under the server (children of a worker's fork server)."""
    return [pid for pid in process_tree(server_pid) if b"multiprocessing.forkserver" in cmdline(parent(pid) or 0)]


def busy(server_pid: int, over: float = 0.5) -> float:
    """CPU seconds the server's job processes used in ``over`` seconds."""
    start = {pid: cpu_seconds(pid) for pid in job_processes(server_pid)}
    time.sleep(over)
    return sum((cpu_seconds(pid) or begin) - begin for pid, begin in start.items() if begin is not None)


def test_one_project_s_backlog_neither_starves_another_nor_escapes_its_bounds(gunicorn_server, tmp_path: Path):
    data_dir = tmp_path / "data"
    with gunicorn_server(data_dir, OMP_NUM_THREADS="1", KMEANS_MAX_CONCURRENT_FITS="1") as url:
        admin = {"Authorization": f"Bearer {create_token(data_dir, '--role', 'admin')}"}
        tokens = {}
        for project in ("a", "b"):
            assert httpx.post(f"{url}/kmeans/projects", json={"id": project}, headers=admin).status_code == 201
            made = httpx.post(f"{url}/kmeans/tokens", json={"role": "contributor", "project": project}, headers=admin)
            assert made.status_code == 201, made.text
            tokens[project] = {"Authorization": f"Bearer {made.json()['token']}"}
        a, b = tokens["a"], tokens["b"]

        big = dataset(url, a, 40_000)
        backlog = []
        for _ in range(6):  # minutes of work for the two job slots (one per worker)
            made = httpx.post(f"{url}/kmeans/models", json={"dataset_id": big, "params": SLOW}, headers=a, timeout=10)
            assert made.status_code == 202, made.text
            backlog.append(("models", made.json()["id"]))
        swept = httpx.post(f"{url}/kmeans/sweeps", json={"dataset_id": big, "k_min": 2, "k_max": 20,
                                                          "params": {"n_init": 10, "random_state": 0}}, headers=a)
        assert swept.status_code == 202, swept.text
        backlog.append(("sweeps", swept.json()["id"]))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and busy(url.proc.pid) < 0.1:  # A's jobs hold the slots
            pass
        assert busy(url.proc.pid) > 0.1, "project A's fits do not run"

        # B's small fit goes ahead of A's backlog (round-robin between projects).
        small = dataset(url, b, 200)
        asked = time.monotonic()
        made = httpx.post(f"{url}/kmeans/models", json={"dataset_id": small, "params": {"n_clusters": 3}}, headers=b)
        assert made.status_code == 202, made.text
        fit_b = made.json()["id"]
        while time.monotonic() < asked + 120:
            shown = httpx.get(f"{url}/kmeans/models/{fit_b}", headers=b).json()
            if shown["status"] in TERMINAL:
                break
            time.sleep(0.2)
        waited = time.monotonic() - asked
        assert shown["status"] == "succeeded", shown
        states = [httpx.get(f"{url}/kmeans/{kind}/{job}", headers=a).json()["status"] for kind, job in backlog]
        assert states.count("queued") >= 2, f"A's backlog drained before B ran: {states}"  # B did not wait for it
        listed = httpx.get(f"{url}/kmeans/jobs", headers=b).json()["items"]
        assert {job["project"] for job in listed} <= {"b"}, listed  # nor does B see A's queue

        # A fit of B over its time limit fails saying so, under the same load.
        medium = dataset(url, b, 20_000)  # SLOW on it takes minutes
        body = {"dataset_id": medium, "params": SLOW, "time_limit": 1}
        limited = httpx.post(f"{url}/kmeans/models", json=body, headers=b)
        assert limited.status_code == 202, limited.text
        limited_id = limited.json()["id"]
        until = time.monotonic() + 120
        while time.monotonic() < until:
            shown = httpx.get(f"{url}/kmeans/models/{limited_id}", headers=b).json()
            if shown["status"] in TERMINAL:
                break
            time.sleep(0.2)
        assert shown["status"] == "failed" and "time limit" in shown["error"]["detail"], shown

        # Cancelling all of A's work frees the CPU within 2 s.
        for kind, job in backlog:
            response = httpx.post(f"{url}/kmeans/{kind}/{job}/cancel", headers=a, timeout=10)
            assert response.status_code in (200, 409), response.text  # 409: it had already ended
        cancelled_at = time.monotonic()
        used = busy(url.proc.pid, over=0.5)
        while used > 0.05 and time.monotonic() < cancelled_at + 2:
            used = busy(url.proc.pid, over=0.5)
        assert used <= 0.05, f"job processes still use {used:.2f} CPU s per 0.5 s, 2 s after the cancels"
        states = [httpx.get(f"{url}/kmeans/{kind}/{job}", headers=a).json()["status"] for kind, job in backlog]
        assert set(states) <= set(TERMINAL), states
        print(f"\nunder load: B's fit waited {waited:.1f} s behind A's backlog of {len(backlog)} long jobs;"
              f" A's cancelled work freed the CPU within {time.monotonic() - cancelled_at:.1f} s")
