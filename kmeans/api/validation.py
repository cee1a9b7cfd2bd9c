"""Requests before they reach a handler: size limits, parameter errors that name the
parameter, and multipart uploads streamed to disk.

connexion's own multipart validator holds the whole body in memory and replays it to the
framework, which parses it a second time. Ours parses it once as it arrives: file parts are
written to the data dir's tmp folder (hashed on the way), the small form fields are
validated against the spec exactly as connexion would, and the framework then sees a tiny
body with the same fields and empty file parts. Handlers find the spooled files through
``spooled_file()``; the files are deleted when the response has been sent.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import re
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import numpy as np
from connexion.datastructures import MediaTypeDict
from connexion.exceptions import BadRequestProblem
from connexion.json_schema import Draft4RequestValidator
from connexion.utils import is_null, is_nullable
from connexion.validators import (
    VALIDATOR_MAP,
    JSONRequestBodyValidator,
    MultiPartFormDataValidator,
    ParameterValidator,
)
from jsonschema import Draft4Validator, ValidationError
from jsonschema.validators import extend
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kmeans.errors import BadRequest, NotFound, PayloadTooLarge, ProblemError, RequestTimeout, UnsupportedMediaType
from kmeans.multipart import BodySpool, MultipartSpooler, SpooledFile, remove
from kmeans.store import temp_name

DISCONNECTED = "kmeans.disconnected"  # scope key: anyio.Event set when the client hangs up
SPOOLED = "kmeans.spooled"  # scope key: every file spooled for this request (for clean-up)
FILES = "kmeans.files"  # scope key: field name -> SpooledFile, for the handler
JSON_BODY = "kmeans.json"  # scope key: the JSON body as the validator parsed it, for the handler
BODY = "kmeans.body"  # scope key: the request body read before the handler (bytes or a SpooledFile)
REPLAY_BYTES = 1024 * 1024  # a spooled body is given again in pieces of this size


class RequestLimitsMiddleware:
    """Refuse bodies over ``max_bytes`` (413) as they stream in, drop a body that sends nothing for
    ``idle_timeout`` seconds (408: a stalled client must not keep its request, and what it holds,
    for ever); remove spooled files afterwards."""

    def __init__(self, app: ASGIApp, max_bytes: int, idle_timeout: float = 30) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\n" in scope["path"] or "\r" in scope["path"]:
            # No resource has one in its URL; and Starlette's mount for the API's base path does not
            # match across it, so the request would reach a handler outside connexion's context (a 500).
            raise NotFound("no resource has a line break in its URL path")
        limit = self.max_bytes
        too_large = f"the request body is larger than the limit of {limit} bytes"
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                raise BadRequest("the Content-Length header is not a number")
            # Never int() the header as sent: thousands of digits are a ValueError (Python's limit on
            # int-string conversion), so a long one is too large by its length alone.
            digits = declared.lstrip("0") or "0"
            if len(digits) > len(str(limit)) or int(digits) > limit:
                raise PayloadTooLarge(too_large)
            if digits != declared:  # leading zeros: everything after this (connexion too) sees the plain number
                MutableHeaders(scope=scope)["content-length"] = digits
        refuse_content_coding(headers)
        seen = 0
        ended = False
        idle = self.idle_timeout

        async def limited_receive() -> Message:
            nonlocal seen, ended
            if ended:  # after the body only http.disconnect comes, whenever the client goes: no timeout
                return await receive()
            try:
                with anyio.fail_after(idle):
                    message = await receive()
            except TimeoutError:
                error = RequestTimeout(
                    f"the request body stopped arriving: nothing came for {idle:g} seconds (the server's"
                    f" KMEANS_BODY_IDLE_TIMEOUT) after {seen} bytes; send the body without pausing"
                )
                error.headers["Connection"] = "close"  # the rest of the body must not be read as a request
                raise error from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(too_large)
                ended = not message.get("more_body", False)
            else:
                ended = True
            return message

        spooled: list[SpooledFile] = []
        scope[SPOOLED] = spooled
        try:
            await self.app(scope, limited_receive, send)
        finally:
            remove(spooled)


class BodyMiddleware:
    """Read every request body on the event loop before a handler takes a thread.

    connexion runs the handlers in a thread pool shared by every request: a handler that read its
    body from the network held a thread for as long as its client took, so a few dozen stalled
    uploads took them all and every request, ``/ping`` too, hung. Here a body that is not
    multipart (StreamingMultipartValidator spools those, on the event loop too) is collected in
    memory, past 1 MiB in a file in ``spool_dir``, and only then handed on: the handler reads it
    from ``request_body(scope)``, and whatever reads the ASGI channel gets it replayed. After the
    security check, so that a request without a valid token never has its body read; inside
    RequestLimitsMiddleware, whose limits and idle timeout apply as it reads and which removes
    the file.
    """

    def __init__(self, app: ASGIApp, spool_dir: Path) -> None:
        self.app = app
        self.spool_dir = spool_dir

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if headers is None or not has_body(headers) or media_type(headers) == "multipart/form-data":
            await self.app(scope, receive, send)
            return
        scope[BODY] = await self._read(receive, scope.setdefault(SPOOLED, []))
        await self.app(scope, _replay_body(scope[BODY], receive), send)

    async def _read(self, receive: Receive, spooled: list[SpooledFile]) -> bytes | SpooledFile:
        """The whole body, taken on the event loop (see the class docstring)."""
        spool = BodySpool(lambda: self.spool_dir / temp_name(".body"))
        try:
            async for chunk in body_chunks(receive):
                await spool.write(chunk)
            return await spool.result()
        finally:
            await spool.close()
            spooled.extend(spool.files)


async def body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The pieces of a request body as they arrive; BadRequest if the client goes first."""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client disconnected before the body was complete")
        yield message.get("body", b"")
        more = message.get("more_body", False)


