"""/projects, /tokens and /me: who may do what (admins manage projects and tokens)."""

from __future__ import annotations

from typing import Any

from kmeans import access
from kmeans.api import media, service


def whoami() -> Any:
    """The caller of this request: role, project, token."""
    return media.json(access.current().describe())


def create_project(body: dict) -> Any:
    """A new, empty project; 201 with Location."""
    record = service().access.create_project(body["id"], body.get("description", ""))
    return media.json(record, 201, Location=media.location(record["id"]))


def list_projects(offset: int = 0, limit: int = 100) -> Any:
    """A page of projects."""
    return media.json(service().access.list_projects(offset, limit))


def get_project(project_id: str) -> Any:
    """One project."""
    return media.json(service().access.get_project(project_id))


def delete_project(project_id: str) -> Any:
    """Delete an empty project."""
    service().access.delete_project(project_id)
    return media.no_content()


def create_token(body: dict) -> Any:
    """A new token; the only response that ever holds its secret."""
    record, secret = service().access.create_token(
        body["role"], body.get("project"), body.get("name"), body.get("expires_in")
    )
    headers = {"Location": media.location(record["id"]), "Cache-Control": "no-store"}
    return media.json({**record, "token": secret}, 201, **headers)


def list_tokens(offset: int = 0, limit: int = 100, project: str | None = None) -> Any:
    """A page of tokens, without their secrets."""
    return media.json(service().access.list_tokens(offset, limit, project))


def get_token(token_id: str) -> Any:
    """One token, without its secret."""
    return media.json(service().access.get_token(token_id))


def revoke_token(token_id: str) -> Any:
    """Revoke a token: refused from the next request on."""
    return media.json(service().access.revoke_token(token_id))
