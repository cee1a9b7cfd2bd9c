"""End to end: auth as deployed — the Dockerfile's command with the Dockerfile's KMEANS_AUTH,
the first token from ``python server.py create-token``, and the safe defaults of ``python server.py``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ROOT, free_port, running

pytestmark = pytest.mark.e2e


def dockerfile_env() -> dict[str, str]:
    """The KMEANS_* variables the Dockerfile's ENV sets."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env_lines = [line[4:] for line in text.splitlines() if line.startswith("ENV ")]
    return dict(re.findall(r"(KMEANS_\w+)=(\S+)", " ".join(env_lines)))


def create_token(data_dir: Path, *args: str) -> str:
    """Run the README's first-token command; the token is stdout's only line."""
    done = subprocess.run(
        [sys.executable, "server.py", "create-token", "--data-dir", str(data_dir), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and done.stdout.startswith("kms_")
    assert "shown only now" in done.stderr and done.stdout.strip() not in done.stderr
    return done.stdout.strip()


def test_the_container_requires_tokens_from_the_start_and_revocation_reaches_every_worker(
    gunicorn_server, tmp_path: Path
):
    env = dockerfile_env()
    assert env.pop("KMEANS_DATA_DIR") == "/data"  # the container's volume; here a temp dir
    assert env.get("KMEANS_AUTH") == "required"
    data_dir = tmp_path / "data"
    # With the access log on (as an operator would), to check that no token lands in it.
    with gunicorn_server(data_dir, GUNICORN_CMD_ARGS="--access-logfile -", **env) as url:
        # Health checks need no token; everything else does, before any token exists.
        assert httpx.get(f"{url}/kmeans/ping").status_code == 200
        refused = httpx.get(f"{url}/kmeans/datasets")
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.headers["www-authenticate"].startswith("Bearer")
        # The classic upload is refused before its body is stored.
        files = {"file": ("model.csv", (ROOT / "examples" / "model.csv").read_bytes(), "text/csv")}
        assert httpx.post(f"{url}/kmeans/upload", files=files).status_code == 401

        admin = {"Authorization": f"Bearer {create_token(data_dir, '--role', 'admin')}"}
        assert httpx.get(f"{url}/kmeans/me", headers=admin).json()["role"] == "admin"
        made = httpx.post(f"{url}/kmeans/tokens", json={"role": "contributor"}, headers=admin)
        assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
        worker = {"Authorization": f"Bearer {made.json()['token']}"}
        upload = httpx.post(f"{url}/kmeans/upload", files=files, headers=worker)
        assert upload.status_code == 200, upload.text

        revoked = httpx.post(f"{url}/kmeans/tokens/{made.json()['id']}/revoke", headers=admin)
        assert revoked.json()["status"] == "revoked"
        # New connections spread over both workers: every one refuses the token at once.
        for _ in range(8):
            answer = httpx.get(f"{url}/kmeans/datasets", headers=worker)
            assert answer.status_code == 401 and "revoked" in answer.json()["detail"]
        secrets = [admin["Authorization"][7:], worker["Authorization"][7:]]
        listed = httpx.get(f"{url}/kmeans/tokens", headers=admin).text
        assert not any(secret in listed for secret in secrets)
    log = (tmp_path / "gunicorn.log").read_text()
    assert "GET /kmeans/datasets" in log  # the access log is there ...
    assert not any(secret in log for secret in secrets)  # ... and holds no token


def test_python_server_py_runs_open_on_loopback_and_says_so(embedded_server, tmp_path: Path):
    with embedded_server(tmp_path / "data") as url:
        assert httpx.get(f"{url}/kmeans/me").json() == {
            "role": "admin", "project": None, "token_id": None, "expires_at": None, "open": True,
        }
    assert "no tokens exist" in (tmp_path / "embedded.log").read_text()


def test_python_server_py_refuses_other_interfaces_without_auth(tmp_path: Path):
    port = free_port()
    cmd = [sys.executable, "server.py", "--host", "0.0.0.0", "--port", str(port), "--data-dir", str(tmp_path / "d")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in done.stderr
    assert "--insecure" in done.stderr


def test_a_token_made_while_an_open_server_runs_closes_it_at_once(tmp_path: Path):
    data_dir = tmp_path / "data"
    port = free_port()
    cmd = [sys.executable, "server.py", "--port", str(port), "--data-dir", str(data_dir)]
    with running(cmd, data_dir, port, tmp_path / "open.log") as url:
        assert httpx.get(f"{url}/kmeans/datasets").status_code == 200
        token = create_token(data_dir, "--role", "guest")
        assert httpx.get(f"{url}/kmeans/datasets").status_code == 401
        assert httpx.get(f"{url}/kmeans/datasets", headers={"Authorization": f"Bearer {token}"}).status_code == 200
