"""Users (issue #19): passwords, sign-in with access and refresh tokens, project scope, revocation.

Everything through HTTP: an admin token makes projects and users, users sign in with the OAuth2
password grant and act in one project at a time with that membership's role.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from kmeans import access
from kmeans.access import Access
from kmeans.config import Settings
from kmeans.store import Store
from server import build_app
from tests.conftest import ROOT, local_client

PASSWORD = "correct horse battery"
POINTS = [[1.0, 2.0], [1.0, 4.0], [10.0, 2.0], [10.0, 4.0]]
PROBLEM = "application/problem+json"


class World:
    """A server that requires tokens, with projects team-a and team-b and an admin token."""

    def __init__(self, client: TestClient, admin: dict[str, str], data_dir: Path) -> None:
        self.client = client
        self.admin = admin
        self.data_dir = data_dir

    def user(self, name: str, memberships: list[dict[str, str]] | None = None, admin: bool = False) -> dict:
        """A new user made by the admin."""
        body = {"name": name, "password": PASSWORD, "admin": admin, "memberships": memberships or []}
        made = self.client.post("/kmeans/users", json=body, headers=self.admin)
        assert made.status_code == 201, made.text
        return made.json()

    def sign_in(self, name: str, password: str = PASSWORD, client: TestClient | None = None) -> dict:
        """The grant of a successful sign-in."""
        answer = (client or self.client).post(
            "/kmeans/auth/token", data={"grant_type": "password", "username": name, "password": password}
        )
        assert answer.status_code == 200, answer.text
        return answer.json()


def bearer(grant: dict, project: str | None = None) -> dict[str, str]:
    """The headers of a request with a grant's access token (in ``project``)."""
    headers = {"Authorization": f"Bearer {grant['access_token']}"}
    if project:
        headers["X-Kmeans-Project"] = project
    return headers


def problem(answer, status: int) -> dict:
    """The problem document of an answer that must have ``status``."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    return answer.json()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A fresh server with team-a, team-b and an admin token."""
    data_dir = tmp_path / "data"
    _, secret = Access(Store(data_dir)).create_token("admin")
    with local_client(build_app(Settings(data_dir=data_dir, max_concurrent_fits=1))) as client:
        admin = {"Authorization": f"Bearer {secret}"}
        for project in ("team-a", "team-b"):
            assert client.post("/kmeans/projects", json={"id": project}, headers=admin).status_code == 201
        yield World(client, admin, data_dir)


def test_users_are_made_listed_changed_and_deleted_by_admins_without_their_passwords(world: World):
    ada = world.user("ada", [{"project": "team-a", "role": "contributor"}, {"project": "team-b", "role": "guest"}])
    assert ada["id"].startswith("usr_") and ada["admin"] is False
    assert ada["memberships"] == [{"project": "team-a", "role": "contributor"}, {"project": "team-b", "role": "guest"}]
    listed = world.client.get("/kmeans/users", headers=world.admin)
    assert listed.json()["total"] == 1 and listed.json()["items"][0]["name"] == "ada"
    one = world.client.get(f"/kmeans/users/{ada['id']}", headers=world.admin)
    assert one.status_code == 200 and one.json() == ada
    for body in (listed.text, one.text):
        assert PASSWORD not in body and "argon2" not in body and "password" not in body
    changed = world.client.patch(
        f"/kmeans/users/{ada['id']}", json={"memberships": [{"project": "team-b", "role": "contributor"}]},
        headers=world.admin,
    )
    assert changed.status_code == 200
    assert changed.json()["memberships"] == [{"project": "team-b", "role": "contributor"}]
    assert world.client.delete(f"/kmeans/users/{ada['id']}", headers=world.admin).status_code == 204
    problem(world.client.get(f"/kmeans/users/{ada['id']}", headers=world.admin), 404)
    problem(world.client.delete(f"/kmeans/users/{ada['id']}", headers=world.admin), 404)


