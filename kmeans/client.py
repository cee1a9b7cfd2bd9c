"""A small Python client for kmeans-service, on httpx.

    from kmeans.client import KMeansClient, NotFound

    with KMeansClient("http://127.0.0.1:8080", token="kms_…") as km:   # or set KMEANS_TOKEN
        dataset = km.create_dataset("examples/model.csv")        # a path streams the file
        model = km.create_model(dataset["id"], {"n_clusters": 2, "random_state": 0})
        model = km.wait_for_model(model["id"], timeout=60)
        km.labels(model["id"]), km.centers(model["id"])["centers"]
        km.predict(model["id"], [[0, 0], [12, 3]])               # rows, or a CSV path / file

Every method returns the server's JSON (dicts and lists). An answer with a 4xx or 5xx status
raises an ``ApiError`` subclass carrying ``.status``, ``.problem`` (the problem document) and
``.detail``; a server that cannot be reached raises ``CannotConnect``. Files are never read
whole: they are sent in chunks, and ``progress(sent, total)`` is called after each chunk.

Every request carries ``Authorization: Bearer <token>``: the ``token`` given, else the
``KMEANS_TOKEN`` environment variable (a server without tokens serves local clients without
one). A missing, unknown, revoked or expired token raises ``Unauthorized`` (401), a role that
may not act ``Forbidden`` (403). The token is never part of a repr or an error message.

A person signs in instead: ``km.sign_in("ada", password)`` (or ``KMeansClient(url,
refresh_token=…)`` with a refresh token kept from an earlier sign-in). The client then sends
the short-lived access token and refreshes it transparently: before it expires, and once when
a request is refused with 401 (for requests whose body can be sent again). Each refresh rotates
the refresh token; ``on_refresh(grant)`` is called with every new grant so that a caller can
keep the new refresh token. ``project=`` (the ``X-Kmeans-Project`` header) chooses which of a
user's projects requests act in.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import quote

import httpx
import httpx_sse

CHUNK_BYTES = 256 * 1024
DEFAULT_TIMEOUT = 30.0
ACTIVE = ("queued", "running")
TOKEN_ENV = "KMEANS_TOKEN"
PROJECT_HEADER = "X-Kmeans-Project"
REFRESH_MARGIN = 30.0  # seconds before an access token expires that it is refreshed
Progress = Callable[[int, "int | None"], None]


class Event(NamedTuple):
    """One Server-Sent Event: its ``event`` name (``model``, ``sweep``, ``job``), ``id`` (for
    ``last_event_id``) and ``data`` (the JSON it carries)."""

    event: str
    id: str | None
    data: Any


class KMeansError(Exception):
    """Base of every error this client raises."""


class CannotConnect(KMeansError):
    """The server could not be reached (refused, unknown host, timed out, cut off)."""

    def __init__(self, url: str, reason: Exception) -> None:
        super().__init__(f"cannot connect to {url}: {reason or type(reason).__name__}")
        self.url = url
        self.reason = reason


class ApiError(KMeansError):
    """The server answered with a 4xx or 5xx status; ``problem`` is its problem document."""

    status: int = 0

    def __init__(self, status: int, problem: dict[str, Any], response: httpx.Response | None = None) -> None:
        self.status = status
        self.problem = problem
        self.detail: str = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        self.response = response
        super().__init__(f"{status}: {self.detail}")


class BadRequest(ApiError):
    """400: the request does not match the API (the detail names the parameter)."""


class InvalidToken(KMeansError, ValueError):
    """The token given (or in KMEANS_TOKEN) cannot be sent in an HTTP header; raised before any request."""


class Unauthorized(ApiError):
    """401: no bearer token, or one that is unknown, revoked or expired (the detail says which)."""


class Forbidden(ApiError):
    """403: the token's role may not do this, or may not name that project."""


class NotFound(ApiError):
    """404: no such dataset, model or upload."""


class Conflict(ApiError):
    """409: the resource is not in a state that allows this (a model not fitted yet, ...)."""


class PayloadTooLarge(ApiError):
    """413: the body is larger than the server's limit."""


class UnsupportedMediaType(ApiError):
    """415: a content type the operation does not take."""


class Unprocessable(ApiError):
    """422: data that cannot be used (the detail names the row and column)."""


class TooManyRequests(ApiError):
    """429: too many failed sign-ins lately; ``retry_after`` is how many seconds to wait."""

    @property
    def retry_after(self) -> int | None:
        """The server's Retry-After, in seconds."""
        value = self.response.headers.get("retry-after") if self.response is not None else None
        return int(value) if value and value.isdigit() else None


class ServerError(ApiError):
    """5xx."""


ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: Unprocessable,
    429: TooManyRequests,
}