def _replay_body(body: bytes | SpooledFile, receive: Receive) -> Receive:
    """A receive channel that gives ``body`` again (from memory or its file), then ``receive``'s messages."""
    handle: BinaryIO | None = None
    done = False

    async def replay() -> Message:
        nonlocal handle, done
        if done:
            return await receive()
        if isinstance(body, bytes):
            done = True
            return {"type": "http.request", "body": body, "more_body": False}
        handle = handle or open(body.path, "rb")  # noqa: SIM115 -- closed at its end
        chunk = handle.read(REPLAY_BYTES)
        done = handle.tell() >= body.size
        if done:
            handle.close()
        return {"type": "http.request", "body": chunk, "more_body": not done}

    return replay


def request_body(scope: Scope) -> bytes | SpooledFile:
    """The request's body as BodyMiddleware collected it: bytes, or a SpooledFile past 1 MiB."""
    return scope.get(BODY, b"")


def media_type(headers: Headers) -> str:
    """The request's media type, lower case, without parameters."""
    return headers.get("content-type", "").partition(";")[0].strip().lower()


def refuse_content_coding(headers: Headers) -> None:
    """415 for a body in a content coding (gzip, br, …): the service decodes none, and read as it
    is the body would fail as a CSV or JSON parse error, or be stored compressed (RFC 9110 §15.5.16;
    RFC 7694: the answer's Accept-Encoding says which codings a request may use)."""
    codings = [c.strip().lower() for c in ",".join(headers.getlist("content-encoding")).split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings or not has_body(headers):
        return  # no coding, or no body for one to apply to
    shown = ", ".join(codings)[:100]
    error = UnsupportedMediaType(
        f"the request body is {shown}-encoded (Content-Encoding: {shown}); this service decodes no content"
        " coding: send the body uncompressed, without a Content-Encoding header",
        parameter="Content-Encoding",
    )
    error.headers["Accept-Encoding"] = "identity"
    raise error


class SpecPaths:
    """api.yaml's paths, matched as OpenAPI says: a concrete path before a templated one that also
    matches it (``/models/import`` before ``/models/{model_id}``), at the first segment they differ in.

    ``paths`` maps each full path template to its methods; ``integers`` maps a template to its
    integer path parameters and their maximum (None: no maximum).
    """

    def __init__(
        self,
        paths: dict[str, list[str]],
        integers: dict[str, dict[str, int | None]] | None = None,
        media_types: dict[tuple[str, str], str] | None = None,
    ) -> None:
        def specificity(template: str) -> tuple[int, ...]:
            return tuple(int("{" in segment) for segment in template.split("/"))

        self.routes = [
            (
                re.compile(re.sub(r"\\{([^/]+?)\\}", r"(?P<\1>[^/]+)", re.escape(template))),
                template,
                sorted(set(methods)),
            )
            for template, methods in sorted(paths.items(), key=lambda item: specificity(item[0]))
        ]
        self.integers = integers or {}
        # (template, METHOD) -> the first media type its request body may have
        self.media_types = media_types or {}

    def match(self, path: str) -> tuple[str, list[str], dict[str, str]] | None:
        """The template ``path`` is under, its methods and its path parameters' values (None: no path of the spec)."""
        for pattern, template, methods in self.routes:
            found = pattern.fullmatch(path)  # not match(): '$' matches before a final line break
            if found:
                return template, methods, found.groupdict()
        return None


class MethodNotAllowed(ProblemError):
    status, title = 405, "Method Not Allowed"

    def __init__(self, detail: str, methods: list[str]) -> None:
        super().__init__(detail)
        self.headers["Allow"] = ", ".join(methods)


class SpecRoutesMiddleware:
    """Route as api.yaml says before connexion's router does (inside the exception middleware, so
    errors are problem documents).

    Starlette tries routes in the spec's order and takes the first whose template and method
    match, so ``GET /models/import`` reached ``GET /models/{model_id}`` ("no model with id
    import") and ``PATCH /models/import`` was a 405 allowing ``DELETE, GET``. Here the most
    specific template wins: a method it does not declare is a 405 whose ``Allow`` lists exactly
    its methods (HEAD goes with GET). An integer path parameter with more digits than Python turns
    into an int (its int-string limit; Starlette's converter raised a ValueError, a 500) is a 400
    naming the parameter.
    """

    def __init__(self, app: ASGIApp, paths: SpecPaths) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.paths.match(scope["path"]) if scope["type"] == "http" else None
        if found is not None:
            template, methods, values = found
            method = scope["method"]
            if method not in methods and not (method == "HEAD" and "GET" in methods):
                raise MethodNotAllowed(f"{template} allows {', '.join(methods)}, not {method[:20]}", methods)
            for name, maximum in self.paths.integers.get(template, {}).items():
                problem = long_number("path", name, values.get(name), maximum)
                if problem:
                    raise BadRequest(problem, parameter=name)
            guess = self.paths.media_types.get((template, method))
            if guess:
                assume_content_type(scope, guess)
        await self.app(scope, receive, send)


def assume_content_type(scope: Scope, media_type: str) -> None:
    """Give a body sent without a Content-Type the media type connexion's validator assumes for it
    (the operation's first), so the handler sees what was checked: it got the raw bytes instead
    (``POST /models/{id}/copy`` with ``null`` and no Content-Type was a 500)."""
    headers = Headers(scope=scope)
    if "content-type" not in headers and has_body(headers):
        scope["headers"] = [*scope["headers"], (b"content-type", media_type.encode("latin-1"))]


def has_body(headers: Headers) -> bool:
    """Whether the request says it has a body (a Content-Length above 0, or a chunked one)."""
    return headers.get("content-length") not in ("0", None) or "transfer-encoding" in headers


def long_number(kind: str, name: str, value: Any, maximum: int | None = None) -> str | None:
    """The problem with an integer parameter's text that has more digits than Python converts to an int
    (``sys.get_int_max_str_digits()``, 4300 by default), or None when it has fewer or is no number."""
    limit = sys.get_int_max_str_digits()  # 0: no limit
    if not isinstance(value, str) or not limit or len(value) <= limit:
        return None
    digits = value.strip().lstrip("+-")
    if not (digits.isascii() and digits.isdigit()) or len(digits) <= limit:
        return None
    bound = f"the maximum of {maximum}" if maximum is not None else f"the {limit} digits an integer may have"
    return f"{kind} parameter '{name}': a number of {len(digits)} digits is more than {bound}"


class AllowMiddleware:
    """Make a 405's ``Allow`` list every method api.yaml declares for the path (the most specific
    template's, as SpecRoutesMiddleware matches them).

    connexion routes each operation separately, so a 405 names only one route's methods.
    """

    def __init__(self, app: ASGIApp, paths: SpecPaths) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                found = self.paths.match(scope["path"])
                if found:
                    headers = MutableHeaders(scope=message)
                    headers["allow"] = ", ".join(found[1])
            await send(message)

        await self.app(scope, receive, send_with_allow)


class DisconnectMiddleware:
    """Tell event streams when their client hangs up.

    The server says so only through ``receive()``, which a stream's event generator never sees
    (and an ASGI 2.4 server's Starlette does not listen to), so it would go on polling for a
    client that is gone. For GET requests to ``.../events`` this listens for ``http.disconnect``
    alongside the handler (relaying every message on) and sets ``scope[DISCONNECTED]``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].endswith("/events"):
            await self.app(scope, receive, send)
            return
        gone = anyio.Event()
        scope[DISCONNECTED] = gone
        messages: asyncio.Queue[Message] = asyncio.Queue()

        async def watch() -> None:
            while True:
                message = await receive()
                await messages.put(message)
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await self.app(scope, messages.get, send)
        finally:
            watcher.cancel()


def disconnected(scope: Scope) -> anyio.Event | None:
    """The event DisconnectMiddleware sets when this request's client hangs up (None: not watched)."""
    return scope.get(DISCONNECTED)


def validator_map(spool_dir: Path, on_file: Callable[[SpooledFile], None] | None = None) -> dict[str, Any]:
    """connexion's validators, with ours for parameters and for multipart bodies spooled to ``spool_dir``
    (``on_file`` is told of each file part as it begins to arrive)."""

    def new_path() -> Path:
        return spool_dir / temp_name(".part")

    spooling = {"new_path": staticmethod(new_path), "on_file": staticmethod(on_file) if on_file else None}
    multipart = type("StreamingMultipartValidator", (StreamingMultipartValidator,), spooling)
    return {
        "parameter": NamingParameterValidator,
        "body": MediaTypeDict(
            {**VALIDATOR_MAP["body"], "*/*json": Utf8JSONValidator, "multipart/form-data": multipart}
        ),
    }


class NamingParameterValidator(ParameterValidator):
    """Like connexion's, but an error says which parameter is wrong, without a schema dump,
    and each parameter is checked once."""

    def __init__(self, parameters: list[dict], *args: Any, **kwargs: Any) -> None:
        # connexion appends a path's shared parameters to the operation's own list each time
        # one of its middlewares builds the operation, so {model_id} arrives six times; keep the
        # first of each (the operation's own definition wins over the path's, as OpenAPI says).
        unique: dict[tuple[str, str], dict] = {}
        for parameter in parameters:
            unique.setdefault((parameter["in"], parameter["name"]), parameter)
        super().__init__(list(unique.values()), *args, **kwargs)

    @staticmethod
    def validate_parameter(parameter_type: str, value: Any, param: dict, param_name: str | None = None) -> str | None:
        if value is None or (is_nullable(param) and is_null(value)):
            return ParameterValidator.validate_parameter(parameter_type, value, param, param_name)
        schema = param.get("schema", param)
        name = param_name or param["name"]
        if schema.get("type") in ("integer", "number"):
            # connexion could not make an int of it (it stays text): say why, not "is not of type".
            problem = long_number(parameter_type, name, value, schema.get("maximum"))
            if problem:
                return problem
            if isinstance(value, float) and not math.isfinite(value):  # NaN, inf, 1e999: float() takes them
                return f"{parameter_type} parameter '{name}': {value} is not a finite number"
        validator = _cached_validator(schema, _draft4)
        try:
            validator.validate(value)
        except ValidationError as exc:
            message = exc.message
            if isinstance(value, str) and len(value) > 60:  # the message starts with the value: not all of it
                message = message.replace(repr(value), repr(value[:40]) + f" (… {len(value)} characters)", 1)
            return f"{parameter_type} parameter '{name}': {message}"
        return None


_VALIDATORS: dict[int, tuple[dict, Any]] = {}


def _draft4(schema: dict) -> Draft4Validator:
    return Draft4Validator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)