def test_the_password_is_stored_only_as_an_argon2_hash(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    ada = world.user("ada", [{"project": "team-a", "role": "guest"}])
    world.sign_in("ada")
    db = sqlite3.connect(world.data_dir / "kmeans.sqlite3")
    (stored,) = db.execute("SELECT password_hash FROM users WHERE id = ?", (ada["id"],)).fetchone()
    dump = "\n".join(db.iterdump())
    db.close()
    assert stored.startswith("$argon2id$") and PASSWORD not in dump
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"name": "bob", "password": "short"}, 422, "password must have at least 12 characters"),
        ({"name": "bobbobbobbob", "password": "BOBBOBBOBBOB"}, 422, "password is too weak"),
        ({"name": "bob", "password": "aaaaaaaaaaaaaaaa"}, 422, "password is too weak"),
        ({"name": "bob", "password": PASSWORD, "memberships": [{"project": "nowhere", "role": "guest"}]},
         422, "memberships[0].project: no project with id nowhere"),
        ({"name": "bob", "password": PASSWORD, "memberships": [{"project": "team-a", "role": "owner"}]},
         422, "memberships[0].role"),
        ({"name": "bob", "password": PASSWORD,
          "memberships": [{"project": "team-a", "role": "guest"}, {"project": "team-a", "role": "contributor"}]},
         422, "memberships[1].project: project 'team-a' is named twice"),
        ({"name": "no spaces", "password": PASSWORD}, 422, "name 'no spaces' must be"),
        ({"name": "bob", "password": PASSWORD, "extra": 1}, 400, "extra"),
    ],
)
def test_bad_users_are_refused_naming_what_is_wrong(world: World, body: dict, status: int, named: str):
    answer = problem(world.client.post("/kmeans/users", json=body, headers=world.admin), status)
    assert named in answer["detail"], answer
    assert world.client.get("/kmeans/users", headers=world.admin).json()["total"] == 0


def test_an_admin_role_in_a_membership_is_refused_and_names_the_membership(world: World):
    body = {"name": "bob", "password": PASSWORD, "memberships": [{"project": "team-a", "role": "admin"}]}
    answer = problem(world.client.post("/kmeans/users", json=body, headers=world.admin), 422)
    assert "memberships[0].role" in answer["detail"] and "'admin'" in answer["detail"]
    body["memberships"][0]["role"] = "owner"
    answer = problem(world.client.post("/kmeans/users", json=body, headers=world.admin), 422)
    assert "memberships[0].role" in answer["detail"] and "'owner'" in answer["detail"]


def test_a_taken_name_is_409(world: World):
    world.user("ada")
    answer = world.client.post("/kmeans/users", json={"name": "ada", "password": PASSWORD}, headers=world.admin)
    assert "exists already" in problem(answer, 409)["detail"]


def test_sign_in_gives_short_lived_access_and_refresh_tokens_that_work(world: World):
    world.user("ada", [{"project": "team-a", "role": "contributor"}])
    answer = world.client.post(
        "/kmeans/auth/token", data={"grant_type": "password", "username": "ada", "password": PASSWORD}
    )
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    grant = answer.json()
    assert grant["token_type"] == "bearer" and grant["expires_in"] == 900
    assert grant["access_token"].startswith("kma_") and grant["refresh_token"].startswith("kmr_")
    me = world.client.get("/kmeans/me", headers=bearer(grant)).json()
    assert (me["role"], me["project"], me["open"], me["project_in_scope"]) == ("contributor", "team-a", False, True)
    assert me["user"]["name"] == "ada" and me["token_id"] is None
    made = world.client.post("/kmeans/datasets", json={"data": POINTS}, headers=bearer(grant))
    assert made.status_code == 201 and made.json()["project"] == "team-a"


def test_wrong_password_and_unknown_user_get_the_same_401(world: World):
    world.user("ada", [{"project": "team-a", "role": "guest"}])
    answers = [
        world.client.post("/kmeans/auth/token", data={"grant_type": "password", "username": name, "password": pw})
        for name, pw in (("ada", "not the password at all"), ("nobody-at-all", PASSWORD))
    ]
    documents = [problem(answer, 401) for answer in answers]
    assert documents[0] == documents[1] and documents[0]["detail"] == "the user name or password is wrong"
    assert answers[0].headers["www-authenticate"] == answers[1].headers["www-authenticate"]


