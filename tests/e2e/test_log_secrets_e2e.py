"""No secret in any log line (issue #14, item 3), in every server mode.

Real servers on 127.0.0.1 — ``python server.py``, the Dockerfile's gunicorn command as it is (no
access log), and the same with gunicorn's access log on (as an operator would turn it on) — get real
secrets in every place a client may put one: the ``Authorization: Bearer`` header, ``?access_token=``
(not accepted: a 401, or a 400 next to a header), any other query parameter whose 400 echoes it,
a JSON body field whose 400 echoes it, a webhook callback secret sent back in a query, and the
``?token=`` of a callback URL. Then every byte the server wrote (stdout, stderr, log files) holds
none of them, not even URL-encoded or in part, while the requests and the validation failures are
still logged, with the values redacted.

The first tests check the redaction itself in-process (no server).
"""

from __future__ import annotations

import base64
import logging
import secrets
import socket
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from uvicorn.logging import AccessFormatter

from kmeans.access import REDACTED, install_log_redaction, redact, redact_record
from tests.e2e.test_auth_e2e import create_token, dockerfile_env

TOKEN = "kms_" + secrets.token_urlsafe(32)
WHSEC = "whsec_" + base64.b64encode(b"\xfb\xff" + secrets.token_bytes(30)).decode()  # has + and /


# -- the redaction, in-process --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"GET /kmeans/models?access_token={TOKEN}&limit=5 HTTP/1.1", "?access_token=[redacted]&limit=5 HTTP/1.1"),
        (f"GET /kmeans/models?status={TOKEN} HTTP/1.1", "?status=kms_[redacted] HTTP/1.1"),
        (f"Authorization: Bearer {TOKEN}", "Authorization: Bearer [redacted]"),
        ("Authorization: bearer some.other-jwt.value", "Authorization: bearer [redacted]"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic [redacted]"),
        (f"secret {WHSEC}.", "secret whsec_[redacted]."),
        (f"?callback_secret={quote(WHSEC, safe='')}", "?callback_secret=[redacted]"),
        (f"x {quote(WHSEC, safe='')} y", "x whsec_[redacted] y"),
        (
            "http://user:pa55word@127.0.0.1/hook?token=abc&x=1",
            "http://user:[redacted]@127.0.0.1/hook?token=[redacted]&x=1",
        ),
        ("?api_key=1&password=2&my_token=3", "?api_key=[redacted]&password=[redacted]&my_token=[redacted]"),
    ],
)
def test_redact_takes_out_every_kind_of_secret(text: str, shown: str) -> None:
    assert redact(text).endswith(shown), redact(text)
    assert TOKEN[4:] not in redact(text) and WHSEC[6:12] not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "this server requires a bearer token (Authorization: Bearer ...)",
        "the Authorization header is not 'Bearer <token>'",
        "Idempotency-Key 'retry-1' was used for a different request (model m_0123456789abcdef)",
        "GET /kmeans/models?dataset_id=ds_0123456789abcdef&limit=10 HTTP/1.1",
        "basic auth is not supported",
        "the basic configuration applies",
    ],
)
def test_redact_leaves_what_is_not_a_secret(text: str) -> None:
    assert redact(text) == text


def test_records_keep_their_shape_and_formatters_keep_working() -> None:
    """uvicorn's access formatter unpacks the five args; %d/%r args and tracebacks still format."""
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/kmeans/datasets?access_token={TOKEN}", "1.1", 401), None,
    )
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(redact_record(record))
    assert line == f'127.0.0.1:5000 - "GET /kmeans/datasets?access_token={REDACTED} HTTP/1.1" 401 Unauthorized'

    class Problem(Exception):
        pass

    try:
        raise Problem(f"value {TOKEN!r} is not valid")
    except Problem as exc:
        err = logging.LogRecord("x", logging.ERROR, __file__, 1, "%r after %d tries (%.1f s)", (exc, 3, 0.5), None)
        err.exc_info = (type(exc), exc, exc.__traceback__)
    text = logging.Formatter("%(message)s").format(redact_record(err))
    assert "Problem(\"value 'kms_[redacted]' is not valid\") after 3 tries (0.5 s)" in text
    assert "Traceback" in text and TOKEN not in text and TOKEN[4:] not in text


def test_every_record_of_the_process_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """Installed (server.py does it at import), every logger and handler gets redacted records."""
    install_log_redaction()
    install_log_redaction()  # idempotent
    import server  # noqa: F401  (installs it too)

    caplog.set_level(logging.DEBUG)
    for name in ("uvicorn.access", "uvicorn.error", "gunicorn.access", "connexion.middleware.exceptions", "kmeans"):
        logging.getLogger(name).warning("%s %s", name, {"header": f"Bearer {TOKEN}", "q": f"?token={WHSEC}"})
    assert caplog.records and TOKEN not in caplog.text and WHSEC not in caplog.text
    assert caplog.text.count("Bearer [redacted]") == 5


