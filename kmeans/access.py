"""Who is calling and what they may do: roles, projects, bearer tokens and users.

A token is random, shown once when it is created and stored only as its SHA-256 (tokens
have 256 bits of entropy, so a slow password hash would add nothing). Users sign in with a
password (stored as an argon2id hash) and get a short-lived access token and a refresh token,
both random and stored as SHA-256 like API tokens; each request of a user acts in one of its
projects with that membership's role. Either way each request runs as one :class:`Caller`;
the service reads it with :func:`current` to keep every project's resources to itself. No web
framework here: the HTTP layer sets the caller per request.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import math
import numbers
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from kmeans.errors import BadRequest, Conflict, Forbidden, NotFound, TooManyRequests, Unauthorized, Unprocessable
from kmeans.store import DEFAULT_PROJECT, Store, new_id
from kmeans.webhooks import SECRET_PREFIX as WEBHOOK_SECRET_PREFIX

ROLES = ("guest", "contributor", "admin")  # each may do everything the ones before it may
RANK = {role: rank for rank, role in enumerate(ROLES)}
TOKEN_PREFIX = "kms_"
ACCESS_PREFIX = "kma_"  # a signed-in user's access token
REFRESH_PREFIX = "kmr_"  # and its refresh token
PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,62}$")
MEMBER_ROLES = ("guest", "contributor")  # admin is a user's flag, not a role in a project
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # hashing is slow on purpose: a bound keeps huge passwords from costing more
# Failed sign-ins allowed within the window, per user name and per client address (429 beyond).
FAILURE_WINDOW = 900
MAX_USER_FAILURES = 5
MAX_ADDRESS_FAILURES = 20
PROJECT_HEADER = "X-Kmeans-Project"


@dataclass(frozen=True)
class Caller:
    """The identity a request runs as."""

    role: str
    project: str | None  # None: every project (admins, and the local user of an open server)
    token_id: str | None = None  # None: the local user of an open server, or a signed-in user
    expires_at: str | None = None
    user: dict[str, Any] | None = field(default=None, compare=False)  # a signed-in user (public record)
    session_id: str | None = None  # the sign-in of a user's access token
    unscoped: str | None = None  # why a user's request has no project (several or none): /me only
    # The project the request names in the X-Kmeans-Project header (or ?project=): what an
    # operation without a ?project= parameter creates in or lists, for every kind of caller.
    named: str | None = field(default=None, compare=False)

    def may(self, role: str) -> bool:
        """Whether this caller has ``role`` or a higher one."""
        return RANK.get(self.role, -1) >= RANK[role]

    def sees(self, project: str) -> bool:
        """Whether resources of ``project`` exist for this caller."""
        return self.project is None or self.project == project

    def home(self, requested: str | None) -> str:
        """The project a new resource goes to (``requested`` only if this caller works there)."""
        requested = requested or self.named
        if self.project is None:
            return requested or DEFAULT_PROJECT
        if requested and requested != self.project:
            who = "this user is signed in to" if self.user else "this token works in"
            raise Forbidden(f"{who} project {self.project!r}, not {requested!r}", parameter="project")
        return self.project

    def scope(self, requested: str | None) -> str | None:
        """The project a list is limited to (None: all of them)."""
        requested = requested or self.named
        return self.home(requested) if self.project is not None or requested else None

    def describe(self) -> dict[str, Any]:
        """What ``GET /me`` shows."""
        me = {
            "role": None if self.unscoped else self.role,
            "project": None if self.unscoped else self.project,
            "token_id": self.token_id,
            "expires_at": self.expires_at,
            "open": self.token_id is None and self.user is None,
        }
        if self.user is not None:
            me["user"] = self.user
            me["project_in_scope"] = not self.unscoped
        return me


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
# What is taken out of every log record: bearer tokens (kms_..., kma_..., kmr_...) and webhook signing secrets
# (whsec_...) wherever they appear; the credential of a ``Bearer``/``Basic`` value (not a plain
# word: "a bearer token", "basic configuration" are prose); the value of a secret-looking query or form parameter
# (``?access_token=``, ``token=``, ``api_key=``, ``secret=``, ``password=``, ...); and the
# password of a URL's user info. Idempotency keys and ids are not secrets and stay.
REDACTED = "[redacted]"
_SECRET_NAMES = r"[\w.-]*(?:token|secret|password|passwd|api[_-]?key|apikey|signature)"
_SECRETS = re.compile(
    rf"(?P<kms>{TOKEN_PREFIX}|{ACCESS_PREFIX}|{REFRESH_PREFIX})[A-Za-z0-9_-]+"
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


def public_user(record: dict[str, Any]) -> dict[str, Any]:
    """What is shown of a user: never its password hash."""
    fields = ("id", "name", "admin", "memberships", "created_at", "updated_at")
    return {k: record[k] for k in fields}


_HASHER = PasswordHasher()  # argon2id with the library's (RFC 9106) parameters
_DUMMY: list[str] = []
_DUMMY_LOCK = threading.Lock()


def _dummy_hash() -> str:
    """A hash of no user's password, verified against for unknown names so they cost what known ones do."""
    with _DUMMY_LOCK:
        if not _DUMMY:
            _DUMMY.append(_HASHER.hash(secrets.token_urlsafe(16)))
        return _DUMMY[0]


