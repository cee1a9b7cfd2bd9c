"""Tokens, roles and projects below HTTP: kmeans.access over a real store."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from kmeans import access
from kmeans.access import Access, Caller, acting_as, current, is_loopback
from kmeans.errors import Conflict, Forbidden, NotFound, Unauthorized, Unprocessable
from kmeans.store import Store


@pytest.fixture
def gate(tmp_path: Path) -> Access:
    return Access(Store(tmp_path / "data"))


def test_a_new_data_dir_is_open_until_the_first_token_then_stays_closed(gate: Access, tmp_path: Path):
    assert not gate.required()
    assert gate.anonymous("127.0.0.1") is access.OPEN
    record, _ = gate.create_token("guest")
    assert gate.required()
    with pytest.raises(Unauthorized):
        gate.anonymous("127.0.0.1")
    gate.revoke_token(record["id"])
    # Another process opening the same data dir sees it too; revoking every token does not reopen it.
    assert Access(Store(tmp_path / "data")).required()


def test_the_settings_can_require_tokens_before_any_exists(tmp_path: Path):
    with pytest.raises(Unauthorized) as refused:
        Access(Store(tmp_path / "data"), required=True).anonymous("127.0.0.1")
    assert refused.value.headers["WWW-Authenticate"] == 'Bearer realm="kmeans"'


@pytest.mark.parametrize("host", ["10.0.0.7", "192.168.1.2", "::ffff:8.8.8.8", "example.org", None, "testclient"])
def test_an_open_server_refuses_clients_of_other_machines(gate: Access, host: str | None):
    with pytest.raises(Forbidden, match="only clients on its own machine"):
        gate.anonymous(host)


def test_insecure_serves_everyone_while_no_token_exists(tmp_path: Path):
    assert Access(Store(tmp_path / "data"), insecure=True).anonymous("10.0.0.7") is access.OPEN


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_addresses(host: str):
    assert is_loopback(host)


def test_a_token_is_stored_only_as_its_hash(gate: Access):
    record, secret = gate.create_token("contributor", name="ci")
    assert secret.startswith("kms_") and len(secret) > 40
    assert "token" not in record and "hash" not in record
    with sqlite3.connect(gate.store.db_path) as db:
        dump = "\n".join(db.iterdump())
    assert secret not in dump
    assert access.digest(secret) in dump
    caller = gate.resolve(secret)
    assert (caller.role, caller.project, caller.token_id) == ("contributor", "default", record["id"])


def test_unknown_revoked_and_expired_tokens_are_refused_with_the_reason(gate: Access):
    with pytest.raises(Unauthorized, match="not valid"):
        gate.resolve("kms_nonsense")
    revoked, secret = gate.create_token("guest")
    gate.revoke_token(revoked["id"])
    with pytest.raises(Unauthorized, match="revoked") as refused:
        gate.resolve(secret)
    assert 'error="invalid_token"' in refused.value.headers["WWW-Authenticate"]
    assert gate.get_token(revoked["id"])["status"] == "revoked"
    expiring, secret = gate.create_token("guest", expires_in=60)
    assert gate.resolve(secret).expires_at == expiring["expires_at"]
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    with gate.store.transaction() as db:
        db.execute("UPDATE tokens SET expires_at = ? WHERE id = ?", (past, expiring["id"]))
    with pytest.raises(Unauthorized, match="expired"):
        gate.resolve(secret)
    assert gate.get_token(expiring["id"])["status"] == "expired"


def test_token_and_project_rules(gate: Access):
    with pytest.raises(Unprocessable, match="every project"):
        gate.create_token("admin", project="default")
    with pytest.raises(NotFound, match="no project"):
        gate.create_token("guest", project="nowhere")
    with pytest.raises(Unprocessable, match="lower-case"):
        gate.create_project("Team A")
    gate.create_project("team-a")
    with pytest.raises(Conflict):
        gate.create_project("team-a")
    record, _ = gate.create_token("guest", project="team-a")
    with pytest.raises(Conflict, match="tokens"):
        gate.delete_project("team-a")
    gate.revoke_token(record["id"])
    gate.delete_project("team-a")
    with pytest.raises(Conflict, match="default"):
        gate.delete_project("default")


def test_a_project_with_resources_cannot_be_deleted(gate: Access):
    gate.create_project("team-a")
    record = {"id": "ds_1", "name": "d", "rows": 1, "n_features": 1, "columns": ["x1"], "sha256": "0",
              "size_bytes": 1, "created_at": "2026-01-01T00:00:00+00:00", "project": "team-a"}
    gate.store.add_dataset(record, np.zeros((1, 1)))
    with pytest.raises(Conflict, match="datasets"):
        gate.delete_project("team-a")


def test_callers_see_and_create_only_in_their_project():
    member = Caller("contributor", "team-a", "tok_1")
    assert member.sees("team-a") and not member.sees("team-b")
    assert member.home(None) == "team-a" and member.home("team-a") == "team-a"
    with pytest.raises(Forbidden, match="team-a"):
        member.home("team-b")
    assert member.scope(None) == "team-a"
    admin = Caller("admin", None, "tok_2")
    assert admin.home(None) == "default" and admin.home("team-b") == "team-b"
    assert admin.scope(None) is None and admin.scope("team-b") == "team-b"
    assert admin.may("admin") and member.may("guest") and not member.may("admin")
    assert not Caller("guest", "team-a").may("contributor")


def test_code_outside_a_request_sees_nothing():
    # A request path that forgot to set its caller fails closed.
    assert not current().sees("default") and not current().may("guest")
    with pytest.raises(NotFound):
        access.visible({"id": "ds_1", "project": "default"}, "dataset", "ds_1")
    with acting_as(Caller("guest", "default")):
        assert access.visible({"id": "ds_1", "project": "default"}, "dataset", "ds_1")
    assert not current().sees("default")


def test_a_data_dir_from_before_projects_gets_them_on_open(tmp_path: Path):
    store = Store(tmp_path / "data")
    record = {"id": "ds_1", "name": "d", "rows": 1, "n_features": 1, "columns": ["x1"], "sha256": "0",
              "size_bytes": 1, "created_at": "2026-01-01T00:00:00+00:00"}
    store.add_dataset(record, np.zeros((1, 1)))
    with store.transaction() as db:
        db.execute("DROP VIEW jobs")  # nor had it the job queue, or its indexes
        for table in ("models", "sweeps", "deliveries"):
            db.execute(f"DROP INDEX {table}_started")
        for table in ("datasets", "models", "sweeps"):
            db.execute(f"ALTER TABLE {table} DROP COLUMN project")
        db.execute("DROP TABLE projects")
    reopened = Store(tmp_path / "data")
    assert reopened.get_dataset("ds_1")["project"] == "default"
    assert reopened.get_project("default") is not None


def test_new_resources_go_only_to_projects_that_exist(gate: Access):
    gate.create_project("team-a")
    with acting_as(Caller("admin", None, "tok_1")):
        assert gate.home(None) == "default" and gate.home("team-a") == "team-a"
        with pytest.raises(NotFound, match="no project with id nowhere"):
            gate.home("nowhere")
    with acting_as(Caller("contributor", "team-a", "tok_2")):
        assert gate.home(None) == "team-a"
        with pytest.raises(Forbidden):
            gate.home("default")


def test_a_users_access_and_refresh_tokens_are_taken_out_of_log_lines(gate: Access):
    gate.create_project("team-a")
    gate.create_user("ada", "correct horse battery", memberships=[{"project": "team-a", "role": "guest"}])
    grant = gate.sign_in("ada", "correct horse battery", "127.0.0.1")
    line = f"got {grant['access_token']} and refresh_token={grant['refresh_token']} for ada"
    cleaned = access.redact(line)
    assert grant["access_token"] not in cleaned and grant["refresh_token"] not in cleaned
    assert cleaned.startswith("got kma_[redacted]") and cleaned.endswith("for ada")


def test_a_users_caller_is_its_membership_in_the_project_named(gate: Access):
    for project in ("team-a", "team-b"):
        gate.create_project(project)
    user = gate.store.user_by_name(
        gate.create_user("ada", "correct horse battery", memberships=[
            {"project": "team-a", "role": "contributor"}, {"project": "team-b", "role": "guest"}])["name"]
    )
    in_a = Access.scoped(user, "ses_1", None, "team-a")
    assert (in_a.role, in_a.project, in_a.unscoped) == ("contributor", "team-a", None)
    assert in_a.sees("team-a") and not in_a.sees("team-b")
    assert Access.scoped(user, "ses_1", None, "team-b").role == "guest"
    unnamed = Access.scoped(user, "ses_1", None, None)
    assert unnamed.unscoped and not unnamed.sees("team-a") and not unnamed.may("guest")
    with pytest.raises(Forbidden, match="not a member of project 'default'"):
        Access.scoped(user, "ses_1", None, "default")


@pytest.mark.parametrize(
    ("password", "problem"),
    [("short", "at least 12"), ("x" * 1025, "at most 1024"), ("ADA", "at least 12"), ("abababababab", "too weak")],
)
def test_weak_passwords_are_refused_naming_the_field(password: str, problem: str):
    with pytest.raises(Unprocessable, match=problem) as refused:
        access.check_password(password, "ada", "new_password")
    assert refused.value.extra["parameter"] == "new_password"
