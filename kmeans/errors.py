"""Errors that carry their HTTP status; one handler turns them into problem documents."""

from __future__ import annotations

import errno
import sqlite3
from typing import Any


class ProblemError(Exception):
    """An error a client caused or can act on, rendered as ``application/problem+json``."""

    status = 500
    title = "Internal Server Error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = {k: v for k, v in extra.items() if v is not None}
        self.headers: dict[str, str] = {}

    def to_problem(self) -> dict[str, Any]:
        """The RFC 7807 body for this error."""
        return {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


class BadRequest(ProblemError):
    status, title = 400, "Bad Request"


class NotFound(ProblemError):
    status, title = 404, "Not Found"


class Conflict(ProblemError):
    status, title = 409, "Conflict"


class RequestTimeout(ProblemError):
    status, title = 408, "Request Timeout"


class PayloadTooLarge(ProblemError):
    status, title = 413, "Content Too Large"


class UnsupportedMediaType(ProblemError):
    status, title = 415, "Unsupported Media Type"


class Unprocessable(ProblemError):
    status, title = 422, "Unprocessable Content"


class FitFailed(ProblemError):
    status, title = 500, "Fit Failed"


class SweepFailed(ProblemError):
    status, title = 500, "Sweep Failed"


class EvaluationFailed(ProblemError):
    status, title = 500, "Evaluation Failed"
class ScoringFailed(ProblemError):
    status, title = 500, "Scoring Failed"


class DeliveryFailed(ProblemError):
    status, title = 502, "Webhook Delivery Failed"


class Unavailable(ProblemError):
    status, title = 503, "Service Unavailable"


class Unauthorized(ProblemError):
    """No token, or one that is unknown, revoked or expired; tells the client to use a bearer token."""

    status, title = 401, "Unauthorized"

    def __init__(self, detail: str, presented: bool = True, **extra: Any) -> None:
        super().__init__(detail, **extra)
        challenge = 'Bearer realm="kmeans"'
        if presented:  # RFC 6750: an error code only when a token was sent
            quoted = detail.replace("\\", "").replace('"', "'")
            challenge += f', error="invalid_token", error_description="{quoted}"'
        self.headers["WWW-Authenticate"] = challenge


class Forbidden(ProblemError):
    status, title = 403, "Forbidden"


class InsufficientStorage(ProblemError):
    status, title = 507, "Insufficient Storage"


OUT_OF_SPACE = (
    "the data dir is out of space, so nothing was stored; free some space (or raise its quota)"
    " and try again: what was stored before is intact"
)


def out_of_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) says the disk or quota is full: an OSError ENOSPC or
    EDQUOT, or SQLite's SQLITE_FULL ("database or disk is full")."""
    seen = 0
    while exc is not None and seen < 10:  # a bounded walk of the chain of causes
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.OperationalError) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
        ):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class TooManyRequests(ProblemError):
    """Too many attempts lately; ``Retry-After`` says in how many seconds to try again."""

    status, title = 429, "Too Many Requests"

    def __init__(self, detail: str, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.headers["Retry-After"] = str(retry_after)
