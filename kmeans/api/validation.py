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
import math
import re
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

from kmeans.errors import BadRequest, NotFound, PayloadTooLarge
from kmeans.multipart import MultipartSpooler, SpooledFile, remove
from kmeans.store import temp_name

DISCONNECTED = "kmeans.disconnected"  # scope key: threading.Event set when the client hangs up
SPOOLED = "kmeans.spooled"  # scope key: every file spooled for this request (for clean-up)
FILES = "kmeans.files"  # scope key: field name -> SpooledFile, for the handler
JSON_BODY = "kmeans.json"  # scope key: the JSON body as the validator parsed it, for the handler


class RequestLimitsMiddleware:
    """Refuse bodies over ``max_bytes`` (413) as they stream in; remove spooled files afterwards."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                raise BadRequest("the Content-Length header is not a number")
            if int(declared) > limit:
                raise PayloadTooLarge(too_large)
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(too_large)
            return message

        spooled: list[SpooledFile] = []
        scope[SPOOLED] = spooled
        try:
            await self.app(scope, limited_receive, send)
        finally:
            remove(spooled)


class AllowMiddleware:
    """Make a 405's ``Allow`` list every method api.yaml declares for the path.

    connexion routes each operation separately, so a 405 names only one route's methods.
    """

    def __init__(self, app: ASGIApp, paths: dict[str, list[str]]) -> None:
        self.app = app
        self.paths = [
            (re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"), sorted(methods))
            for template, methods in paths.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                methods = next((m for pattern, m in self.paths if pattern.match(scope["path"])), None)
                if methods:
                    headers = MutableHeaders(scope=message)
                    headers["allow"] = ", ".join(methods)
            await send(message)

        await self.app(scope, receive, send_with_allow)


class DisconnectMiddleware:
    """Tell streaming handlers when their client hangs up.

    The server says so only through ``receive()``, which a handler's event generator (running
    in a worker thread) never sees, so it would go on polling for a client that is gone. For
    GET requests to ``.../events`` this listens for ``http.disconnect`` alongside the
    handler (relaying every message on) and sets ``scope[DISCONNECTED]``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].endswith("/events"):
            await self.app(scope, receive, send)
            return
        gone = threading.Event()
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


def disconnected(scope: Scope) -> threading.Event:
    """The event DisconnectMiddleware sets when this request's client hangs up."""
    return scope.get(DISCONNECTED) or threading.Event()


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
        validator = _cached_validator(param.get("schema", param), _draft4)
        try:
            validator.validate(value)
        except ValidationError as exc:
            return f"{parameter_type} parameter '{param_name or param['name']}': {exc.message}"
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
    if schema == {"type": "number"}:
        return type(instance) is float or type(instance) is int  # bool is not a number in JSON Schema
    if schema.get("x-kmeans-row"):  # a row of cells (api.yaml's Row): an array or an object
        cells = instance if type(instance) is list else instance.values() if type(instance) is dict else None
        return bool(cells) and _cells_valid(cells)
    if schema.get("type") != "array" or not schema.keys() <= _ARRAY_KEYS or type(instance) is not list:
        return False
    if not schema.get("minItems", 0) <= len(instance) <= schema.get("maxItems", len(instance)):
        return False
    items = schema.get("items", {})
    if items == {"type": "number"}:
        return {type(value) for value in instance} <= {float, int}
    return all(all_valid(items, value) for value in instance)


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


def _bounded(keyword: str) -> Callable[..., Any]:
    """``minimum``/``maximum`` that also refuse NaN and infinities (JSON bodies may carry them as
    the NaN/Infinity extension): every comparison with NaN is false, so jsonschema lets it pass."""
    check = Draft4Validator.VALIDATORS[keyword]

    def bounded(validator: Any, bound: Any, instance: Any, schema: dict) -> Any:
        if isinstance(instance, float) and not math.isfinite(instance):
            yield ValidationError(f"{instance} is not a finite number")
            return
        yield from check(validator, bound, instance, schema)

    return bounded


FastRequestValidator = extend(
    Draft4RequestValidator, {"items": _items, "minimum": _bounded("minimum"), "maximum": _bounded("maximum")}
)


class Utf8JSONValidator(JSONRequestBodyValidator):
    """Like connexion's, but a body that is not UTF-8 is a 400, not an unhandled UnicodeDecodeError,
    and the schema's validator is built once."""

    @property
    def _validator(self) -> Any:
        return _cached_validator(
            self._schema, lambda schema: FastRequestValidator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)
        )

    async def _parse(self, stream: Any, scope: Scope) -> Any:
        try:
            body = await super()._parse(stream, scope)
        except UnicodeDecodeError as exc:
            detail = f"the JSON body is not valid {self._encoding}: {exc.reason} at byte {exc.start}"
            raise BadRequestProblem(detail=detail) from None
        # Handlers of operations that also take CSV read it from here instead of parsing it again.
        scope[JSON_BODY] = body
        return body


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
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise BadRequest("the client disconnected before the body was complete")
                spooler.write(message.get("body", b""))
                more = message.get("more_body", False)
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