def _cached_validator(schema: dict, build: Callable[[dict], Any]) -> Any:
    """One jsonschema validator per schema, not one per request: building one costs more than
    most validations. Keyed by identity; the spec's schema dicts live as long as the app."""
    hit = _VALIDATORS.get(id(schema))
    if hit is None or hit[0] is not schema:
        hit = _VALIDATORS[id(schema)] = (schema, build(schema))
    return hit[1]


# The shapes of schema that all_valid() decides by itself: numbers, and arrays of them (or of
# such arrays) with bounds on their length, as the spec's rows of points are.
_ARRAY_KEYS = {"type", "minItems", "maxItems", "items", "description"}


def all_valid(schema: dict, instance: Any) -> bool:
    """True if ``instance`` certainly matches ``schema`` (a number, or an array of such with length
    bounds); False if it does not or the schema is of another shape, for jsonschema to decide."""
    if schema == {"type": "number"}:  # bool is not a number in JSON Schema; NaN and Infinity are not here
        return _finite([instance]) if type(instance) in (float, int) else False
    if schema.get("x-kmeans-row"):  # a row of cells (api.yaml's Row): an array or an object
        cells = instance if type(instance) is list else instance.values() if type(instance) is dict else None
        return bool(cells) and _cells_valid(cells)
    if schema.get("type") != "array" or not schema.keys() <= _ARRAY_KEYS or type(instance) is not list:
        return False
    if not schema.get("minItems", 0) <= len(instance) <= schema.get("maxItems", len(instance)):
        return False
    items = schema.get("items", {})
    if items == {"type": "number"}:
        return {type(value) for value in instance} <= {float, int} and _finite(instance)
    return all(all_valid(items, value) for value in instance)


