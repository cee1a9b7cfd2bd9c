"""Users (issue #19) from the SDK and the CLI, in-process against the app: sign-in, transparent
refresh (before expiry and after a 401), rotation, sign-out, and ``kmeans login/logout/users``
with the refresh token kept in a 0600 file."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from kmeans.cli import EXIT_AUTH, cli
from kmeans.client import KMeansClient, TooManyRequests, Unauthorized
from kmeans.config import Settings
from server import build_app

PASSWORD = "correct horse battery"
POINTS = [[1, 2], [1, 4], [10, 2], [10, 4]]


@pytest.fixture(autouse=True)
def no_credentials_in_the_environment(monkeypatch, tmp_path: Path):
    """Neither the tester's KMEANS_TOKEN nor their sign-ins take part."""
    monkeypatch.delenv("KMEANS_TOKEN", raising=False)
    monkeypatch.delenv("KMEANS_PROJECT", raising=False)
    monkeypatch.setenv("KMEANS_CONFIG_DIR", str(tmp_path / "config"))


def make_server(tmp_path: Path, **settings: object) -> Iterator[tuple[httpx.Client, KMeansClient]]:
    """A test client of a server with projects team-a and team-b and users ada (contributor in
    team-a, guest in team-b) and root (admin); and an admin token's SDK client."""
    app = build_app(Settings(data_dir=tmp_path / "data", max_concurrent_fits=1, **settings))  # type: ignore[arg-type]
    with app.test_client() as http:
        _, secret = app.service.access.create_token("admin")
        admin = KMeansClient("http://testserver", http=http, token=secret)
        admin.create_project("team-a")
        admin.create_project("team-b")
        admin.create_user("ada", PASSWORD, memberships=[{"project": "team-a", "role": "contributor"},
                                                        {"project": "team-b", "role": "guest"}])
        yield http, admin


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[httpx.Client, KMeansClient]]:
    yield from make_server(tmp_path)


@pytest.fixture
def short_lived(tmp_path: Path) -> Iterator[tuple[httpx.Client, KMeansClient]]:
    """As ``server``, with access tokens of one second."""
    yield from make_server(tmp_path, access_token_ttl=1)


# -- the SDK ---------------------------------------------------------------------------------------


def test_sign_in_acts_in_the_project_chosen(server):
    http, _ = server
    km = KMeansClient("http://testserver", http=http, project="team-a")
    grant = km.sign_in("ada", PASSWORD)
    assert grant["refresh_token"].startswith("kmr_") and km.signed_in
    me = km.whoami()
    assert (me["user"]["name"], me["role"], me["project"]) == ("ada", "contributor", "team-a")
    assert km.create_dataset(POINTS)["project"] == "team-a"
    km.project = "team-b"
    assert km.whoami()["role"] == "guest" and km.list_datasets()["total"] == 0
    assert "kma_" not in repr(km) and "kmr_" not in repr(km)


def test_a_wrong_password_is_unauthorized_and_too_many_are_429(server):
    http, _ = server
    km = KMeansClient("http://testserver", http=http)
    for _ in range(5):
        with pytest.raises(Unauthorized) as refused:
            km.sign_in("ada", "not the password")
        assert refused.value.detail == "the user name or password is wrong"
    with pytest.raises(TooManyRequests) as limited:
        km.sign_in("ada", PASSWORD)
    assert limited.value.retry_after and limited.value.retry_after > 0


def test_an_expiring_access_token_is_refreshed_before_it_expires(short_lived):
    http, _ = short_lived
    grants: list[dict] = []
    km = KMeansClient("http://testserver", http=http, project="team-a", on_refresh=grants.append)
    first = km.sign_in("ada", PASSWORD)
    time.sleep(1.1)  # the server's access token is expired now
    assert km.whoami()["user"]["name"] == "ada"
    assert len(grants) == 2 and grants[1]["refresh_token"] != first["refresh_token"]


