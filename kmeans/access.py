"""Who is calling and what they may do: roles, projects and bearer tokens.

A token is random, shown once when it is created and stored only as its SHA-256 (tokens
have 256 bits of entropy, so a slow password hash would add nothing). Each request runs
as one :class:`Caller`; the service reads it with :func:`current` to keep every project's
resources to itself. No web framework here: the HTTP layer sets the caller per request.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import numbers
import re
import secrets
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kmeans.errors import Conflict, Forbidden, NotFound, Unauthorized, Unprocessable
from kmeans.store import DEFAULT_PROJECT, Store, new_id
from kmeans.webhooks import SECRET_PREFIX as WEBHOOK_SECRET_PREFIX

ROLES = ("guest", "contributor", "admin")  # each may do everything the ones before it may
RANK = {role: rank for rank, role in enumerate(ROLES)}
TOKEN_PREFIX = "kms_"
PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Caller:
    """The identity a request runs as."""

    role: str
    project: str | None  # None: every project (admins, and the local user of an open server)
    token_id: str | None = None  # None: the local user of an open server
    expires_at: str | None = None

    def may(self, role: str) -> bool:
        """Whether this caller has ``role`` or a higher one."""
        return RANK.get(self.role, -1) >= RANK[role]

    def sees(self, project: str) -> bool:
        """Whether resources of ``project`` exist for this caller."""
        return self.project is None or self.project == project

    def home(self, requested: str | None) -> str:
        """The project a new resource goes to (``requested`` only if this caller works there)."""
        if self.project is None:
            return requested or DEFAULT_PROJECT
        if requested and requested != self.project:
            raise Forbidden(f"this token works in project {self.project!r}, not {requested!r}", parameter="project")
        return self.project

    def scope(self, requested: str | None) -> str | None:
        """The project a list is limited to (None: all of them)."""
        return self.home(requested) if self.project is not None or requested else None

    def describe(self) -> dict[str, Any]:
        """What ``GET /me`` shows."""
        return {
            "role": self.role,
            "project": self.project,
            "token_id": self.token_id,
            "expires_at": self.expires_at,
            "open": self.token_id is None,
        }


# The caller of code that runs outside any request sees nothing: a request path that forgot
# to set one fails closed (404s), never open.
NOBODY = Caller(role="none", project="")
OPEN = Caller(role="admin", project=None)
_current: ContextVar[Caller] = ContextVar("kmeans_caller", default=NOBODY)


def current() -> Caller:
    """The caller of the request being handled."""
    return _current.get()


@contextlib.contextmanager
def acting_as(caller: Caller) -> Iterator[Caller]:
    """Run the enclosed code as ``caller``."""
    token = _current.set(caller)
    try:
        yield caller
    finally:
        _current.reset(token)


def visible(record: dict[str, Any] | None, kind: str, resource_id: Any) -> dict[str, Any]:
    """``record`` if the caller may see it; another project's resource is as missing as an unknown one."""
    if record is None or not current().sees(record.get("project", DEFAULT_PROJECT)):
        raise NotFound(f"no {kind} with id {resource_id}")
    return record


def digest(secret: str) -> str:
    """What is stored of a token."""
    return hashlib.sha256(secret.encode()).hexdigest()


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def token_missing() -> Unauthorized:
    """The refusal of a request without a token by a server that requires one."""
    return Unauthorized("this server requires a bearer token (Authorization: Bearer ...)", presented=False)