def _finite(numbers: list) -> bool:
    """Whether every number (a float or int) is a finite float64: their sum is finite in one C
    loop, or one by one when the sum overflowed; an int past float64's range fails."""
    try:
        return math.isfinite(sum(numbers)) or all(math.isfinite(v) for v in numbers)
    except OverflowError:
        return False


_CELL_TYPES = {float, int, bool, type(None)}
MAX_CELL_TEXT = 10000  # api.yaml's Cell: maxLength of a text value


def _cells_valid(cells: Any) -> bool:
    """Whether every value is a number, a boolean, null or a short enough string (api.yaml's Cell)."""
    kinds = {type(v) for v in cells}
    if kinds <= _CELL_TYPES:
        return True
    return kinds <= _CELL_TYPES | {str} and all(len(v) <= MAX_CELL_TEXT for v in cells if type(v) is str)


def _items(validator: Any, items: Any, instance: Any, schema: dict) -> Any:
    """jsonschema's ``items``, but a list of numbers (or of rows of numbers) is checked in one pass:
    1,000 rows of 8 took jsonschema 40 ms. Only a list that fails the pass is walked item by item,
    so errors are jsonschema's own."""
    if isinstance(items, dict) and type(instance) is list and all(all_valid(items, value) for value in instance):
        return
    yield from Draft4Validator.VALIDATORS["items"](validator, items, instance, schema)


