"""Jobs of the one queue through the real production server (gunicorn, 2 uvicorn workers) when
things go wrong: kill -9 mid-sweep and mid-delivery, then a restart on the same data dir; signed
webhook deliveries verified with the ``standardwebhooks`` package; a cancelled sweep's CPU freed,
as /proc sees it."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.e2e.test_jobs_e2e import alive, make_dataset, process_tree

pytestmark = pytest.mark.e2e

# A dead server's jobs are taken up again 2 s after its last heartbeat (default 15 s).
HEARTBEAT = {"KMEANS_HEARTBEAT_TIMEOUT": "2"}
# One OpenMP thread per job process: as fast for 8000 rows, and without OpenMP's spinning threads a
# busy machine (other test runs) no longer stretches a sweep tenfold.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
WEBHOOKS = {"KMEANS_WEBHOOK_ALLOW": "127.0.0.1"}
# 8000 x 8 rows (make_dataset): about 0.3-1 s per k on this machine, more under load.
SWEEP_PARAMS = {"init": "random", "n_init": 60, "random_state": 0}
KS = list(range(2, 9))
ACTIVE = ("queued", "running")
ATTEMPT_TIMEOUT = 5.0  # webhooks.attempt's default


# -- helpers ---------------------------------------------------------------------------------


def get(url: str, path: str) -> dict:
    response = httpx.get(f"{url}/kmeans{path}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_until(fetch: Callable[[], dict], predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
    """Poll ``fetch()`` until ``predicate`` holds; bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    current = fetch()
    while not predicate(current):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s; last seen: {current}")
        time.sleep(0.1)
        current = fetch()
    return current