def test_an_access_token_refused_with_401_is_refreshed_once_and_the_request_sent_again(short_lived):
    http, _ = short_lived
    grants: list[dict] = []
    first = KMeansClient("http://testserver", http=http, project="team-a").sign_in("ada", PASSWORD)
    # A client that believes its access token good for long (its clock, say): the server says 401 first.
    km = KMeansClient("http://testserver", http=http, project="team-a", token=first["access_token"],
                      refresh_token=first["refresh_token"], access_expires_at=time.time() + 3600,
                      on_refresh=grants.append)
    time.sleep(1.1)
    assert km.create_dataset(POINTS)["project"] == "team-a"
    assert len(grants) == 1


def test_a_stolen_refresh_token_used_after_rotation_ends_the_sign_in_for_both(server):
    http, _ = server
    km = KMeansClient("http://testserver", http=http, project="team-a")
    stolen = km.sign_in("ada", PASSWORD)["refresh_token"]
    km.refresh()
    thief = KMeansClient("http://testserver", http=http, refresh_token=stolen, project="team-a")
    with pytest.raises(Unauthorized) as refused:
        thief.whoami()
    assert "used already" in refused.value.detail
    with pytest.raises(Unauthorized):
        km.whoami()  # the owner's newer tokens are revoked too: it signs in again


def test_sign_out_ends_the_sign_in(server):
    http, _ = server
    km = KMeansClient("http://testserver", http=http, project="team-a")
    refresh = km.sign_in("ada", PASSWORD)["refresh_token"]
    km.sign_out()
    assert not km.has_token
    with pytest.raises(Unauthorized):
        KMeansClient("http://testserver", http=http, refresh_token=refresh).whoami()


def test_users_through_the_sdk(server):
    _, admin = server
    bob = admin.create_user("bob", PASSWORD, memberships=[{"project": "team-a", "role": "guest"}])
    assert admin.get_user(bob["id"])["memberships"] == [{"project": "team-a", "role": "guest"}]
    changed = admin.update_user(bob["id"], memberships=[{"project": "team-b", "role": "contributor"}])
    assert changed["memberships"] == [{"project": "team-b", "role": "contributor"}]
    assert {u["name"] for u in admin.list_users()["items"]} == {"ada", "bob"}
    admin.delete_user(bob["id"])
    assert admin.list_users()["total"] == 1


def test_a_user_changes_its_password_through_the_sdk(server):
    http, _ = server
    km = KMeansClient("http://testserver", http=http, project="team-a")
    km.sign_in("ada", PASSWORD)
    km.change_password(PASSWORD, "staple lantern 42 orbit")
    with pytest.raises(Unauthorized):
        KMeansClient("http://testserver", http=http).sign_in("ada", PASSWORD)
    KMeansClient("http://testserver", http=http).sign_in("ada", "staple lantern 42 orbit")


# -- the CLI ---------------------------------------------------------------------------------------


def kmeans(http: httpx.Client, *args: str, token: str | None = None, stdin: str | None = None):
    """Run ``kmeans ARGS…`` against the in-process app."""
    options = ["--url", "http://testserver", *(["--token", token] if token else [])]
    return CliRunner().invoke(cli, [*options, *args], obj={"http": http}, input=stdin)


def ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def sessions_file(tmp_path: Path) -> Path:
    return tmp_path / "config" / "sessions.json"


def test_login_keeps_the_refresh_token_in_a_file_only_its_owner_reads_and_logout_ends_it(server, tmp_path: Path):
    http, _ = server
    shown = ok(kmeans(http, "login", "ada", "--password-stdin", stdin=PASSWORD + "\n"))
    assert "user ada" in shown and PASSWORD not in shown
    path = sessions_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kept = json.loads(path.read_text())["http://testserver"]
    assert kept["username"] == "ada" and kept["refresh_token"].startswith("kmr_")
    assert kept["refresh_token"] not in shown
    me = json.loads(ok(kmeans(http, "--project", "team-a", "whoami", "--json")))
    assert (me["user"]["name"], me["role"], me["project"]) == ("ada", "contributor", "team-a")
    unscoped = kmeans(http, "datasets", "list")
    assert unscoped.exit_code == 1 and "several projects" in " ".join(unscoped.stderr.split())
    assert json.loads(ok(kmeans(http, "--project", "team-b", "datasets", "list", "--json")))["total"] == 0
    assert "signed out ada" in ok(kmeans(http, "logout"))
    assert "http://testserver" not in json.loads(path.read_text())
    refused = KMeansClient("http://testserver", http=http, refresh_token=kept["refresh_token"])
    with pytest.raises(Unauthorized):
        refused.whoami()
    after = kmeans(http, "whoami")
    assert after.exit_code == EXIT_AUTH