# -- real servers ---------------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (webhook deliveries to it fail at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exercise(url: str, admin: str) -> dict[str, str]:
    """Send secrets in every place; return them (name -> secret)."""
    base = f"{url}/kmeans"
    bearer = {"Authorization": f"Bearer {admin}"}
    sent = {"admin token": admin}
    with httpx.Client(timeout=30) as http:
        assert http.get(f"{base}/datasets", headers=bearer).status_code == 200
        assert http.get(f"{base}/datasets", params={"access_token": admin}).status_code == 401  # not accepted
        assert http.get(f"{base}/datasets", params={"access_token": admin}, headers=bearer).status_code == 400
        assert http.get(f"{base}/models", params={"status": admin}, headers=bearer).status_code == 400
        assert http.get(f"{base}/models", params={"limit": admin}, headers=bearer).status_code == 400
        assert http.post(f"{base}/tokens", json={"role": admin}, headers=bearer).status_code == 400
        assert http.get(f"{base}/me", headers={"Authorization": f"Token {admin}"}).status_code == 401
        made = http.post(f"{base}/tokens", json={"role": "contributor"}, headers=bearer)
        assert made.status_code == 201, made.text
        sent["contributor token"] = worker = made.json()["token"]
        assert http.get(f"{base}/datasets", params={"token": worker}).status_code == 401
        assert http.get(f"{base}/me", headers={"Authorization": f"Bearer {worker}x"}).status_code == 401  # invalid

        dataset = http.post(f"{base}/datasets", json={"data": [[1, 2], [1, 4], [10, 2], [10, 4]]}, headers=bearer)
        assert dataset.status_code == 201, dataset.text
        sent["callback url token"] = hook_token = secrets.token_urlsafe(24)
        callback = f"http://127.0.0.1:{closed_port()}/hook?token={hook_token}"
        model = http.post(
            f"{base}/models", headers={**bearer, "Idempotency-Key": "log-secrets-1"},
            json={"dataset_id": dataset.json()["id"], "params": {"n_clusters": 2}, "callback_url": callback},
        )
        assert model.status_code == 202, model.text
        sent["webhook secret"] = whsec = model.json()["callback_secret"]
        assert whsec.startswith("whsec_")
        model_url = f"{base}/models/{model.json()['id']}"
        deadline = time.monotonic() + 60
        while (http.get(model_url, headers=bearer).json().get("callback") or {}).get("state") != "failed":
            assert time.monotonic() < deadline, "the webhook delivery did not fail"
            time.sleep(0.2)
        assert http.get(model_url, params={"callback_secret": whsec}, headers=bearer).status_code == 400
        assert http.post(f"{base}/tokens", json={"role": whsec}, headers=bearer).status_code == 400
    return sent


def everything_logged(directory: Path) -> str:
    """Every log file the server wrote (its stdout and stderr, and gunicorn's log files)."""
    return "\n".join(path.read_text(errors="replace") for path in sorted(directory.glob("*.log")))


def assert_no_secret(log: str, sent: dict[str, str]) -> None:
    for name, secret in sent.items():
        body = secret.split("_", 1)[1] if secret.startswith(("kms_", "whsec_")) else secret
        for form in (secret, quote(secret, safe=""), body[:12], body[-12:]):
            assert form not in log, f"the {name} (or a part of it) is in the log"


MODES = ("python server.py", "gunicorn (Dockerfile)", "gunicorn --access-logfile")


@pytest.mark.e2e
@pytest.mark.parametrize("mode", MODES)
def test_no_secret_reaches_any_log_line(
    mode: str, embedded_server, gunicorn_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    admin = create_token(data_dir, "--role", "admin")
    webhooks = {"KMEANS_WEBHOOK_ALLOW": "127.0.0.1", "KMEANS_WEBHOOK_ATTEMPTS": "1"}
    if mode == "python server.py":
        for name, value in webhooks.items():
            monkeypatch.setenv(name, value)
        server = embedded_server(data_dir)
    else:
        env = dockerfile_env()
        env.pop("KMEANS_DATA_DIR")
        if mode == "gunicorn --access-logfile":
            env["GUNICORN_CMD_ARGS"] = f"--access-logfile {tmp_path / 'access.log'} --log-level debug"
        server = gunicorn_server(data_dir, **env, **webhooks)
    with server as url:
        sent = exercise(url, admin)
    log = everything_logged(tmp_path)
    assert_no_secret(log, sent)
    # ... and what happened is still logged, the values redacted: validation failures (connexion's
    # 400s echo the value) and the failed webhook, in every mode; each request where an access log is on.
    assert "is not one of ['queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled']" in log
    assert "'kms_[redacted]' is not one of ['guest', 'contributor', 'admin']" in log
    assert "'whsec_[redacted]' is not one of ['guest', 'contributor', 'admin']" in log
    assert "failed after 1 attempt(s)" in log
    if mode != "gunicorn (Dockerfile)":
        for line in (
            '"GET /kmeans/datasets?access_token=[redacted] HTTP/1.1" 401',
            '"GET /kmeans/datasets?access_token=[redacted] HTTP/1.1" 400',
            '"GET /kmeans/models?status=kms_[redacted] HTTP/1.1" 400',
            '"GET /kmeans/models?limit=kms_[redacted] HTTP/1.1" 400',
            '"GET /kmeans/datasets?token=[redacted] HTTP/1.1" 401',
            "?callback_secret=[redacted] HTTP/1.1\" 400",
            '"GET /kmeans/datasets HTTP/1.1" 200',
        ):
            assert line in log, line