def test_an_unknown_user_costs_a_password_hash_too(world: World, monkeypatch):
    """No user enumeration by timing: the unknown name's sign-in verifies a (dummy) hash as a known one's does."""
    world.user("ada", [{"project": "team-a", "role": "guest"}])
    verified: list[str] = []
    real = access.password_matches
    monkeypatch.setattr(access, "password_matches", lambda h, p: verified.append(h) or real(h, p))
    for name in ("ada", "nobody-at-all"):
        world.client.post("/kmeans/auth/token", data={"grant_type": "password", "username": name, "password": "x" * 12})
    assert len(verified) == 2 and all(h.startswith("$argon2id$") for h in verified)
    assert verified[0] != verified[1]


def test_failed_sign_ins_are_bounded_per_user_with_retry_after(world: World):
    world.user("ada", [{"project": "team-a", "role": "guest"}])
    for _ in range(access.MAX_USER_FAILURES):
        wrong = {"grant_type": "password", "username": "ada", "password": "wrong password!"}
        problem(world.client.post("/kmeans/auth/token", data=wrong), 401)
    # Locked now, even with the right password; another user from the same address is not.
    locked = world.client.post("/kmeans/auth/token", data={"grant_type": "password", "username": "ada",
                                                            "password": PASSWORD})
    assert "too many failed sign-ins for this user" in problem(locked, 429)["detail"]
    retry = int(locked.headers["retry-after"])
    assert 0 < retry <= access.FAILURE_WINDOW
    world.user("bob", [{"project": "team-a", "role": "guest"}])
    world.sign_in("bob")


def test_failed_sign_ins_are_bounded_per_client_address(world: World, monkeypatch):
    monkeypatch.setattr(access, "MAX_ADDRESS_FAILURES", 3)
    world.user("ada", [{"project": "team-a", "role": "guest"}])
    for i in range(3):
        wrong = {"grant_type": "password", "username": f"someone-{i}", "password": "wrong password!"}
        problem(world.client.post("/kmeans/auth/token", data=wrong), 401)
    locked = world.client.post("/kmeans/auth/token", data={"grant_type": "password", "username": "ada",
                                                            "password": PASSWORD})
    assert "this client address" in problem(locked, 429)["detail"] and int(locked.headers["retry-after"]) > 0
    app = world.client.app
    with app.test_client(client=("192.0.2.7", 40000)) as elsewhere:  # another address is not bounded
        world.sign_in("ada", client=elsewhere)