# -- no secret in any log line -------------------------------------------------------------------
# What is taken out of every log record: bearer tokens (kms_...) and webhook signing secrets
# (whsec_...) wherever they appear; the credential of a ``Bearer``/``Basic`` value (not a plain
# word: "a bearer token", "basic configuration" are prose); the value of a secret-looking query or form parameter
# (``?access_token=``, ``token=``, ``api_key=``, ``secret=``, ``password=``, ...); and the
# password of a URL's user info. Idempotency keys and ids are not secrets and stay.
REDACTED = "[redacted]"
_SECRET_NAMES = r"[\w.-]*(?:token|secret|password|passwd|api[_-]?key|apikey|signature)"
_SECRETS = re.compile(
    rf"(?P<kms>{TOKEN_PREFIX})[A-Za-z0-9_-]+"
    rf"|(?P<whsec>{WEBHOOK_SECRET_PREFIX})[A-Za-z0-9+/=%_-]+"
    r"|(?P<scheme>\b(?i:bearer)\s+)(?!\.\.\.|<|[A-Za-z]{1,11}(?:[\s\"',;)\]}]|$))[^\s\"',;)\]}]+"
    r"|(?P<basic>\b(?i:basic)\s+)(?=[A-Za-z0-9+/]*(?:[0-9+/=]|[a-z][A-Z]))[A-Za-z0-9+/]{8,}=*"
    rf"|(?P<param>(?:^|(?<=[?&;\s]))(?i:{_SECRET_NAMES})=)[^&#\s\"']*"
    r"|(?P<userinfo>://[^/\s:@]+:)[^/\s@]+@"
)


def _redact_match(match: re.Match[str]) -> str:
    kept = next(value for value in match.groupdict().values() if value is not None)
    return f"{kept}{REDACTED}@" if match.group("userinfo") else f"{kept}{REDACTED}"


def redact(text: str) -> str:
    """``text`` with every secret it shows replaced by ``[redacted]``."""
    return _SECRETS.sub(_redact_match, text)