def _type(validator: Any, types: Any, instance: Any, schema: dict) -> Any:
    """jsonschema's ``type``, but a number is finite: NaN and Infinity (JSON bodies may carry them
    as an extension) or a literal past float64's range (1e999, read as inf) are not numbers here
    (every comparison with NaN is false, so ``minimum``/``maximum`` alone would let it pass; every
    bounded field of the spec has a ``type``)."""
    if type(instance) is float and not math.isfinite(instance):
        yield ValidationError(f"{instance} is not a finite number")
        return
    numeric = "number" in (types if isinstance(types, list) else [types])
    if type(instance) is int and numeric and not _finite([instance]):
        yield ValidationError(f"an integer of {len(str(abs(instance)))} digits does not fit in a 64-bit float")
        return
    yield from Draft4RequestValidator.VALIDATORS["type"](validator, types, instance, schema)  # with nullable


FastRequestValidator = extend(
    Draft4RequestValidator,
    {"items": _items, "type": _type},
)


MAX_JSON_DEPTH = 64  # arrays and objects in one another; the spec's deepest document needs 5
_NOT_JSON_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_JSON_STEP = np.zeros(256, np.int8)
_JSON_STEP[list(b"[{")] = 1
_JSON_STEP[list(b"]}")] = -1


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in the JSON document ``text``, without parsing it (so
    without recursion): brackets in strings do not count. About 1 ms a MB for rows of numbers."""
    data = text.encode("utf-8", "surrogatepass")
    if b"\\" in data:  # escaped backslashes and quotes go first, so every '"' left opens or closes a string
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    codes = np.frombuffer(data.translate(None, _NOT_JSON_STRUCTURE), np.uint8)
    steps = _JSON_STEP[codes]
    if b'"' in data:
        steps[(np.cumsum(codes == ord('"'), dtype=np.int32) & 1).astype(bool)] = 0
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


class _LongInteger:
    """What the second parse of a body with a too long integer puts in its place, to find where it is."""

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))


def _path_to(document: Any, target: Any) -> list[Any] | None:
    """The keys and indexes that lead to ``target`` in ``document`` (iteratively: no recursion)."""
    pending: list[tuple[Any, list[Any]]] = [(document, [])]
    while pending:
        value, path = pending.pop()
        if value is target:
            return path
        if isinstance(value, dict):
            pending.extend((v, [*path, k]) for k, v in value.items())
        elif isinstance(value, list):
            pending.extend((v, [*path, i]) for i, v in enumerate(value))
    return None


def parse_json(text: str, what: str = "the JSON body") -> Any:
    """``json.loads``, with a client's error for what Python's parser raises on hostile input:
    nesting deeper than MAX_JSON_DEPTH (a RecursionError in the parser, in jsonschema or in a
    handler otherwise) and integers longer than Python's int-string limit (a ValueError), whose
    problem names the field. ``what`` names the document in the problem's detail."""
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH:
        raise BadRequest(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequestProblem(detail=str(exc)) from None
    except RecursionError:  # only on a thread with little stack left; the depth check makes it rare
        raise BadRequest(f"{what} is nested too deeply to be read") from None
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        pass
    limit = sys.get_int_max_str_digits()
    longs: list[_LongInteger] = []

    def parse_int(digits: str) -> Any:
        if len(digits) <= limit:
            return int(digits)
        longs.append(_LongInteger(digits))
        return longs[-1]

    document = json.loads(text, parse_int=parse_int)
    path = _path_to(document, longs[0]) or []
    field = ".".join(str(key) for key in path)
    where = f"the JSON field '{field}'" if field else what
    raise BadRequest(
        f"{where} is an integer of {longs[0].digits} digits; integers may have at most {limit} digits",
        parameter=field or None,
    )


class Utf8JSONValidator(JSONRequestBodyValidator):
    """Like connexion's, but a body that is not UTF-8 is a 400, not an unhandled UnicodeDecodeError,
    hostile JSON (nested very deep, integers of thousands of digits) is a 400 (see ``parse_json``),
    and the schema's validator is built once."""

    @property
    def _validator(self) -> Any:
        return _cached_validator(
            self._schema, lambda schema: FastRequestValidator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)
        )

    async def _parse(self, stream: Any, scope: Scope) -> Any:
        data = b"".join([piece async for piece in stream])
        try:
            text = data.decode(self._encoding)
        except UnicodeDecodeError as exc:
            detail = f"the JSON body is not valid {self._encoding}: {exc.reason} at byte {exc.start}"
            raise BadRequestProblem(detail=detail) from None
        except LookupError:
            raise UnsupportedMediaType(
                f"the JSON body's charset {self._encoding[:40]!r} is not one this service knows; send UTF-8",
                parameter="Content-Type",
            ) from None
        body = parse_json(text) if text else None
        # Handlers of operations that also take CSV read it from here instead of parsing it again.
        scope[JSON_BODY] = body
        return body

    def _validate(self, body: Any) -> dict | None:
        try:
            if not self._nullable and body is None:
                raise BadRequestProblem("Request body must not be empty")
            try:
                return self._validator.validate(body)
            except ValidationError as error:
                # In a oneOf/anyOf (explicit init centers or a method name), jsonschema names the
                # alternatives; a number that is not finite is what the client must hear of.
                error = _not_finite_within(error) or error
                path = ".".join(str(item) for item in error.absolute_path)
                raise BadRequestProblem(detail=error.message + (f" - '{path}'" if path else "")) from None
        except BadRequestProblem as exc:
            # jsonschema's message starts with the value that is wrong: a long one is shortened
            # (the end, which names the field, stays).
            if exc.detail and len(exc.detail) > 500:
                exc.detail = f"{exc.detail[:300]} … {exc.detail[-150:]}"
            raise
        except RecursionError:
            raise BadRequest("the JSON body is nested too deeply to be checked") from None


