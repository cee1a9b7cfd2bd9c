"""/users (admins), /auth (sign-in, refresh, sign-out) and /me/password: people, not only tokens."""

from __future__ import annotations

from typing import Any

from connexion import context

from kmeans.api import media, service

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 5.1: token answers are never cached


def _client_host() -> str | None:
    client = context.scope.get("client")
    return client[0] if client else None


def create_user(body: dict) -> Any:
    """A new user; 201 with Location (its password is never shown)."""
    record = service().access.create_user(
        body["name"], body["password"], body.get("admin", False), body.get("memberships", [])
    )
    return media.json(record, 201, Location=media.location(record["id"]))


def list_users(offset: int = 0, limit: int = 100) -> Any:
    """A page of users."""
    return media.json(service().access.list_users(offset, limit))


def get_user(user_id: str) -> Any:
    """One user."""
    return media.json(service().access.get_user(user_id))


def update_user(user_id: str, body: dict) -> Any:
    """Change a user's admin flag, memberships or password."""
    record = service().access.update_user(
        user_id, body.get("admin"), body.get("memberships"), body.get("password")
    )
    return media.json(record)


def delete_user(user_id: str) -> Any:
    """Delete a user: its tokens are refused from the next request on."""
    service().access.delete_user(user_id)
    return media.no_content()


def change_password(body: dict) -> Any:
    """The signed-in user changes its own password."""
    service().access.change_password(body["current_password"], body["new_password"], _client_host())
    return media.no_content()


def sign_in(body: dict) -> Any:
    """OAuth2 password grant: an access and a refresh token for a name and a password."""
    grant = service().access.sign_in(body["username"], body["password"], _client_host())
    return media.json(grant, 200, **NO_STORE)


def refresh_token(body: dict) -> Any:
    """New access and refresh tokens for a refresh token (which is used up)."""
    return media.json(service().access.refresh(body["refresh_token"]), 200, **NO_STORE)


def sign_out(body: dict) -> Any:
    """End the sign-in of a refresh token."""
    service().access.sign_out(body["refresh_token"])
    return media.no_content()
