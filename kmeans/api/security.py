"""Bearer tokens at the HTTP edge: connexion checks them (``x-bearerInfoFunc`` in api.yaml),
these middlewares decide the caller of each request and whether its role may run the operation.

Order: ``AccessMiddleware`` (before connexion's security) hands the token check and the handlers the service;
connexion's security middleware calls :func:`token_info` for a bearer token; ``RoleMiddleware``
(after it, before validation, so a refused upload is never read) turns the outcome into a
:class:`~kmeans.access.Caller`, checks the role the operation needs (``x-kmeans-role``), and runs
the rest of the request as that caller.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from kmeans import access
from kmeans.api import SERVICE
from kmeans.errors import BadRequest, Forbidden, Unauthorized
from kmeans.service import KMeansService

ACCESS = "kmeans.access"  # scope key: the service's Access, for token_info
# Operations a signed-in user may run before naming a project (one of several, or none yet).
UNSCOPED = frozenset({"whoami", "change_password"})
_HEADER = access.PROJECT_HEADER.lower().encode()


def requested_project(scope: Scope) -> str | None:
    """The project a request names: ``?project=`` or the X-Kmeans-Project header (400 if they differ)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("project", [])
    header = [value.decode("latin-1").strip() for name, value in scope.get("headers", ()) if name == _HEADER]
    named = {value for value in (*query, *header) if value}
    if len(named) > 1:
        raise BadRequest(
            f"the request names several projects ({', '.join(sorted(named))}) in ?project= and"
            f" {access.PROJECT_HEADER}; name one",
            parameter="project",
        )
    return named.pop() if named else None


def malformed_header() -> Unauthorized:
    """The refusal of an Authorization header that is not ``Bearer <token>``."""
    return Unauthorized("the Authorization header is not 'Bearer <token>'")


def token_info(token: str, request: Any) -> dict[str, Any]:
    """connexion's bearer check: the caller of a valid token, or a 401 naming why not."""
    named = requested_project(request.scope)
    caller = dataclasses.replace(request.scope[ACCESS].resolve(token, named), named=named)
    return {"sub": caller.token_id or (caller.user or {}).get("id"), "caller": caller}


class AccessMiddleware:
    """Put the service, and its Access for the token check, into each request's scope."""

    def __init__(self, app: ASGIApp, service: KMeansService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SERVICE] = self.service
        scope[ACCESS] = self.service.access
        await self.app(scope, receive, send)


class RoleMiddleware:
    """Run each operation as its caller, if the caller's role may run it (403 otherwise)."""

    def __init__(self, app: ASGIApp, roles: dict[str, str]) -> None:
        self.app = app
        self.roles = roles  # operationId -> the least role that may run it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extensions = scope.get("extensions", {})
        operation = (extensions.get("connexion_routing", {}).get("operation_id") or "").rpartition(".")[2]
        needed = self.roles.get(operation)
        if needed is None:  # an operation open to all (the health check), or no operation (404/405)
            await self.app(scope, receive, send)
            return
        info = extensions.get("connexion_context", {}).get("token_info") or {}
        caller = info.get("caller") or self._anonymous(scope)
        if caller.unscoped:  # a user yet to name one of its projects: /me and its password only
            if operation not in UNSCOPED:
                scope[ACCESS].refuse_unscoped(caller)
        elif not caller.may(needed):
            who = f"user {caller.user['name']!r} (a {caller.role} in {caller.project})" if caller.user else None
            if who and caller.project is None:
                who = f"user {caller.user['name']!r}"
            raise Forbidden(
                f"{who or f'a {caller.role} token'} may not do this; it needs the {needed} role", role=caller.role
            )
        with access.acting_as(caller):
            await self.app(scope, receive, send)

    @staticmethod
    def _anonymous(scope: Scope) -> access.Caller:
        gate: access.Access = scope[ACCESS]
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                # Only reachable on a server that started open (tokens optional): a token was
                # sent but refused; say why instead of serving the request as the open user.
                kind, _, token = value.decode("latin-1").strip().partition(" ")
                if kind.lower() != "bearer" or not token.strip():
                    raise malformed_header()
                named = requested_project(scope)
                return dataclasses.replace(gate.resolve(token.strip(), named), named=named)
        client = scope.get("client")
        return gate.anonymous(client[0] if client else None)