def _not_finite_within(error: ValidationError) -> ValidationError | None:
    """The first error under ``error`` (itself included) that a number is not finite, if any."""
    if error.message.endswith(_NOT_FINITE):
        return error
    return next(filter(None, map(_not_finite_within, error.context or [])), None)


_NOT_FINITE = ("is not a finite number", "does not fit in a 64-bit float")


class StreamingMultipartValidator(MultiPartFormDataValidator):
    """Validates multipart bodies without holding them in memory (see the module docstring)."""

    new_path: Callable[[], Path]
    on_file: Callable[[SpooledFile], None] | None = None

    async def wrap_receive(self, receive: Receive, *, scope: Scope) -> tuple[Receive, Scope]:
        headers = Headers(scope=scope)
        if headers.get("content-length") == "0":
            raise BadRequestProblem("RequestBody is required")
        spooler = MultipartSpooler(headers.get("content-type", ""), self.new_path, self.on_file)
        try:
            async for chunk in body_chunks(receive):
                spooler.write(chunk)
            spooler.finish()
        finally:
            spooler.close()
            scope.setdefault(SPOOLED, []).extend(spooler.files)
        self._validate(self._form(spooler))
        body, content_type = _replay(spooler)
        new_scope = scope.copy()
        new_scope["headers"] = copy.deepcopy(scope["headers"])
        replaced = MutableHeaders(scope=new_scope)
        replaced["content-type"] = content_type
        replaced["content-length"] = str(len(body))
        new_scope[FILES] = {f.field: f for f in spooler.files}
        message = {"type": "http.request", "body": body, "more_body": False}
        return self._insert_messages(receive, messages=[message]), new_scope

    def _form(self, spooler: MultipartSpooler) -> dict[str, Any]:
        """The form as connexion's validator would see it: typed fields, files as ""."""
        properties = self._schema.get("properties", {})
        for name, schema in properties.items():
            if schema.get("format") != "binary":
                continue
            if any(field == name for field, _ in spooler.fields) or any(
                f.field == name and not f.filename for f in spooler.files
            ):
                # A plain field, or a form sent with no file chosen (filename=""), is no upload.
                raise BadRequest(
                    f"the form field {name!r} must be a file upload with a file name"
                    f" (with curl: -F '{name}=@data.csv')",
                    parameter=name,
                )
        fields: dict[str, list[str]] = {}
        for name, value in spooler.fields:
            fields.setdefault(name, []).append(value)
        data = self._uri_parser.resolve_form(fields) if self._uri_parser is not None else fields
        for spooled in spooler.files:
            schema = properties.get(spooled.field, {})
            count = sum(f.field == spooled.field for f in spooler.files)
            data[spooled.field] = [""] * count if schema.get("type") == "array" or count > 1 else ""
        return data


def _replay(spooler: MultipartSpooler) -> tuple[bytes, str]:
    """A small multipart body with the same fields and empty file parts."""
    boundary = secrets.token_hex(16)
    lines: list[bytes] = []
    for name, value in spooler.fields:
        lines += [f"--{boundary}", f'Content-Disposition: form-data; name="{_quote(name)}"', "", value]
    for spooled in spooler.files:
        disposition = f'form-data; name="{_quote(spooled.field)}"; filename="{_quote(spooled.filename or "")}"'
        lines += [f"--{boundary}", f"Content-Disposition: {disposition}", "Content-Type: text/csv", "", ""]
    lines.append(f"--{boundary}--")
    body = b"\r\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\r\n"
    return body, f"multipart/form-data; boundary={boundary}"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")


def spooled_file(scope: Scope, field: str) -> SpooledFile | None:
    """The file a multipart field carried, already on disk."""
    return scope.get(FILES, {}).get(field)