def start_sweep(url: str, dataset_id: str, params: dict, k_min: int = KS[0], k_max: int = KS[-1]) -> str:
    body = {"dataset_id": dataset_id, "k_min": k_min, "k_max": k_max, "params": params}
    response = httpx.post(f"{url}/kmeans/sweeps", json=body, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def start_fit_with_callback(url: str, dataset_id: str, callback_url: str) -> dict:
    body = {"dataset_id": dataset_id, "params": {"n_clusters": 3, "n_init": 1, "random_state": 0},
            "callback_url": callback_url}
    response = httpx.post(f"{url}/kmeans/models", json=body, timeout=10)
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["callback_secret"].startswith("whsec_"), created
    return created


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds; None once it is gone (or a zombie)."""
    if not alive(pid):
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kill_9(server: Any) -> set[int]:
    """kill -9 the gunicorn master and its workers -- never a job process directly: those must die
    with their server -- and wait (at most 5 s) until the whole tree is gone; the killed pids."""
    tree = process_tree(server.proc.pid)
    servers = {server.proc.pid} | {pid for pid in tree if b"gunicorn" in cmdline(pid)}
    for pid in servers:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in tree if alive(pid)], "processes of the killed server are still running"
    return servers


@dataclass
class Delivery:
    """One request the receiver got."""

    at: float  # time.monotonic() when it arrived
    headers: dict[str, str]  # lower-case names
    body: bytes
    payload: Any = None  # what Webhook.verify returned, if the signature verified
    error: str | None = None  # why it did not


class Receiver:
    """A webhook receiver on 127.0.0.1 (http.server, one thread per request) that verifies every
    delivery with the ``standardwebhooks`` package: 204 if the signature is valid, 400 if not.

    ``hold_first``: the first request is never answered; it is held open until the receiver
    closes (the test kills the server that sent it meanwhile)."""

    def __init__(self, hold_first: bool = False) -> None:
        self.hold_first = hold_first
        self.deliveries: list[Delivery] = []
        self._secret: str | None = None
        self._secret_known = threading.Event()
        self._closing = threading.Event()
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def expect_secret(self, secret: str) -> None:
        """The ``callback_secret`` the creating answer showed (a request waits for it, at most 10 s)."""
        self._secret = secret
        self._secret_known.set()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        delivery = Delivery(time.monotonic(), {k.lower(): v for k, v in request.headers.items()}, body)
        if self._secret_known.wait(10):
            try:
                delivery.payload = Webhook(self._secret).verify(body, delivery.headers)
            except WebhookVerificationError as exc:
                delivery.error = str(exc)
        else:
            delivery.error = "the test never said which secret to expect"
        with self._arrived:
            first = not self.deliveries
            self.deliveries.append(delivery)
            self._arrived.notify_all()
        if first and self.hold_first:
            self._closing.wait(30)  # no answer: the sender is killed -9 meanwhile
            return
        verified = delivery.payload is not None
        with suppress(OSError):
            request.send_response(204 if verified else 400)
            request.send_header("Content-Length", "0")
            request.end_headers()

    def wait_for(self, count: int, timeout: float) -> list[Delivery]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.deliveries) >= count, timeout), (
                f"the receiver got {len(self.deliveries)} of {count} requests within {timeout} s"
            )
            return list(self.deliveries)


def callback_ended(model: dict) -> bool:
    return (model.get("callback") or {}).get("state") in ("delivered", "failed")


# -- 1. kill -9 mid-sweep ------------------------------------------------------------------------


def test_kill_9_mid_sweep_goes_on_from_the_k_values_it_had_finished(gunicorn_server, tmp_path: Path):
    data_dir = tmp_path / "data"
    with gunicorn_server(data_dir, **HEARTBEAT, **ONE_THREAD) as url:
        sweep_id = start_sweep(url, make_dataset(url), SWEEP_PARAMS)
        before = wait_until(
            lambda: get(url, f"/sweeps/{sweep_id}"), lambda s: s["results"] or s["status"] not in ACTIVE, 60,
            "the sweep finished no k",
        )
        killed = kill_9(url)
        # The kill landed after at least one k and before the last.
        assert before["status"] == "running", before
        assert 1 <= len(before["results"]) < len(KS), before
        assert before["attempts"] == 1, before
    with gunicorn_server(data_dir, **HEARTBEAT, **ONE_THREAD) as url:
        # Never left "running": the new server finds no heartbeat and re-queues it (or gives up).
        done = wait_until(
            lambda: get(url, f"/sweeps/{sweep_id}"), lambda s: s["status"] not in ACTIVE, 60,
            "the sweep did not end after the restart",
        )
    finished = {r["k"]: r for r in done["results"]}
    # The k values finished before the kill are kept as they were, not fitted again.
    for result in before["results"]:
        assert finished[result["k"]] == result, (result, finished.get(result["k"]))
    if done["status"] == "failed":  # out of attempts (a re-queue before the kill took one)
        assert done["attempts"] == 2, done
        detail = done["error"]["detail"]
        assert "stopped answering" in detail and "2 attempts" in detail, detail
        assert any(f":{pid})" in detail for pid in killed), (detail, killed)  # names the dead process
        return
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2, done
    assert sorted(finished) == KS, done["results"]
    assert all(r["fit_seconds"] > 0 and r["inertia"] > 0 for r in done["results"]), done["results"]
    assert done["recommended_k"] in KS and done["rule"] == "consensus", done
    assert done["progress"] == 1.0, done


# -- 2. signed webhook deliveries ------------------------------------------------------------------


def test_fit_callback_is_delivered_once_and_verifies(gunicorn_server, tmp_path: Path):
    with Receiver() as receiver, gunicorn_server(tmp_path / "data", **WEBHOOKS) as url:
        created = start_fit_with_callback(url, make_dataset(url), receiver.url)
        secret = created["callback_secret"]
        receiver.expect_secret(secret)
        model = wait_until(lambda: get(url, f"/models/{created['id']}"), callback_ended, 30,
                           "the callback was not delivered")
        time.sleep(1)  # room for a second, unwanted, delivery
        deliveries = receiver.wait_for(1, timeout=0)
    assert model["status"] == "succeeded", model
    assert "callback_secret" not in model  # shown once, by the creating answer only
    callback = model["callback"]
    assert callback["state"] == "delivered" and callback["attempts"] == 1, callback
    assert callback["status_code"] == 204, callback
    assert len(deliveries) == 1, deliveries
    (delivery,) = deliveries
    assert delivery.error is None, delivery
    assert delivery.headers["webhook-id"] == callback["delivery_id"]
    payload = delivery.payload
    assert payload["type"] == "model.succeeded" and payload["event"] == "model.succeeded", payload
    assert payload["data"]["id"] == created["id"] and payload["data"]["status"] == "succeeded", payload
    assert payload["model"] == payload["data"]
    assert "callback_secret" not in payload["data"]
    # The verification is real: another body, or another secret, does not pass.
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(delivery.body.replace(b"succeeded", b"failed"), delivery.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another key" * 3).decode()).verify(delivery.body, delivery.headers)


def test_kill_9_mid_delivery_retries_the_same_message_after_the_restart(gunicorn_server, tmp_path: Path):
    data_dir = tmp_path / "data"
    env = {**HEARTBEAT, **WEBHOOKS}
    with Receiver(hold_first=True) as receiver:
        with gunicorn_server(data_dir, **env) as url:
            created = start_fit_with_callback(url, make_dataset(url), receiver.url)
            receiver.expect_secret(created["callback_secret"])
            (first,) = receiver.wait_for(1, timeout=30)  # held open, never answered
            kill_9(url)
            killed_at = time.monotonic()
            # Killed mid-attempt: before the attempt's own timeout could have ended it.
            assert killed_at - first.at < ATTEMPT_TIMEOUT
        with gunicorn_server(data_dir, **env) as url:
            model = wait_until(lambda: get(url, f"/models/{created['id']}"), callback_ended, 30,
                               "the delivery was not retried after the restart")
        deliveries = receiver.wait_for(2, timeout=0)
    callback = model["callback"]
    assert callback["state"] == "delivered" and callback["attempts"] >= 2, callback
    assert [d.error for d in deliveries] == [None] * len(deliveries), deliveries  # every one signed right
    assert {d.headers["webhook-id"] for d in deliveries} == {callback["delivery_id"]}  # one message, retried
    assert deliveries[1].at > killed_at  # sent by the restarted server
    assert all(d.payload["type"] == "model.succeeded" for d in deliveries)
    assert deliveries[0].payload == deliveries[1].payload


# -- 3. a cancelled sweep's CPU -------------------------------------------------------------------


def busiest_job_process(server_pid: int, over: float = 0.5) -> tuple[int, float]:
    """(pid, CPU seconds used in ``over`` seconds) of the busiest job process under the server: a
    child of a gunicorn worker's fork server (not a fork server itself, which may still be warming up)."""
    candidates = [
        pid for pid in process_tree(server_pid) if b"multiprocessing.forkserver" in cmdline(parent(pid) or 0)
    ]
    assert candidates, "the server has no job process"
    start = {pid: cpu_seconds(pid) for pid in candidates}
    time.sleep(over)
    used = {
        pid: end - begin
        for pid in candidates
        if (begin := start[pid]) is not None and (end := cpu_seconds(pid)) is not None
    }
    pid = max(used, key=used.__getitem__)
    return pid, used[pid]


def test_cancelled_sweep_frees_its_cpu(gunicorn_server, tmp_path: Path):
    tick = 1 / os.sysconf("SC_CLK_TCK")
    with gunicorn_server(tmp_path / "data", **ONE_THREAD) as url:
        params = {"init": "random", "n_init": 1000, "random_state": 0}  # minutes of work
        sweep_id = start_sweep(url, make_dataset(url), params)
        wait_until(lambda: get(url, f"/sweeps/{sweep_id}"), lambda s: s["status"] == "running" and s["progress"] > 0,
                   30, "the sweep did not start")
        pid, used = busiest_job_process(url.proc.pid)
        assert used > 0.1, f"no process of the server runs the sweep (busiest: {pid}, {used:.2f} s in 0.5 s)"

        response = httpx.post(f"{url}/kmeans/sweeps/{sweep_id}/cancel", timeout=10)
        cancelled_at = time.monotonic()
        assert response.status_code == 200 and response.json()["status"] == "cancelled", response.text
        freed, seen = False, []
        while not freed and time.monotonic() + 0.5 <= cancelled_at + 2:
            begin = cpu_seconds(pid)
            time.sleep(0.5)
            end = cpu_seconds(pid)
            seen.append((begin, end))
            freed = begin is None or end is None or end - begin <= tick
        assert freed, f"job process {pid} still uses CPU 2 s after the cancel: {seen}"
        after = get(url, f"/sweeps/{sweep_id}")
        assert after["status"] == "cancelled", after