def error_for(response: httpx.Response) -> ApiError:
    """The ApiError for a 4xx/5xx response, with its problem document (or one made up from the body)."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = response.text.strip()[:500]
        problem = {"status": response.status_code, "title": response.reason_phrase, "detail": text or None}
    status = response.status_code
    cls = ERRORS.get(status, ServerError if status >= 500 else ApiError)
    return cls(status, problem, response)


def _chunks(handle: IO[bytes], total: int | None, progress: Progress | None) -> Iterator[bytes]:
    sent = 0
    if progress is not None:
        progress(0, total)
    while chunk := handle.read(CHUNK_BYTES):
        sent += len(chunk)
        yield chunk
        if progress is not None:
            progress(sent, total)


class _ProgressReader:
    """A read-only file wrapper that reports how much has been read (httpx reads multipart files in chunks)."""

    def __init__(self, handle: IO[bytes], total: int | None, progress: Progress | None) -> None:
        self._handle = handle
        self._total = total
        self._progress = progress
        self._sent = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._sent += len(chunk)
        if self._progress is not None:
            self._progress(self._sent, self._total)
        return chunk

    def __getattr__(self, name: str) -> Any:  # fileno, tell, seek, name: for httpx's length probe
        return getattr(self._handle, name)


def _size(handle: IO[bytes]) -> int | None:
    """Bytes left to read in ``handle``, when it can tell."""
    try:
        return os.fstat(handle.fileno()).st_size - handle.tell()
    except (AttributeError, OSError, ValueError):
        return None


def _checked_token(token: str | None) -> str | None:
    """``token`` without surrounding whitespace, or None for none; InvalidToken (not naming it) if unsendable."""
    token = (token or "").strip()
    if not token:
        return None
    if not all("!" <= c <= "~" for c in token):  # visible ASCII: what a bearer token is made of
        raise InvalidToken("the bearer token has spaces, control or non-ASCII characters; is it the right value?")
    return token


class KMeansClient:
    """The kmeans-service API at ``url`` (the server's root, e.g. ``http://127.0.0.1:8080``).

    ``token`` is sent as ``Authorization: Bearer <token>`` on every request; when it is None
    the ``KMEANS_TOKEN`` environment variable is used, if set (pass ``token=""`` to send none).
    ``http`` may be an ``httpx.Client`` to send requests with (its own base URL is ignored
    when ``url`` is absolute); the client then does not close it. ``refresh_token`` (a user's,
    from ``sign_in``) makes the client get access tokens itself; ``on_refresh`` is called with
    each new grant; ``project`` is sent as ``X-Kmeans-Project``.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        timeout: float = DEFAULT_TIMEOUT,
        *,
        token: str | None = None,
        http: httpx.Client | None = None,
        refresh_token: str | None = None,
        on_refresh: Callable[[dict[str, Any]], None] | None = None,
        project: str | None = None,
        access_expires_at: float | None = None,
    ) -> None:
        self.url = url.rstrip("/").removesuffix("/kmeans")
        self.api = f"{self.url}/kmeans"
        self.__refresh = _checked_token(refresh_token)
        if self.__refresh is not None and token is None:
            token = ""  # a signed-in user's client gets its access token by refreshing, not from KMEANS_TOKEN
        self.__token = _checked_token(os.environ.get(TOKEN_ENV) if token is None else token)
        # When the access token stops working (epoch seconds); None: not known (API tokens: never refreshed).
        self.__access_until = access_expires_at
        self.on_refresh = on_refresh
        self.project = project
        self.__lock = threading.Lock()  # one refresh at a time: a refresh token works only once
        self._owned = http is None
        self.http = http if http is not None else httpx.Client(timeout=timeout)
        self.timeout = timeout

    @property
    def has_token(self) -> bool:
        """Whether requests carry a bearer token (or get one by refreshing)."""
        return self.__token is not None or self.__refresh is not None

    @property
    def signed_in(self) -> bool:
        """Whether this client holds a user's refresh token."""
        return self.__refresh is not None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, token={'<set>' if self.__token else None})"

    def close(self) -> None:
        """Close the HTTP connections (unless ``http`` was given)."""
        if self._owned:
            self.http.close()

    def __enter__(self) -> KMeansClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request to ``/kmeans{path}``; raise ApiError for 4xx/5xx, CannotConnect when unreachable."""
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        if self.project and PROJECT_HEADER not in headers:
            headers[PROJECT_HEADER] = self.project
        self._fresh()
        response = self._send(method, path, headers, kwargs)
        # A signed-in user's access token may have been refused early (the server's clock, a
        # restart of the TTL): refresh once and send again, when the body can be sent again.
        replayable = not any(key in kwargs for key in ("content", "files"))
        if response.status_code == 401 and self.__refresh is not None and replayable:
            self.refresh()
            response = self._send(method, path, headers, kwargs)
        if response.status_code >= 400:
            raise error_for(response)
        return response

    def _fresh(self) -> None:
        """Refresh a signed-in user's access token when it has expired (or there is none yet)."""
        if self.__refresh is not None and (
            self.__token is None or (self.__access_until is not None and time.time() >= self.__access_until)
        ):
            self.refresh()

    def _send(self, method: str, path: str, headers: dict[str, str], kwargs: dict[str, Any]) -> httpx.Response:
        headers = {**headers, **self._auth()}
        try:
            return self.http.request(method, f"{self.api}{path}", headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise CannotConnect(self.url, exc) from exc

    def _grant(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise error_for(response)
        grant = response.json()
        self.__token = _checked_token(grant["access_token"])
        self.__refresh = _checked_token(grant["refresh_token"])
        lifetime = float(grant["expires_in"])
        self.__access_until = time.time() + lifetime - min(REFRESH_MARGIN, lifetime / 2)
        grant = {**grant, "access_expires_at": self.__access_until}
        if self.on_refresh is not None:
            self.on_refresh(grant)
        return grant

    # -- signing in -------------------------------------------------------------------------

    def sign_in(self, username: str, password: str) -> dict[str, Any]:
        """Sign in as a user (OAuth2 password grant); later requests carry its access token, refreshed as needed.

        Returns the grant (``access_token``, ``refresh_token``, ``expires_in``, ...). A wrong name
        or password raises Unauthorized, too many failures TooManyRequests (``retry_after``).
        """
        form = {"grant_type": "password", "username": username, "password": password}
        try:
            response = self.http.post(f"{self.api}/auth/token", data=form, headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise CannotConnect(self.url, exc) from exc
        with self.__lock:
            return self._grant(response)

    def refresh(self) -> dict[str, Any]:
        """A new access token for the refresh token held (which is used up, and replaced by a new one)."""
        with self.__lock:
            if self.__refresh is None:
                raise Unauthorized(401, {"status": 401, "detail": "this client has no refresh token: sign in first"})
            try:
                response = self.http.post(
                    f"{self.api}/auth/refresh", data={"refresh_token": self.__refresh},
                    headers={"Accept": "application/json"},
                )
            except httpx.TransportError as exc:
                raise CannotConnect(self.url, exc) from exc
            return self._grant(response)

    def sign_out(self) -> None:
        """End this client's sign-in: its access and refresh tokens are refused from now on."""
        with self.__lock:
            refresh, self.__refresh, self.__token = self.__refresh, None, None
        if refresh is None:
            return
        try:
            response = self.http.post(f"{self.api}/auth/logout", data={"refresh_token": refresh})
        except httpx.TransportError as exc:
            raise CannotConnect(self.url, exc) from exc
        if response.status_code >= 400:
            raise error_for(response)

    def _stream_headers(self, accept: str) -> dict[str, str]:
        """The headers of a streamed request (events, downloads), which bypasses request()."""
        self._fresh()
        headers = {"Accept": accept, **self._auth()}
        if self.project:
            headers[PROJECT_HEADER] = self.project
        return headers

    def _auth(self) -> dict[str, str]:
        """The Authorization header, when there is a token."""
        return {} if self.__token is None else {"Authorization": f"Bearer {self.__token}"}

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    @staticmethod
    def _params(**params: Any) -> dict[str, Any]:
        return {k: v for k, v in params.items() if v is not None}

    def _open(self, source: Any) -> tuple[IO[bytes], str | None, bool]:
        """A binary file object for a path or file object, its name, and whether we opened it."""
        if isinstance(source, (str, os.PathLike)):
            return open(source, "rb"), Path(source).name, True  # noqa: SIM115 - closed by the caller
        if hasattr(source, "read"):
            name = getattr(source, "name", None)
            return source, Path(name).name if isinstance(name, str) else None, False
        raise TypeError(f"expected a path, a binary file object or bytes, not {type(source).__name__}")

    def _csv_body(self, source: Any, progress: Progress | None) -> tuple[Any, dict[str, str], str | None, IO | None]:
        """Content, headers and file name for a raw text/csv body; the file to close afterwards."""
        if isinstance(source, (bytes, bytearray)):
            if progress is not None:
                progress(len(source), len(source))
            return bytes(source), {"Content-Type": "text/csv"}, None, None
        handle, name, owned = self._open(source)
        total = _size(handle)
        headers = {"Content-Type": "text/csv"}
        if total is not None:
            headers["Content-Length"] = str(total)  # known size: no chunked encoding, early 413
        return _chunks(handle, total, progress), headers, name, handle if owned else None

    def _multipart(self, source: Any, progress: Progress | None, filename: str | None) -> tuple[dict, IO | None]:
        """A multipart ``file`` field streamed from ``source``; the file to close afterwards."""
        if isinstance(source, (bytes, bytearray)):
            if progress is not None:
                progress(len(source), len(source))
            return {"file": (filename or "upload.csv", bytes(source), "text/csv")}, None
        handle, name, owned = self._open(source)
        reader = _ProgressReader(handle, _size(handle), progress)
        return {"file": (filename or name or "upload.csv", reader, "text/csv")}, handle if owned else None

    # -- health -----------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """``{"status": "ok", "version": ...}`` when the service is up."""
        return self._json("GET", "/ping")

    # -- classic endpoints --------------------------------------------------------------------

    def upload(self, source: Any, *, filename: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
        """POST /upload: store a CSV (path, file object or bytes); the result has its ``job_id``."""
        files, owned = self._multipart(source, progress, filename)
        try:
            return self._json("POST", "/upload", files=files)
        finally:
            if owned is not None:
                owned.close()

    def fit(self, job_id: int, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST /fit: fit the upload ``job_id`` and wait; ``{"model_id", "labels"}``."""
        body: dict[str, Any] = {"job_id": job_id}
        if params is not None:
            body["model_params"] = dict(params)
        return self._json("POST", "/fit", json=body)

    def classic_predict(self, job_id: int, source: Any, *, progress: Progress | None = None) -> list[int]:
        """POST /predict: labels for the points of a CSV with the model of upload ``job_id``."""
        files, owned = self._multipart(source, progress, None)
        try:
            return self._json("POST", "/predict", data={"job_id": str(job_id)}, files=files)["labels"]
        finally:
            if owned is not None:
                owned.close()

    # -- datasets ---------------------------------------------------------------------------

    def create_dataset(
        self,
        source: Any,
        *,
        name: str | None = None,
        columns: Sequence[str] | None = None,
        project: str | None = None,
        progress: Progress | None = None,
        id_column: str | None = None,
        delimiter: str | None = None,
        decimal: str | None = None,
        na_values: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """POST /datasets from a CSV path, a binary file object, CSV bytes, or rows (a list of
        lists, or of dicts keyed by column name; None is a missing value).

        Files are streamed as a raw ``text/csv`` body in chunks (``progress(sent, total)``
        after each); the name defaults to the file's name. ``columns`` is for rows only.
        ``project`` is where it goes (default: the token's project, or ``default`` for admins).
        ``id_column`` names the column of row ids (kept, never clustered on); ``delimiter``,
        ``decimal`` and ``na_values`` say how to read a CSV (default: detected, ``.``, the
        usual NA markers).
        """
        if isinstance(source, (list, tuple)) or hasattr(source, "tolist"):
            body: dict[str, Any] = {"data": _rows(source)}
            if columns is not None:
                body["columns"] = list(columns)
            if name is not None:
                body["name"] = name
            return self._json("POST", "/datasets", json=body, params=self._params(project=project, id_column=id_column))
        if columns is not None:
            raise TypeError("columns is for rows; a CSV names its columns in its header row")
        content, headers, filename, owned = self._csv_body(source, progress)
        try:
            params = self._params(
                name=name or filename, project=project, id_column=id_column,
                **_csv_params(delimiter, decimal, na_values),
            )
            return self._json("POST", "/datasets", content=content, headers=headers, params=params)
        finally:
            if owned is not None:
                owned.close()

    def list_datasets(self, offset: int = 0, limit: int = 100, *, project: str | None = None) -> dict[str, Any]:
        """A page of datasets, newest first (optionally of one project): ``{"items", "offset", "limit", "total"}``."""
        return self._json("GET", "/datasets", params=self._params(offset=offset, limit=limit, project=project))

    def iter_datasets(self, page_size: int = 100, *, project: str | None = None) -> Iterator[dict[str, Any]]:
        """Every dataset, newest first, a page at a time."""
        yield from self._pages(lambda offset, limit: self.list_datasets(offset, limit, project=project), page_size)

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        """One dataset."""
        return self._json("GET", f"/datasets/{_quote(dataset_id)}")

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset."""
        self.request("DELETE", f"/datasets/{_quote(dataset_id)}")

    def dataset_columns(self, dataset_id: str) -> list[dict[str, Any]]:
        """Per column: its type, missing and distinct counts, min/max/mean/median/stddev, top categories."""
        return self._json("GET", f"/datasets/{_quote(dataset_id)}/columns")["items"]

    def rows(self, dataset_id: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """Rows ``offset`` to ``offset + limit``: ``{"items", "columns", "offset", "limit", "total"}``."""
        return self._json("GET", f"/datasets/{_quote(dataset_id)}/rows", params={"offset": offset, "limit": limit})

    # -- models -----------------------------------------------------------------------------

    def create_model(
        self,
        dataset_id: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """POST /models: queue a fit (202); ``options`` are further body fields such as ``time_limit``."""
        body: dict[str, Any] = {"dataset_id": dataset_id, **options}
        if params is not None:
            body["params"] = dict(params)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/models", json=body, headers=headers)

    def list_models(
        self,
        offset: int = 0,
        limit: int = 100,
        *,
        dataset_id: str | None = None,
        status: str | None = None,
        project: str | None = None,
    ) -> dict[str, Any]:
        """A page of models, newest first (optionally of one dataset, in one state, or of one project)."""
        params = self._params(offset=offset, limit=limit, dataset_id=dataset_id, status=status, project=project)
        return self._json("GET", "/models", params=params)

    def iter_models(self, page_size: int = 100, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every model, newest first, a page at a time."""
        yield from self._pages(lambda offset, limit: self.list_models(offset, limit, **filters), page_size)

    def get_model(self, model_id: str) -> dict[str, Any]:
        """One model and the state of its fit."""
        return self._json("GET", f"/models/{_quote(model_id)}")

    def delete_model(self, model_id: str) -> None:
        """Delete a model."""
        self.request("DELETE", f"/models/{_quote(model_id)}")

    def cancel_model(self, model_id: str) -> dict[str, Any]:
        """Cancel a queued or running fit."""
        return self._json("POST", f"/models/{_quote(model_id)}/cancel")

    def pause_model(self, model_id: str) -> dict[str, Any]:
        """Pause a queued or running KMeans fit (its centers are checkpointed, its process freed)."""
        return self._json("POST", f"/models/{_quote(model_id)}/pause")

    def resume_model(self, model_id: str) -> dict[str, Any]:
        """Queue a paused fit again, to go on from its checkpoint."""
        return self._json("POST", f"/models/{_quote(model_id)}/resume")

    def copy_model(
        self, model_id: str, params: Mapping[str, Any] | None = None, **options: Any
    ) -> dict[str, Any]:
        """Refit a model's dataset with its params and ``params`` overriding them (202, the new model);
        ``options``: ``dataset_id``, ``time_limit``, ``callback_url``."""
        body: dict[str, Any] = dict(options)
        if params is not None:
            body["params"] = dict(params)
        return self._json("POST", f"/models/{_quote(model_id)}/copy", json=body)

    def wait_for_model(
        self,
        model_id: str,
        timeout: float = 600,
        poll: float = 0.2,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the model until it leaves ``queued``/``running``; raise TimeoutError after ``timeout`` s.

        ``on_update(model)`` sees every state polled. A failed fit is returned, not raised:
        look at ``model["status"]`` and ``model["error"]``.
        """
        return self._wait(lambda: self.get_model(model_id), f"model {model_id}", timeout, poll, on_update)

    @staticmethod
    def _wait(
        fetch: Callable[[], dict[str, Any]],
        what: str,
        timeout: float,
        poll: float,
        on_update: Callable[[dict[str, Any]], None] | None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            current = fetch()
            if on_update is not None:
                on_update(current)
            if current["status"] not in ACTIVE:
                return current
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} is still {current['status']} after {timeout:g} s")
            time.sleep(min(poll, left))

    def labels(self, model_id: str) -> list[int]:
        """The training rows' labels, in row order."""
        return self._json("GET", f"/models/{_quote(model_id)}/labels")["labels"]

    def centers(self, model_id: str) -> dict[str, Any]:
        """``{"model_id", "columns", "centers"}``: one center per cluster, in label order."""
        return self._json("GET", f"/models/{_quote(model_id)}/centers")

    def predict(
        self, model_id: str, points: Any, *, version: int | None = None, progress: Progress | None = None
    ) -> list[int]:
        """Labels for ``points``: rows (lists, or dicts keyed by column name), or a CSV path, binary
        file object or bytes."""
        return self.predictions(model_id, points, version=version, progress=progress)["labels"]

    def predictions(
        self,
        model_id: str,
        points: Any,
        *,
        distances: bool = False,
        all_distances: bool = False,
        anomalies: bool = False,
        threshold: float | None = None,
        version: int | None = None,
        progress: Progress | None = None,
        delimiter: str | None = None,
        decimal: str | None = None,
        na_values: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The whole prediction document: ``labels``, ``ids`` (when the points carry the model's
        id column), ``unknown_categories``, and distances or anomaly flags when asked for."""
        params = self._params(
            distances=_flag(distances), all_distances=_flag(all_distances), anomalies=_flag(anomalies),
            threshold=threshold, version=version, **_csv_params(delimiter, decimal, na_values),
        )
        return self._send_points("POST", f"/models/{_quote(model_id)}/predictions", points, progress, params)

    def _send_points(
        self, method: str, path: str, points: Any, progress: Progress | None, params: dict[str, Any] | None = None
    ) -> Any:
        """Rows as JSON ``{"data": …}``, anything else as a streamed ``text/csv`` body."""
        if isinstance(points, (list, tuple)) or hasattr(points, "tolist"):
            return self._json(method, path, json={"data": _rows(points)}, params=params)
        content, headers, _, owned = self._csv_body(points, progress)
        try:
            return self._json(method, path, content=content, headers=headers, params=params)
        finally:
            if owned is not None:
                owned.close()

    def plot(self, model_id: str) -> bytes:
        """A PNG scatter plot of the model's clusters."""
        return self.request("GET", f"/models/{_quote(model_id)}/plot.png", headers={"Accept": "image/png"}).content

    def name_clusters(self, model_id: str, names: Mapping[int | str, str | None]) -> dict[str, Any]:
        """Name clusters (``{0: "bargain hunters"}``; None removes a name, others keep theirs); the model."""
        body = {"cluster_names": {str(k): v for k, v in names.items()}}
        return self._json("PATCH", f"/models/{_quote(model_id)}", json=body)

    def profile(self, model_id: str) -> dict[str, Any]:
        """What sets each cluster apart: per cluster its size, share, summary and ranked features."""
        return self._json("GET", f"/models/{_quote(model_id)}/profile")

    def profile_csv(self, model_id: str) -> str:
        """The profile as CSV: one row per cluster and feature (and category)."""
        return self.request("GET", f"/models/{_quote(model_id)}/profile", headers={"Accept": "text/csv"}).text

    def profile_plot(self, model_id: str) -> bytes:
        """A PNG heatmap of the profile's standardized differences, clusters x features."""
        return self.request(
            "GET", f"/models/{_quote(model_id)}/profile.png", headers={"Accept": "image/png"}
        ).content

    def export_model(self, model_id: str) -> dict[str, Any]:
        """The model as a portable JSON document (for ``import_model``)."""
        return self._json("GET", f"/models/{_quote(model_id)}/export")

    def import_model(self, document: Mapping[str, Any], *, project: str | None = None) -> dict[str, Any]:
        """A new model from an exported document (in ``project``, default: the token's)."""
        return self._json("POST", "/models/import", json=dict(document), params=self._params(project=project))

    def push_data(self, model_id: str, points: Any, *, progress: Progress | None = None) -> dict[str, Any]:
        """Move a minibatch model's centers with new rows; returns the new version."""
        return self._send_points("POST", f"/models/{_quote(model_id)}/data", points, progress)

    def list_versions(self, model_id: str) -> dict[str, Any]:
        """The versions of a minibatch model's centers."""
        return self._json("GET", f"/models/{_quote(model_id)}/versions")

    def get_version(self, model_id: str, version: int) -> dict[str, Any]:
        """One version of a model's centers."""
        return self._json("GET", f"/models/{_quote(model_id)}/versions/{int(version)}")

    def restore_version(self, model_id: str, version: int) -> dict[str, Any]:
        """Go back to a version (as a new version)."""
        return self._json("POST", f"/models/{_quote(model_id)}/versions/{int(version)}/restore")

    # -- live events ------------------------------------------------------------------------

    def events(
        self, path: str, *, last_event_id: str | None = None, timeout: float = 3600, params: Any = None
    ) -> Iterator[Event]:
        """Each Server-Sent Event of ``path`` (``/models/{id}/events``, ``/sweeps/{id}/events``,
        ``/events``), until the server closes the stream or ``timeout`` seconds have passed."""
        headers = self._stream_headers("text/event-stream")
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        deadline = time.monotonic() + timeout
        # The read timeout outlasts the server's keep-alive comments; the deadline bounds the whole stream.
        limits = httpx.Timeout(self.timeout, read=max(self.timeout, 30.0))
        try:
            with httpx_sse.connect_sse(
                self.http, "GET", f"{self.api}{path}", headers=headers, params=params, timeout=limits
            ) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    raise error_for(source.response)
                for sse in source.iter_sse():
                    if sse.event != "message" or sse.data:  # comment-only keep-alives carry nothing
                        yield Event(sse.event, sse.id or None, json.loads(sse.data) if sse.data else None)
                    if time.monotonic() > deadline:
                        return
        except httpx.TransportError as exc:
            raise CannotConnect(self.url, exc) from exc

    def model_events(self, model_id: str, **options: Any) -> Iterator[Event]:
        """The fit's changes of status, progress and phase, live, until it ends."""
        return self.events(f"/models/{_quote(model_id)}/events", **options)

    def sweep_events(self, sweep_id: str, **options: Any) -> Iterator[Event]:
        """The sweep's changes (status, progress, per-k results), live, until it ends."""
        return self.events(f"/sweeps/{_quote(sweep_id)}/events", **options)

    def evaluation_events(self, model_id: str, evaluation_id: str, **options: Any) -> Iterator[Event]:
        """The evaluation's changes, live, until it ends."""
        return self.events(f"/models/{_quote(model_id)}/evaluations/{_quote(evaluation_id)}/events", **options)

    def scoring_events(self, model_id: str, scoring_id: str, **options: Any) -> Iterator[Event]:
        """The scoring's changes (status, progress, rows scored), live, until it ends."""
        return self.events(f"/models/{_quote(model_id)}/scorings/{_quote(scoring_id)}/events", **options)

    def project_events(self, *, project: str | None = None, **options: Any) -> Iterator[Event]:
        """Every job change (and online push or restore) of the project, live; the server closes after an hour."""
        return self.events("/events", params=self._params(project=project), **options)

    # -- sweeps -----------------------------------------------------------------------------

    def create_sweep(
        self, dataset_id: str, k_min: int, k_max: int, params: Mapping[str, Any] | None = None, **options: Any
    ) -> dict[str, Any]:
        """Fit every k from ``k_min`` to ``k_max`` (in the background) to choose the number of clusters;
        ``options`` are further body fields such as ``time_limit`` and ``callback_url``."""
        body: dict[str, Any] = {"dataset_id": dataset_id, "k_min": k_min, "k_max": k_max, **options}
        if params is not None:
            body["params"] = dict(params)
        return self._json("POST", "/sweeps", json=body)

    def list_sweeps(
        self, offset: int = 0, limit: int = 100, *, dataset_id: str | None = None, project: str | None = None
    ) -> dict[str, Any]:
        """A page of sweeps, newest first (optionally of one dataset or project)."""
        params = self._params(offset=offset, limit=limit, dataset_id=dataset_id, project=project)
        return self._json("GET", "/sweeps", params=params)

    def get_sweep(self, sweep_id: str, rule: str | None = None) -> dict[str, Any]:
        """A sweep: its state, per-k metrics and recommended k (ranked by ``rule``, if given)."""
        return self._json("GET", f"/sweeps/{_quote(sweep_id)}", params=self._params(rule=rule))

    def wait_for_sweep(self, sweep_id: str, timeout: float = 600, poll: float = 0.2) -> dict[str, Any]:
        """Poll the sweep until it leaves ``queued``/``running``; raise TimeoutError after ``timeout`` s."""
        return self._wait(lambda: self.get_sweep(sweep_id), f"sweep {sweep_id}", timeout, poll, None)

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        """Cancel a queued or running sweep (the k values it finished stay)."""
        return self._json("POST", f"/sweeps/{_quote(sweep_id)}/cancel")

    def delete_sweep(self, sweep_id: str) -> None:
        """Delete a sweep (cancelled first if it still runs)."""
        self.request("DELETE", f"/sweeps/{_quote(sweep_id)}")

    def list_jobs(
        self,
        offset: int = 0,
        limit: int = 100,
        *,
        status: str | None = None,
        kind: str | None = None,
        project: str | None = None,
    ) -> dict[str, Any]:
        """The queue: running jobs, then queued ones with their ``position`` (or the jobs in ``status``)."""
        params = self._params(offset=offset, limit=limit, status=status, kind=kind, project=project)
        return self._json("GET", "/jobs", params=params)

    def sweep_plot(self, sweep_id: str) -> bytes:
        """A PNG of each metric over k."""
        return self.request("GET", f"/sweeps/{_quote(sweep_id)}/plot.png", headers={"Accept": "image/png"}).content

    # -- evaluations and comparisons ----------------------------------------------------------

    def create_evaluation(
        self, model_id: str, dataset_id: str, label_column: str | None = None, *, time_limit: float | None = None
    ) -> dict[str, Any]:
        """Evaluate a fitted model on a dataset (in the background): quality, drift against
        training and, with ``label_column``, agreement with known labels."""
        body: dict[str, Any] = {"dataset_id": dataset_id}
        if label_column is not None:
            body["label_column"] = label_column
        if time_limit is not None:
            body["time_limit"] = time_limit
        return self._json("POST", f"/models/{_quote(model_id)}/evaluations", json=body)

    def list_evaluations(self, model_id: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """A page of a model's evaluations, newest first."""
        params = self._params(offset=offset, limit=limit)
        return self._json("GET", f"/models/{_quote(model_id)}/evaluations", params=params)

    def get_evaluation(self, model_id: str, evaluation_id: str) -> dict[str, Any]:
        """An evaluation: its state and, once it has succeeded, its ``result``."""
        return self._json("GET", f"/models/{_quote(model_id)}/evaluations/{_quote(evaluation_id)}")

    def wait_for_evaluation(
        self, model_id: str, evaluation_id: str, timeout: float = 600, poll: float = 0.2
    ) -> dict[str, Any]:
        """Poll the evaluation until it leaves ``queued``/``running``; raise TimeoutError after ``timeout`` s."""
        return self._wait(lambda: self.get_evaluation(model_id, evaluation_id), f"evaluation {evaluation_id}",
                          timeout, poll, None)

    def cancel_evaluation(self, model_id: str, evaluation_id: str) -> dict[str, Any]:
        """Cancel a queued or running evaluation."""
        return self._json("POST", f"/models/{_quote(model_id)}/evaluations/{_quote(evaluation_id)}/cancel")

    def delete_evaluation(self, model_id: str, evaluation_id: str) -> None:
        """Delete an evaluation (cancelled first if it still runs)."""
        self.request("DELETE", f"/models/{_quote(model_id)}/evaluations/{_quote(evaluation_id)}")

    def compare_models(self, model_id: str, other_model_id: str, dataset_id: str | None = None) -> dict[str, Any]:
        """How two fitted models agree on a dataset (default: the first one's training data): ARI,
        NMI, the best one-to-one matching of their clusters and the rows that changed cluster."""
        body: dict[str, Any] = {"other_model_id": other_model_id}
        if dataset_id is not None:
            body["dataset_id"] = dataset_id
        return self._json("POST", f"/models/{_quote(model_id)}/comparisons", json=body)
    # -- batch scorings ----------------------------------------------------------------------

    def create_scoring(
        self, model_id: str, dataset_id: str, *, threshold: float | None = None, time_limit: float | None = None
    ) -> dict[str, Any]:
        """Score every row of a stored dataset with a model (in the background); ``threshold`` flags
        rows farther from their center (default: the model's contamination threshold)."""
        body = {"dataset_id": dataset_id, **self._params(threshold=threshold, time_limit=time_limit)}
        return self._json("POST", f"/models/{_quote(model_id)}/scorings", json=body)

    def list_scorings(self, model_id: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """A page of a model's scorings, newest first."""
        return self._json("GET", f"/models/{_quote(model_id)}/scorings", params={"offset": offset, "limit": limit})

    def get_scoring(self, model_id: str, scoring_id: str) -> dict[str, Any]:
        """A scoring: its state, progress, rows scored and (once succeeded) cluster sizes."""
        return self._json("GET", f"/models/{_quote(model_id)}/scorings/{_quote(scoring_id)}")

    def wait_for_scoring(
        self, model_id: str, scoring_id: str, timeout: float = 600, poll: float = 0.2,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the scoring until it leaves ``queued``/``running``; raise TimeoutError after ``timeout`` s."""
        return self._wait(
            lambda: self.get_scoring(model_id, scoring_id), f"scoring {scoring_id}", timeout, poll, on_update
        )

    def cancel_scoring(self, model_id: str, scoring_id: str) -> dict[str, Any]:
        """Cancel a queued or running scoring."""
        return self._json("POST", f"/models/{_quote(model_id)}/scorings/{_quote(scoring_id)}/cancel")

    def delete_scoring(self, model_id: str, scoring_id: str) -> None:
        """Delete a scoring and its result (cancelled first if it still runs)."""
        self.request("DELETE", f"/models/{_quote(model_id)}/scorings/{_quote(scoring_id)}")

    def scoring_rows(self, model_id: str, scoring_id: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """A page of a scoring's result: ``items`` of ``{id?, row, label, distance, anomaly?}``."""
        path = f"/models/{_quote(model_id)}/scorings/{_quote(scoring_id)}/result"
        return self._json("GET", path, params={"offset": offset, "limit": limit})

    def iter_scoring_rows(self, model_id: str, scoring_id: str, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every row of a scoring's result, a page at a time."""
        return self._pages(lambda o, n: self.scoring_rows(model_id, scoring_id, o, n), page_size)

    def download_scoring(
        self, model_id: str, scoring_id: str, destination: str | os.PathLike | IO[bytes], *, format: str = "csv",
        progress: Progress | None = None,
    ) -> int:
        """Stream a scoring's whole result to a path or binary file as ``csv`` or ``parquet``;
        returns the bytes written (``progress(written, None)`` after each piece)."""
        media = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}.get(format)
        if media is None:
            raise ValueError(f"format must be csv or parquet, not {format!r}")
        headers = self._stream_headers(media)
        path = f"{self.api}/models/{_quote(model_id)}/scorings/{_quote(scoring_id)}/result"
        opened = isinstance(destination, (str, os.PathLike))
        out = open(destination, "wb") if opened else destination  # noqa: SIM115 - closed below
        written = 0
        try:
            with self.http.stream("GET", path, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_for(response)
                for piece in response.iter_bytes(CHUNK_BYTES):
                    out.write(piece)
                    written += len(piece)
                    if progress is not None:
                        progress(written, None)
        except httpx.TransportError as exc:
            raise CannotConnect(self.url, exc) from exc
        finally:
            if opened:
                out.close()
        return written

    # -- access -----------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """Who requests run as: ``{"role", "project", "token_id", "expires_at", "open"}`` (and a user's ``user``)."""
        return self._json("GET", "/me")

    def change_password(self, current_password: str, new_password: str) -> None:
        """Change the signed-in user's own password (its other sign-ins end)."""
        self.request("POST", "/me/password", json={"current_password": current_password, "new_password": new_password})

    def create_user(
        self,
        name: str,
        password: str,
        *,
        admin: bool = False,
        memberships: Sequence[Mapping[str, str]] = (),
    ) -> dict[str, Any]:
        """A new user (admin): ``memberships`` like ``[{"project": "team-a", "role": "contributor"}]``."""
        body = {"name": name, "password": password, "admin": admin, "memberships": [dict(m) for m in memberships]}
        return self._json("POST", "/users", json=body)

    def list_users(self, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """A page of users (admin)."""
        return self._json("GET", "/users", params={"offset": offset, "limit": limit})

    def get_user(self, user_id: str) -> dict[str, Any]:
        """One user (admin)."""
        return self._json("GET", f"/users/{_quote(user_id)}")

    def update_user(
        self,
        user_id: str,
        *,
        admin: bool | None = None,
        memberships: Sequence[Mapping[str, str]] | None = None,
        password: str | None = None,
    ) -> dict[str, Any]:
        """Change a user (admin): ``memberships`` replaces them all; a new ``password`` ends its sign-ins."""
        body = self._params(
            admin=admin, password=password, memberships=None if memberships is None else [dict(m) for m in memberships]
        )
        return self._json("PATCH", f"/users/{_quote(user_id)}", json=body)

    def delete_user(self, user_id: str) -> None:
        """Delete a user (admin): its tokens are refused from the next request on."""
        self.request("DELETE", f"/users/{_quote(user_id)}")

    def create_project(self, project_id: str, description: str = "") -> dict[str, Any]:
        """A new, empty project (admin)."""
        return self._json("POST", "/projects", json={"id": project_id, "description": description})

    def list_projects(self, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """A page of projects (admin)."""
        return self._json("GET", "/projects", params={"offset": offset, "limit": limit})

    def get_project(self, project_id: str) -> dict[str, Any]:
        """One project (admin)."""
        return self._json("GET", f"/projects/{_quote(project_id)}")

    def delete_project(self, project_id: str) -> None:
        """Delete an empty project (admin; 409 while it holds resources or live tokens)."""
        self.request("DELETE", f"/projects/{_quote(project_id)}")

    def create_token(
        self,
        role: str,
        project: str | None = None,
        name: str | None = None,
        expires_in: int | dt.timedelta | None = None,
    ) -> dict[str, Any]:
        """A new token (admin); the record's ``token`` is its secret, which the server never shows again.

        ``role`` is ``guest``, ``contributor`` or ``admin``; ``project`` is where a guest or
        contributor token works (``default`` if None); ``expires_in`` is seconds or a timedelta.
        """
        if isinstance(expires_in, dt.timedelta):
            expires_in = int(expires_in.total_seconds())
        body = self._params(role=role, project=project, name=name, expires_in=expires_in)
        return self._json("POST", "/tokens", json=body)

    def list_tokens(self, offset: int = 0, limit: int = 100, *, project: str | None = None) -> dict[str, Any]:
        """A page of tokens, never their secrets (admin)."""
        return self._json("GET", "/tokens", params=self._params(offset=offset, limit=limit, project=project))

    def get_token(self, token_id: str) -> dict[str, Any]:
        """One token, without its secret (admin)."""
        return self._json("GET", f"/tokens/{_quote(token_id)}")

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke a token (admin): it is refused from the next request on."""
        return self._json("POST", f"/tokens/{_quote(token_id)}/revoke")

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _pages(fetch: Callable[[int, int], dict[str, Any]], page_size: int) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = fetch(offset, page_size)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return


def _rows(points: Any) -> list:
    """Rows for a JSON body: a numpy array's, or each row as a list, or as the dict it is
    (keyed by column name)."""
    if hasattr(points, "tolist"):
        return points.tolist()
    return [row if isinstance(row, dict) else list(row) for row in points]


def _csv_params(delimiter: str | None, decimal: str | None, na_values: Sequence[str] | None) -> dict[str, Any]:
    """The query parameters that say how to read a CSV body."""
    return {
        "delimiter": delimiter,
        "decimal": decimal,
        "na_values": ",".join(na_values) if na_values is not None else None,
    }


def _flag(value: bool) -> str | None:
    return "true" if value else None


def _quote(value: str) -> str:
    """An id as one path segment."""
    return quote(str(value), safe="")


Client = KMeansClient  # the short name