def test_each_command_refreshes_an_expired_access_token_and_keeps_the_new_refresh_token(short_lived, tmp_path):
    http, _ = short_lived
    ok(kmeans(http, "login", "ada", "--password-stdin", stdin=PASSWORD + "\n"))
    before = json.loads(sessions_file(tmp_path).read_text())["http://testserver"]["refresh_token"]
    time.sleep(1.1)
    ok(kmeans(http, "--project", "team-a", "whoami"))
    after = json.loads(sessions_file(tmp_path).read_text())["http://testserver"]["refresh_token"]
    assert after != before
    time.sleep(1.1)
    ok(kmeans(http, "--project", "team-a", "whoami"))  # the rotated one works in turn


def test_a_revoked_sign_in_exits_4_and_says_to_log_in_again(server, tmp_path: Path):
    http, admin = server
    ok(kmeans(http, "login", "ada", "--password-stdin", stdin=PASSWORD + "\n"))
    ada = next(u for u in admin.list_users()["items"] if u["name"] == "ada")
    admin.delete_user(ada["id"])
    refused = kmeans(http, "--project", "team-a", "whoami")
    assert refused.exit_code == EXIT_AUTH and "kmeans login" in " ".join(refused.stderr.split())


def test_a_wrong_password_exits_4(server):
    http, _ = server
    refused = kmeans(http, "login", "ada", "--password-stdin", stdin="not the password\n")
    assert refused.exit_code == EXIT_AUTH and "the user name or password is wrong" in refused.stderr


def test_users_commands(server):
    http, admin = server
    token = admin._KMeansClient__token  # the admin's API token, as --token
    made = json.loads(ok(kmeans(http, "users", "create", "bob", "--member", "team-a:contributor",
                                "--password-stdin", "--json", token=token, stdin=PASSWORD + "\n")))
    assert made["memberships"] == [{"project": "team-a", "role": "contributor"}]
    listed = ok(kmeans(http, "users", "list", token=token))
    assert "bob" in listed and "team-a:contributor" in listed
    changed = json.loads(ok(kmeans(http, "users", "update", made["id"], "--member", "team-b:guest", "--json",
                                   token=token)))
    assert changed["memberships"] == [{"project": "team-b", "role": "guest"}]
    assert "bob" in ok(kmeans(http, "users", "show", made["id"], token=token))
    weak = kmeans(http, "users", "create", "carol", "--password-stdin", token=token, stdin="short\n")
    assert weak.exit_code == 1 and "password must have at least 12 characters" in weak.stderr
    unknown = kmeans(http, "users", "create", "carol", "--member", "nowhere:guest", "--password-stdin",
                     token=token, stdin=PASSWORD + "\n")
    assert unknown.exit_code == 1 and "no project with id nowhere" in unknown.stderr
    assert "deleted user" in ok(kmeans(http, "users", "delete", made["id"], token=token))
    assert admin.list_users()["total"] == 1


def test_password_command_changes_the_signed_in_users_password(server):
    http, _ = server
    ok(kmeans(http, "login", "ada", "--password-stdin", stdin=PASSWORD + "\n"))
    new = "staple lantern 42 orbit"
    ok(kmeans(http, "--project", "team-a", "password", "--password-stdin", stdin=f"{PASSWORD}\n{new}\n"))
    KMeansClient("http://testserver", http=http).sign_in("ada", new)