def hash_password(password: str) -> str:
    """The argon2id hash of a password."""
    return _HASHER.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    """Whether ``password`` is the one ``password_hash`` was made of."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def check_password(password: str, name: str, parameter: str = "password") -> None:
    """422 naming ``parameter`` unless the password is long enough and not the user's name."""
    if len(password) < MIN_PASSWORD:
        raise Unprocessable(f"{parameter} must have at least {MIN_PASSWORD} characters", parameter=parameter)
    if len(password) > MAX_PASSWORD:
        raise Unprocessable(f"{parameter} must have at most {MAX_PASSWORD} characters", parameter=parameter)
    if password.lower() == name.lower() or len(set(password)) < 4:
        raise Unprocessable(
            f"{parameter} is too weak: not the user's name, and at least 4 different characters", parameter=parameter
        )


def _later(seconds: int) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


class Access:
    """Projects, tokens, and the check of a presented token, over one store."""

    def __init__(
        self,
        store: Store,
        required: bool = False,
        insecure: bool = False,
        access_ttl: int = 900,
        refresh_ttl: int = 30 * 86400,
    ) -> None:
        self.store = store
        self.insecure = insecure
        self._required = required
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def required(self) -> bool:
        """Whether requests need a token: asked for in the settings, or once any token or user exists here."""
        if not self._required and (self.store.has_tokens() or self.store.has_users()):
            self._required = True  # tokens are never deleted, only revoked: this stays true
        return self._required

    # -- requests ---------------------------------------------------------------------------

    def resolve(self, secret: str, project: str | None = None) -> Caller:
        """The caller a presented token stands for (a user's: in ``project``); 401 naming why it is refused."""
        if secret.startswith(ACCESS_PREFIX):
            return self._user_caller(secret, project)
        record = self.store.token_by_hash(digest(secret))
        if record is None:
            raise Unauthorized("the bearer token is not valid")
        if record["revoked_at"]:
            raise Unauthorized("the bearer token was revoked")
        if _expired(record):
            raise Unauthorized("the bearer token has expired")
        return Caller(record["role"], record["project"], record["id"], record["expires_at"])

    def _user_caller(self, secret: str, project: str | None) -> Caller:
        row = self.store.session_token(digest(secret), "access")
        if row is None:
            raise Unauthorized("the bearer token is not valid")
        if row["revoked_at"]:
            raise Unauthorized(f"the bearer token was revoked ({row['revoked_because']}); sign in again")
        if _expired(row):
            raise Unauthorized("the bearer token has expired; refresh it (POST /auth/refresh) or sign in again")
        user = self.store.get_user(row["user_id"])
        if user is None:
            raise Unauthorized("the bearer token was revoked (the user was deleted)")
        return self.scoped(user, row["session_id"], row["expires_at"], project)

    @staticmethod
    def scoped(user: dict[str, Any], session_id: str | None, expires_at: str | None, project: str | None) -> Caller:
        """A user's caller in ``project`` (its only one when not named): that membership's role."""
        shown = public_user(user)
        if user["admin"]:
            return Caller("admin", None, None, expires_at, shown, session_id)
        roles = {m["project"]: m["role"] for m in user["memberships"]}
        if project:
            if project not in roles:
                raise Forbidden(f"user {user['name']!r} is not a member of project {project!r}", parameter="project")
            return Caller(roles[project], project, None, expires_at, shown, session_id)
        if len(roles) == 1:
            (only, role), = roles.items()
            return Caller(role, only, None, expires_at, shown, session_id)
        why = (
            f"user {user['name']!r} works in several projects ({', '.join(sorted(roles))}): name one with"
            f" ?project= or the {PROJECT_HEADER} header"
            if roles
            else f"user {user['name']!r} is a member of no project yet; an admin adds memberships (PATCH /users/{{id}})"
        )
        return Caller("none", "", None, expires_at, shown, session_id, unscoped=why)

    def refuse_unscoped(self, caller: Caller) -> None:
        """The refusal of a user's request that acts in no project: 400 (which one?) or 403 (none)."""
        if caller.unscoped:
            error = BadRequest if "several" in caller.unscoped else Forbidden
            raise error(caller.unscoped, parameter="project")

    def still_valid(self, caller: Caller) -> bool:
        """Whether ``caller``'s token is still neither revoked nor expired (long streams ask now and then)."""
        if caller.session_id is not None and caller.user is not None:
            session = self.store.get_session(caller.session_id)
            user = self.store.get_user(caller.user["id"])
            if session is None or session["revoked_at"] or user is None or _expired({"expires_at": caller.expires_at}):
                return False
            try:  # the same user, project and role as when the stream began
                return self.scoped(user, caller.session_id, caller.expires_at, caller.project or None) == caller
            except Forbidden:
                return False
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
        requested = requested or current().named  # the X-Kmeans-Project header, when ?project= is not given
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


    # -- users ------------------------------------------------------------------------------

    def _memberships(self, memberships: list[dict[str, Any]] | None) -> list[dict[str, str]]:
        """Checked memberships: 422 naming an unknown project or role, or a project named twice."""
        checked: list[dict[str, str]] = []
        for i, member in enumerate(memberships or []):
            project, role = member.get("project"), member.get("role")
            if role not in MEMBER_ROLES:
                raise Unprocessable(
                    f"memberships[{i}].role must be one of {', '.join(MEMBER_ROLES)}, not {role!r}"
                    " (admins are users with admin: true)",
                    parameter=f"memberships[{i}].role",
                )
            if not isinstance(project, str) or self.store.get_project(project) is None:
                raise Unprocessable(
                    f"memberships[{i}].project: no project with id {project}", parameter=f"memberships[{i}].project"
                )
            if any(c["project"] == project for c in checked):
                raise Unprocessable(
                    f"memberships[{i}].project: project {project!r} is named twice",
                    parameter=f"memberships[{i}].project",
                )
            checked.append({"project": project, "role": role})
        return checked

    def create_user(
        self, name: str, password: str, admin: bool = False, memberships: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """A new user; its password is kept only as an argon2id hash."""
        if not USER_NAME.match(name):
            raise Unprocessable(
                f"name {name!r} must be 1-63 letters, digits, '.', '_', '@' or '-', starting with a letter or digit",
                parameter="name",
            )
        check_password(password, name)
        checked = self._memberships(memberships)
        created = datetime.now(UTC).isoformat()
        record = {"id": new_id("usr"), "name": name, "admin": bool(admin), "created_at": created}
        self.store.add_user({**record, "password_hash": hash_password(password)}, checked)
        self._required = True
        return self.get_user(record["id"])

    def get_user(self, user_id: str) -> dict[str, Any]:
        """One user (never its password hash)."""
        record = self.store.get_user(user_id)
        if record is None:
            raise NotFound(f"no user with id {user_id}")
        return public_user(record)

    def list_users(self, offset: int, limit: int) -> dict[str, Any]:
        """A page of users."""
        items, total = self.store.list_users(offset, limit)
        return {"items": [public_user(u) for u in items], "offset": offset, "limit": limit, "total": total}

    def update_user(
        self,
        user_id: str,
        admin: bool | None = None,
        memberships: list[dict[str, Any]] | None = None,
        password: str | None = None,
    ) -> dict[str, Any]:
        """Change a user's admin flag, memberships (all of them) or password; from its next request on."""
        record = self.store.get_user(user_id)
        if record is None:
            raise NotFound(f"no user with id {user_id}")
        if password is not None:
            check_password(password, record["name"])
        checked = self._memberships(memberships) if memberships is not None else None
        hashed = hash_password(password) if password is not None else None
        if not self.store.update_user(user_id, admin, hashed, checked):
            raise NotFound(f"no user with id {user_id}")
        if password is not None:  # a password reset by an admin ends the user's sign-ins
            self.store.revoke_other_sessions(user_id, None, "the password was changed")
        return self.get_user(user_id)

    def delete_user(self, user_id: str) -> None:
        """Delete a user; its tokens are refused from the next request on."""
        if not self.store.delete_user(user_id):
            raise NotFound(f"no user with id {user_id}")

    def change_password(self, current_password: str, new_password: str, client_host: str | None) -> None:
        """The caller (a user) changes its own password; its other sign-ins end."""
        caller = current()
        if caller.user is None:
            raise Forbidden("only a signed-in user has a password; this request uses an API token", role=caller.role)
        record = self.store.get_user(caller.user["id"])
        if record is None:
            raise Unauthorized("the bearer token was revoked (the user was deleted)")
        keys = self._failure_keys(record["name"], client_host)
        self._check_failures(keys)
        if not password_matches(record["password_hash"], current_password):
            self._failed(keys)
            raise Forbidden("current_password is not this user's password", parameter="current_password")
        check_password(new_password, record["name"], "new_password")
        self.store.update_user(record["id"], None, hash_password(new_password), None)
        self.store.revoke_other_sessions(record["id"], caller.session_id, "the password was changed")

    # -- sign-in ----------------------------------------------------------------------------

    @staticmethod
    def _failure_keys(name: str, client_host: str | None) -> list[str]:
        return [f"user:{name.lower()}", f"addr:{client_host or 'unknown'}"]

    def _check_failures(self, keys: list[str]) -> None:
        """429 with Retry-After while a user name or a client address has failed too often lately."""
        now = time.time()
        found = self.store.sign_in_failures(keys, now - FAILURE_WINDOW)
        for key, bound in zip(keys, (MAX_USER_FAILURES, MAX_ADDRESS_FAILURES), strict=True):
            count, oldest = found.get(key, (0, now))
            if count >= bound:
                what = "this user" if key.startswith("user:") else "this client address"
                wait = max(1, math.ceil(oldest + FAILURE_WINDOW - now))
                raise TooManyRequests(
                    f"too many failed sign-ins for {what} ({count} in {FAILURE_WINDOW // 60} minutes);"
                    f" try again in {wait} s",
                    retry_after=wait,
                )

    def _failed(self, keys: list[str]) -> None:
        now = time.time()
        self.store.add_sign_in_failure(keys, now, now - FAILURE_WINDOW)

    def sign_in(self, name: str, password: str, client_host: str | None) -> dict[str, Any]:
        """Access and refresh tokens for a user's name and password; the same 401 for a wrong password
        and an unknown name, 429 after too many failures."""
        keys = self._failure_keys(name, client_host)
        self._check_failures(keys)
        record = self.store.user_by_name(name) if USER_NAME.match(name) else None
        # An unknown name costs one hash verification too: its answer and its time are a wrong password's.
        matches = password_matches(record["password_hash"] if record else _dummy_hash(), password)
        if record is None or not matches:
            self._failed(keys)
            raise Unauthorized("the user name or password is wrong", presented=False)
        self.store.clear_sign_in_failures(keys[0])
        if _HASHER.check_needs_rehash(record["password_hash"]):  # parameters raised since it was hashed
            self.store.update_user(record["id"], None, hash_password(password), None)
        session_id = new_id("ses")
        grant, tokens = self._tokens(session_id)
        self.store.add_session(session_id, record["id"], tokens)
        return grant

    def _tokens(self, session_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A new access and refresh token of a sign-in: (the grant to answer, the records to store)."""
        access_token = ACCESS_PREFIX + secrets.token_urlsafe(32)
        refresh_token = REFRESH_PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat()
        tokens = [
            {"hash": digest(secret), "session_id": session_id, "kind": kind, "created_at": created,
             "expires_at": _later(ttl)}
            for secret, kind, ttl in (
                (access_token, "access", self.access_ttl), (refresh_token, "refresh", self.refresh_ttl),
            )
        ]
        grant = {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": self.access_ttl,
            "refresh_token": refresh_token,
            "refresh_expires_in": self.refresh_ttl,
        }
        return grant, tokens

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        """New access and refresh tokens for a refresh token, which is then used up; a second use of
        one revokes every token of its sign-in."""
        row = self.store.session_token(digest(refresh_token), "refresh")
        if row is None:
            raise Unauthorized("the refresh token is not valid", presented=False)
        if row["revoked_at"]:
            because = row["revoked_because"]
            raise Unauthorized(f"the refresh token was revoked ({because}); sign in again", presented=False)
        if row["used_at"] is None and _expired(row):
            raise Unauthorized("the refresh token has expired; sign in again", presented=False)
        if self.store.get_user(row["user_id"]) is None:
            raise Unauthorized("the refresh token was revoked (the user was deleted)", presented=False)
        grant, tokens = self._tokens(row["session_id"])
        outcome = self.store.rotate_refresh(digest(refresh_token), tokens)
        if outcome == "reused":
            raise Unauthorized(
                "the refresh token was used already, so every token of its sign-in is now revoked; sign in again",
                presented=False,
            )
        if outcome != "rotated":
            raise Unauthorized(f"the refresh token is {outcome}; sign in again", presented=False)
        return grant

    def sign_out(self, refresh_token: str) -> None:
        """End the sign-in of a refresh token: its access and refresh tokens are refused from the next request on."""
        row = self.store.session_token(digest(refresh_token), "refresh")
        if row is None:
            raise Unauthorized("the refresh token is not valid", presented=False)
        self.store.revoke_session(row["session_id"], "signed out")