def test_refresh_rotates_and_a_reused_refresh_token_revokes_the_whole_sign_in(world: World):
    world.user("ada", [{"project": "team-a", "role": "guest"}])
    first = world.sign_in("ada")
    second = world.client.post("/kmeans/auth/refresh", data={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200 and second.headers["cache-control"] == "no-store"
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    assert world.client.get("/kmeans/me", headers=bearer(second)).status_code == 200
    # The old refresh token again (a thief's copy): refused, and every token of the sign-in with it.
    reused = world.client.post("/kmeans/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert "used already" in problem(reused, 401)["detail"]
    for grant in (first, second):
        refused = problem(world.client.get("/kmeans/me", headers=bearer(grant)), 401)
        assert "revoked" in refused["detail"]
    again = world.client.post("/kmeans/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert "revoked" in problem(again, 401)["detail"]
    # Another sign-in of the same user is untouched.
    assert world.client.get("/kmeans/me", headers=bearer(world.sign_in("ada"))).status_code == 200


def test_logout_ends_the_sign_in_from_the_next_request_on(world: World):
    world.user("ada", [{"project": "team-a", "role": "guest"}])
    grant = world.sign_in("ada")
    other = world.sign_in("ada")
    assert world.client.post("/kmeans/auth/logout", data={"refresh_token": grant["refresh_token"]}).status_code == 204
    assert "signed out" in problem(world.client.get("/kmeans/me", headers=bearer(grant)), 401)["detail"]
    problem(world.client.post("/kmeans/auth/refresh", data={"refresh_token": grant["refresh_token"]}), 401)
    assert world.client.get("/kmeans/me", headers=bearer(other)).status_code == 200
    problem(world.client.post("/kmeans/auth/logout", data={"refresh_token": "kmr_unknown"}), 401)


def test_an_expired_access_token_is_refused_and_refresh_still_works(tmp_path: Path):
    data_dir = tmp_path / "data"
    _, secret = Access(Store(data_dir)).create_token("admin")
    settings = Settings(data_dir=data_dir, max_concurrent_fits=1, access_token_ttl=1)
    with local_client(build_app(settings)) as client:
        admin = {"Authorization": f"Bearer {secret}"}
        client.post("/kmeans/projects", json={"id": "team-a"}, headers=admin)
        body = {"name": "ada", "password": PASSWORD, "memberships": [{"project": "team-a", "role": "guest"}]}
        assert client.post("/kmeans/users", json=body, headers=admin).status_code == 201
        grant = client.post(
            "/kmeans/auth/token", data={"grant_type": "password", "username": "ada", "password": PASSWORD}
        ).json()
        time.sleep(1.1)
        assert "expired" in problem(client.get("/kmeans/me", headers=bearer(grant)), 401)["detail"]
        fresh = client.post("/kmeans/auth/refresh", data={"refresh_token": grant["refresh_token"]}).json()
        assert client.get("/kmeans/me", headers=bearer(fresh)).status_code == 200


def test_a_user_of_several_projects_acts_in_the_one_named_with_that_role(world: World):
    world.user("ada", [{"project": "team-a", "role": "contributor"}, {"project": "team-b", "role": "guest"}])
    grant = world.sign_in("ada")
    me = world.client.get("/kmeans/me", headers=bearer(grant)).json()
    assert (me["role"], me["project"], me["project_in_scope"]) == (None, None, False)
    assert len(me["user"]["memberships"]) == 2
    unnamed = problem(world.client.get("/kmeans/datasets", headers=bearer(grant)), 400)
    assert "several projects (team-a, team-b)" in unnamed["detail"] and "X-Kmeans-Project" in unnamed["detail"]
    # team-a by the header: a contributor there.
    made = world.client.post("/kmeans/datasets", json={"data": POINTS}, headers=bearer(grant, "team-a"))
    assert made.status_code == 201 and made.json()["project"] == "team-a"
    dataset = made.json()["id"]
    # team-b by ?project=: a guest there, who may not create, and to whom team-a's dataset is missing.
    problem(world.client.post("/kmeans/datasets?project=team-b", json={"data": POINTS}, headers=bearer(grant)), 403)
    listed = world.client.get("/kmeans/datasets?project=team-b", headers=bearer(grant))
    assert listed.status_code == 200 and listed.json()["total"] == 0
    hidden = problem(world.client.get(f"/kmeans/datasets/{dataset}", headers=bearer(grant, "team-b")), 404)
    missing = problem(world.client.get("/kmeans/datasets/ds_0000000000000000", headers=bearer(grant, "team-b")), 404)
    assert hidden["detail"].replace(dataset, "<id>") == missing["detail"].replace("ds_0000000000000000", "<id>")
    seen = world.client.get(f"/kmeans/datasets/{dataset}", headers=bearer(grant, "team-a"))
    assert seen.status_code == 200
    me_b = world.client.get("/kmeans/me?project=team-b", headers=bearer(grant)).json()
    assert (me_b["role"], me_b["project"]) == ("guest", "team-b")


def test_a_project_the_user_is_not_a_member_of_is_403_and_two_different_names_are_400(world: World):
    world.user("ada", [{"project": "team-a", "role": "contributor"}])
    grant = world.sign_in("ada")
    refused = problem(world.client.get("/kmeans/datasets?project=team-b", headers=bearer(grant)), 403)
    assert "not a member of project 'team-b'" in refused["detail"]
    both = world.client.get("/kmeans/datasets?project=team-a", headers=bearer(grant, "team-b"))
    assert "several projects" in problem(both, 400)["detail"]


def test_a_user_without_projects_sees_only_itself(world: World):
    world.user("ada")
    grant = world.sign_in("ada")
    assert world.client.get("/kmeans/me", headers=bearer(grant)).json()["project_in_scope"] is False
    assert "member of no project" in problem(world.client.get("/kmeans/datasets", headers=bearer(grant)), 403)["detail"]


def test_a_removed_membership_or_user_is_refused_from_the_next_request_on(world: World):
    ada = world.user("ada", [{"project": "team-a", "role": "contributor"}, {"project": "team-b", "role": "guest"}])
    grant = world.sign_in("ada")
    assert world.client.get("/kmeans/datasets", headers=bearer(grant, "team-b")).status_code == 200
    world.client.patch(f"/kmeans/users/{ada['id']}", json={"memberships": [{"project": "team-a", "role": "guest"}]},
                       headers=world.admin)
    problem(world.client.get("/kmeans/datasets", headers=bearer(grant, "team-b")), 403)
    # Now a guest of its only project: may read, may not create.
    assert world.client.get("/kmeans/datasets", headers=bearer(grant)).status_code == 200
    problem(world.client.post("/kmeans/datasets", json={"data": POINTS}, headers=bearer(grant)), 403)
    world.client.delete(f"/kmeans/users/{ada['id']}", headers=world.admin)
    assert "revoked" in problem(world.client.get("/kmeans/me", headers=bearer(grant)), 401)["detail"]
    problem(world.client.post("/kmeans/auth/refresh", data={"refresh_token": grant["refresh_token"]}), 401)


def test_revocation_reaches_another_server_process_of_the_data_dir(world: World):
    """State is in the database: a second app over the same data dir refuses a signed-out token at once."""
    world.user("ada", [{"project": "team-a", "role": "guest"}])
    grant = world.sign_in("ada")
    other_app = build_app(Settings(data_dir=world.data_dir, max_concurrent_fits=1))
    with local_client(other_app) as other:
        assert other.get("/kmeans/me", headers=bearer(grant)).status_code == 200
        world.client.post("/kmeans/auth/logout", data={"refresh_token": grant["refresh_token"]})
        problem(other.get("/kmeans/me", headers=bearer(grant)), 401)


def test_admin_users_work_in_every_project_and_manage_users(world: World):
    world.user("root", admin=True)
    grant = world.sign_in("root")
    me = world.client.get("/kmeans/me", headers=bearer(grant)).json()
    assert (me["role"], me["project"]) == ("admin", None)
    made = world.client.post("/kmeans/datasets?project=team-b", json={"data": POINTS}, headers=bearer(grant))
    assert made.status_code == 201 and made.json()["project"] == "team-b"
    assert world.client.get("/kmeans/users", headers=bearer(grant)).json()["total"] == 1


def test_users_are_managed_by_admins_only(world: World):
    world.user("ada", [{"project": "team-a", "role": "contributor"}])
    grant = world.sign_in("ada")
    refused = problem(world.client.get("/kmeans/users", headers=bearer(grant)), 403)
    assert refused["detail"] == "user 'ada' (a contributor in team-a) may not do this; it needs the admin role"


def test_a_user_changes_its_own_password_and_its_other_sign_ins_end(world: World):
    world.user("ada", [{"project": "team-a", "role": "guest"}])
    here, elsewhere = world.sign_in("ada"), world.sign_in("ada")
    new = "staple lantern 42 orbit"
    weak = world.client.post("/kmeans/me/password", json={"current_password": PASSWORD, "new_password": "short"},
                             headers=bearer(here))
    assert "new_password must have at least 12" in problem(weak, 422)["detail"]
    wrong = world.client.post("/kmeans/me/password", json={"current_password": "not it at all", "new_password": new},
                              headers=bearer(here))
    assert "current_password" in problem(wrong, 403)["detail"]
    changed = world.client.post("/kmeans/me/password", json={"current_password": PASSWORD, "new_password": new},
                                headers=bearer(here))
    assert changed.status_code == 204
    assert world.client.get("/kmeans/me", headers=bearer(here)).status_code == 200
    problem(world.client.get("/kmeans/me", headers=bearer(elsewhere)), 401)
    problem(world.client.post("/kmeans/auth/token", data={"grant_type": "password", "username": "ada",
                                                          "password": PASSWORD}), 401)
    world.sign_in("ada", new)


def test_api_tokens_have_no_password_to_change(world: World):
    answer = world.client.post("/kmeans/me/password", json={"current_password": PASSWORD, "new_password": PASSWORD},
                               headers=world.admin)
    assert "API token" in problem(answer, 403)["detail"]


def test_the_first_user_turns_authentication_on(tmp_path: Path):
    app = build_app(Settings(data_dir=tmp_path / "data", max_concurrent_fits=1))
    with local_client(app) as client:
        assert client.get("/kmeans/me").json()["open"] is True
        body = {"name": "root", "password": PASSWORD, "admin": True}
        assert client.post("/kmeans/users", json=body).status_code == 201
        problem(client.get("/kmeans/datasets"), 401)
        grant = client.post(
            "/kmeans/auth/token", data={"grant_type": "password", "username": "root", "password": PASSWORD}
        ).json()
        assert client.get("/kmeans/datasets", headers=bearer(grant)).status_code == 200


def test_a_project_with_members_is_not_deleted(world: World):
    world.user("ada", [{"project": "team-b", "role": "guest"}])
    assert "members" in problem(world.client.delete("/kmeans/projects/team-b", headers=world.admin), 409)["detail"]


def test_no_token_or_password_is_logged(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    world.user("ada", [{"project": "team-a", "role": "guest"}])
    grant = world.sign_in("ada")
    world.client.get(f"/kmeans/datasets?access_token={grant['access_token']}", headers=bearer(grant))
    logging.getLogger("kmeans").info("presented %s and %s", grant["access_token"], grant["refresh_token"])
    for secret in (PASSWORD, grant["access_token"], grant["refresh_token"]):
        assert secret not in caplog.text


def test_the_first_admin_can_be_a_user_made_by_create_user(tmp_path: Path):
    data_dir = tmp_path / "data"
    Store(data_dir).add_project("team-a", "")
    made = subprocess.run(
        [sys.executable, "server.py", "create-user", "root", "--admin", "--data-dir", str(data_dir)],
        cwd=ROOT, input=PASSWORD + "\n", capture_output=True, text=True, timeout=120,
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith("usr_") and PASSWORD not in made.stdout + made.stderr
    weak = subprocess.run(
        [sys.executable, "server.py", "create-user", "ada", "--member", "team-a:contributor", "--data-dir",
         str(data_dir)], cwd=ROOT, input="short\n", capture_output=True, text=True, timeout=120,
    )
    assert weak.returncode == 1 and "password must have at least 12 characters" in weak.stderr
    with local_client(build_app(Settings(data_dir=data_dir, max_concurrent_fits=1))) as client:
        problem(client.get("/kmeans/datasets"), 401)  # a user exists: authentication is on
        grant = client.post(
            "/kmeans/auth/token", data={"grant_type": "password", "username": "root", "password": PASSWORD}
        ).json()
        assert client.get("/kmeans/me", headers=bearer(grant)).json()["role"] == "admin"
        assert client.get("/kmeans/users", headers=bearer(grant)).json()["total"] == 1


def test_the_project_header_counts_for_api_tokens_too(world: World):
    """X-Kmeans-Project is ?project= for every caller: an admin token creates there, a project token
    naming another project is refused (never silently served in its own)."""
    made = world.client.post("/kmeans/datasets", json={"data": POINTS},
                             headers={**world.admin, "X-Kmeans-Project": "team-b"})
    assert made.status_code == 201 and made.json()["project"] == "team-b"
    listed = world.client.get("/kmeans/datasets", headers={**world.admin, "X-Kmeans-Project": "team-a"})
    assert listed.json()["total"] == 0
    problem(world.client.post("/kmeans/datasets", json={"data": POINTS},
                              headers={**world.admin, "X-Kmeans-Project": "nowhere"}), 404)
    token = world.client.post("/kmeans/tokens", json={"role": "contributor", "project": "team-a"},
                              headers=world.admin).json()["token"]
    own = {"Authorization": f"Bearer {token}"}
    other = {**own, "X-Kmeans-Project": "team-b"}
    refused = world.client.post("/kmeans/datasets", json={"data": POINTS}, headers=other)
    assert "works in project 'team-a', not 'team-b'" in problem(refused, 403)["detail"]
    problem(world.client.get("/kmeans/datasets", headers={**own, "X-Kmeans-Project": "team-b"}), 403)
    assert world.client.get("/kmeans/datasets", headers={**own, "X-Kmeans-Project": "team-a"}).status_code == 200