class _Redacted:
    """A log argument shown (``%s``, ``%r``, ``format``) with its secrets redacted, computed only
    when the record is formatted; numbers still format as numbers."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return redact(str(self.value))

    def __repr__(self) -> str:
        return redact(repr(self.value))

    def __format__(self, spec: str) -> str:
        return redact(format(self.value, spec))

    def __int__(self) -> int:
        return int(self.value)

    def __float__(self) -> float:
        return float(self.value)

    def __index__(self) -> int:
        return self.value.__index__()


def _redacted_arg(value: Any) -> Any:
    if value is None or isinstance(value, numbers.Number):
        return value
    if isinstance(value, str):
        return redact(value)
    return _Redacted(value)


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Take the secrets out of a record's message, arguments, traceback and stack (in place)."""
    record.msg = _redacted_arg(record.msg)
    if isinstance(record.args, Mapping):
        record.args = {key: _redacted_arg(value) for key, value in record.args.items()}
    elif isinstance(record.args, tuple):
        record.args = tuple(_redacted_arg(value) for value in record.args)
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        if redact(text) != text:
            record.exc_text = redact(text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def install_log_redaction() -> None:
    """Make every log record of this process (any logger, any handler: uvicorn's and gunicorn's
    access and error logs, connexion's, ours, and Python's last-resort stderr) secret-free as it
    is made. Idempotent; wraps whatever record factory is installed."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts_secrets", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(previous(*args, **kwargs))

    factory.redacts_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _public_token(record: dict[str, Any]) -> dict[str, Any]:
    status = "active"
    if record["revoked_at"]:
        status = "revoked"
    elif _expired(record):
        status = "expired"
    fields = ("id", "name", "role", "project", "created_at", "expires_at", "revoked_at")
    return {**{k: record[k] for k in fields}, "status": status}


def _expired(record: dict[str, Any]) -> bool:
    return bool(record["expires_at"]) and datetime.fromisoformat(record["expires_at"]) <= datetime.now(UTC)


class Access:
    """Projects, tokens, and the check of a presented token, over one store."""

    def __init__(self, store: Store, required: bool = False, insecure: bool = False) -> None:
        self.store = store
        self.insecure = insecure
        self._required = required

    def required(self) -> bool:
        """Whether requests need a token: asked for in the settings, or once any token exists here."""
        if not self._required and self.store.has_tokens():
            self._required = True  # tokens are never deleted, only revoked: this stays true
        return self._required

    # -- requests ---------------------------------------------------------------------------

    def resolve(self, secret: str) -> Caller:
        """The caller a presented token stands for; 401 naming why it is refused."""
        record = self.store.token_by_hash(digest(secret))
        if record is None:
            raise Unauthorized("the bearer token is not valid")
        if record["revoked_at"]:
            raise Unauthorized("the bearer token was revoked")
        if _expired(record):
            raise Unauthorized("the bearer token has expired")
        return Caller(record["role"], record["project"], record["id"], record["expires_at"])

    def still_valid(self, caller: Caller) -> bool:
        """Whether ``caller``'s token is still neither revoked nor expired (long streams ask now and then)."""
        if caller.token_id is None:
            return True
        record = self.store.get_token(caller.token_id)
        return record is not None and not record["revoked_at"] and not _expired(record)

    def anonymous(self, client_host: str | None) -> Caller:
        """The caller of a request without a token: the local user of an open server, or 401/403."""
        if self.required():
            raise token_missing()
        if not self.insecure and not is_loopback(client_host):
            raise Forbidden(
                "this server has no tokens yet and so serves only clients on its own machine;"
                " create one with `python server.py create-token --role admin`"
            )
        return OPEN

    def home(self, requested: str | None) -> str:
        """The project the caller's new resource goes to: 403 for a project token naming another,
        404 for an admin naming one that does not exist."""
        project = current().home(requested)
        if requested and self.store.get_project(project) is None:
            raise NotFound(f"no project with id {project}", parameter="project")
        return project

    # -- projects ---------------------------------------------------------------------------

    def create_project(self, project_id: str, description: str = "") -> dict[str, Any]:
        """A new, empty project."""
        if not PROJECT_NAME.match(project_id):
            raise Unprocessable(
                f"project id {project_id!r} must be 1-63 lower-case letters, digits, '-' or '_'", parameter="id"
            )
        return self.store.add_project(project_id, description)

    def get_project(self, project_id: str) -> dict[str, Any]:
        """One project."""
        record = self.store.get_project(project_id)
        if record is None:
            raise NotFound(f"no project with id {project_id}")
        return record

    def list_projects(self, offset: int, limit: int) -> dict[str, Any]:
        """A page of projects."""
        items, total = self.store.list_projects(offset, limit)
        return {"items": items, "offset": offset, "limit": limit, "total": total}

    def delete_project(self, project_id: str) -> None:
        """Delete an empty project."""
        if project_id == DEFAULT_PROJECT:
            raise Conflict("the default project cannot be deleted; resources go there when no project is named")
        if not self.store.delete_project(project_id):
            raise NotFound(f"no project with id {project_id}")

    # -- tokens -----------------------------------------------------------------------------

    def create_token(
        self, role: str, project: str | None = None, name: str | None = None, expires_in: int | None = None
    ) -> tuple[dict[str, Any], str]:
        """A new token: (its public record, the secret, which is never available again)."""
        if role not in RANK:
            raise Unprocessable(f"role must be one of {', '.join(ROLES)}, not {role!r}", parameter="role")
        if role == "admin":
            if project:
                raise Unprocessable("admin tokens work in every project; leave project out", parameter="project")
            project = None
        else:
            project = project or DEFAULT_PROJECT
            self.get_project(project)  # 404 for an unknown project
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(UTC)
        record = {
            "id": new_id("tok"),
            "name": name or f"{role} token",
            "role": role,
            "project": project,
            "hash": digest(secret),
            "created_at": created.isoformat(),
            "expires_at": (created + timedelta(seconds=expires_in)).isoformat() if expires_in else None,
            "revoked_at": None,
        }
        self.store.add_token(record)
        self._required = True
        return _public_token(record), secret

    def get_token(self, token_id: str) -> dict[str, Any]:
        """One token's record (never its secret)."""
        record = self.store.get_token(token_id)
        if record is None:
            raise NotFound(f"no token with id {token_id}")
        return _public_token(record)

    def list_tokens(self, offset: int, limit: int, project: str | None = None) -> dict[str, Any]:
        """A page of tokens (never their secrets)."""
        items, total = self.store.list_tokens(offset, limit, project)
        return {"items": [_public_token(t) for t in items], "offset": offset, "limit": limit, "total": total}

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke a token; it is refused from the next request on."""
        record = self.store.revoke_token(token_id)
        if record is None:
            raise NotFound(f"no token with id {token_id}")
        return _public_token(record)

