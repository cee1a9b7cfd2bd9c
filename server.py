"""The one place that wires the app: ``build_app(settings)``; ``server:app`` for gunicorn.

Run the embedded server with ``python server.py`` (127.0.0.1:8080), or in production
``gunicorn -k uvicorn_worker.UvicornWorker server:app``; either on connexion's AsyncApp (the
default) or, with ``KMEANS_APP=flask``, on its FlaskApp.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import getpass
import json
import logging
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# connexion imports Starlette's test client, which warns about httpx at import time.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

import connexion
import yaml
from connexion.exceptions import Unauthorized as ConnexionUnauthorized
from connexion.jsonifier import Jsonifier
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.middleware import MiddlewarePosition

from kmeans.access import ROLES, Access, install_log_redaction, is_loopback, token_missing
from kmeans.api import adapter
from kmeans.api.security import AccessMiddleware, RoleMiddleware, malformed_header
from kmeans.api.specdoc import SpecDocumentMiddleware, base_path
from kmeans.api.validation import (
    AllowMiddleware,
    BodyMiddleware,
    DisconnectMiddleware,
    RequestLimitsMiddleware,
    SpecPaths,
    SpecRoutesMiddleware,
    validator_map,
)
from kmeans.config import Settings, parse_duration
from kmeans.errors import OUT_OF_SPACE, InsufficientStorage, ProblemError, out_of_space
from kmeans.service import KMeansService
from kmeans.store import Store

ROOT = Path(__file__).resolve().parent
PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("kmeans")
# connexion warns on every request to an operation that takes several content types; ours do
# so on purpose (multipart, raw CSV and JSON), so the warning is only noise.
logging.getLogger("connexion.operations.openapi3").setLevel(logging.ERROR)
# No secret in any log line, in every server mode: this module is imported by `python server.py`
# and by every gunicorn worker (server:app), so each record of the process is redacted as it is
# made: uvicorn's access log (the raw path with its query string), gunicorn's, connexion's (its
# 400s echo parameter values), ours, and Python's last-resort stderr.
install_log_redaction()


def problem_response(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    """Render a ProblemError (or any unexpected error, without its traceback) as problem+json."""
    if isinstance(exc, ConnexionUnauthorized):  # connexion found no usable bearer token
        exc = malformed_header() if _request.headers.get("authorization") else token_missing()
    if out_of_space(exc):  # a full disk is the operator's to fix, not a bug: 507, no traceback
        log.error("the data dir is out of space: %s", exc)
        exc = InsufficientStorage(OUT_OF_SPACE)
    elif not isinstance(exc, ProblemError):
        log.error("unhandled error", exc_info=exc)
        exc = ProblemError("the server hit an unexpected error; it has been logged")
    return ConnexionResponse(
        status_code=exc.status,
        body=json.dumps(exc.to_problem()),
        content_type=PROBLEM_JSON,
        headers=exc.headers,
    )


def build_app(
    settings: Settings | None = None, app_class: type[connexion.AsyncApp] | type[connexion.FlaskApp] | None = None
) -> connexion.AsyncApp | connexion.FlaskApp:
    """The connexion app for ``settings`` (from the environment when not given), of ``app_class``
    (AsyncApp or FlaskApp; by default the one ``settings.app``, KMEANS_APP, names)."""
    settings = settings or Settings.from_env()
    app_class = app_class or adapter.app_class(settings.app)
    service = KMeansService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        # Each server process runs queued fits and recovers stalled ones while it serves.
        service.start()
        try:
            yield
        finally:
            service.stop()

    # AsyncApp (the default): the handlers (plain functions) run in its thread pool behind
    # Starlette, with no WSGI bridge between the server and them. FlaskApp: they run as Flask views
    # in WSGI threads, adapted by kmeans.api.adapter; every middleware below is the same ASGI code.
    app = app_class(
        __name__,
        specification_dir=ROOT,
        jsonifier=Jsonifier(json, separators=(",", ":")),
        lifespan=lifespan,
        resolver=adapter.resolver(app_class),
    )
    if adapter.is_flask(app_class):
        adapter.configure_flask(app)
    spec = yaml.safe_load((ROOT / "api.yaml").read_text())
    if not service.access.required():
        # No tokens yet: requests without one are let through connexion's security check; the
        # RoleMiddleware serves them as the local user, and only to local clients, until the
        # first token exists (then they get 401, from the next request on, in every process).
        spec["security"] = [*spec["security"], {}]
        log.warning(
            "no tokens exist in %s: serving without authentication, to clients on this machine only%s;"
            " create the first admin token with `python server.py create-token --role admin`",
            settings.data_dir,
            " (and, with --insecure, to every client)" if settings.insecure else "",
        )
    authored = copy.deepcopy(spec)  # served as written (connexion's own copy is dereferenced)
    app.add_api(
        spec,
        strict_validation=True,
        validate_responses=False,
        validator_map=validator_map(service.store.root / "tmp", on_file=service.parse_as_it_arrives),
    )
    app.service = service  # for tests and tools holding the app
    app.add_error_handler(ProblemError, problem_response)
    app.add_error_handler(ConnexionUnauthorized, problem_response)
    app.add_error_handler(Exception, problem_response)
    app.add_middleware(AccessMiddleware, position=MiddlewarePosition.BEFORE_SECURITY, service=service)
    roles = {
        operation["operationId"]: operation["x-kmeans-role"]
        for item in spec["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "x-kmeans-role" in operation
    }
    app.add_middleware(RoleMiddleware, position=MiddlewarePosition.BEFORE_VALIDATION, roles=roles)
    # Bodies are read on the event loop, after the token and role checks, before any handler thread.
    app.add_middleware(
        BodyMiddleware, position=MiddlewarePosition.BEFORE_VALIDATION, spool_dir=service.store.root / "tmp"
    )
    app.add_middleware(
        RequestLimitsMiddleware,
        position=MiddlewarePosition.BEFORE_SWAGGER,
        max_bytes=settings.max_upload_bytes,
        idle_timeout=settings.body_idle_timeout,
    )
    paths = spec_paths(spec)
    # Before connexion's router: the most specific path of the spec wins (its 405s are ours).
    app.add_middleware(SpecRoutesMiddleware, position=MiddlewarePosition.BEFORE_SWAGGER, paths=paths)
    app.add_middleware(DisconnectMiddleware, position=MiddlewarePosition.BEFORE_SWAGGER)
    app.add_middleware(SpecDocumentMiddleware, position=MiddlewarePosition.BEFORE_SWAGGER, spec=authored)
    # Outside the exception middleware, which is where the router's 405s are rendered.
    app.add_middleware(AllowMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION, paths=paths)
    if adapter.is_flask(app_class):
        # Innermost, around the Flask app: streamed answers are sent from the event loop.
        app.add_middleware(adapter.StreamMiddleware, position=MiddlewarePosition.BEFORE_CONTEXT)
    return app


METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def spec_paths(spec: dict) -> SpecPaths:
    """The spec's full paths (with the server's base path), their methods and integer path parameters."""
    base = base_path(spec)

    def resolve(node: dict) -> dict:
        while "$ref" in node:  # local references only, as api.yaml has
            target: Any = spec
            for key in node["$ref"].removeprefix("#/").split("/"):
                target = target[key]
            node = target
        return node

    paths: dict[str, list[str]] = {}
    integers: dict[str, dict[str, int | None]] = {}
    media_types: dict[tuple[str, str], str] = {}
    for path, item in spec["paths"].items():
        paths[base + path] = [m.upper() for m in item if m in METHODS]
        for method in (m for m in item if m in METHODS):
            content = list(item[method].get("requestBody", {}).get("content", {}))
            if content:
                media_types[(base + path, method.upper())] = content[0]
        declared = [*item.get("parameters", []), *(p for m in METHODS for p in item.get(m, {}).get("parameters", []))]
        for parameter in map(resolve, declared):
            schema = resolve(parameter.get("schema", {}))
            if parameter.get("in") == "path" and schema.get("type") == "integer":
                integers.setdefault(base + path, {})[parameter["name"]] = schema.get("maximum")
    return SpecPaths(paths, integers, media_types)


def __getattr__(name: str) -> Any:
    # ``server:app`` is built on first access, so importing this module has no side effects.
    if name == "app":
        globals()["app"] = build_app()
        return globals()["app"]
    raise AttributeError(name)


def _seconds(text: str) -> int:
    """--expires-in as seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def create_token(args: argparse.Namespace) -> None:
    """Print a new token for the data dir (the first admin's, typically) to stdout, once."""
    settings = Settings.from_env(data_dir=args.data_dir)
    try:
        record, secret = Access(Store(settings.data_dir)).create_token(
            args.role, args.project, args.name, args.expires_in
        )
    except ProblemError as exc:
        raise SystemExit(f"create-token: {exc.detail}") from None
    where = record["project"] or "every project"
    expiry = f", expires {record['expires_at']}" if record["expires_at"] else ""
    print(f"created {record['role']} token {record['id']} ({where}{expiry}) in {settings.data_dir.resolve()};"
          " it is shown only now. Servers of this data dir now require tokens.", file=sys.stderr)
    print(secret)


def _read_password() -> str:
    """The new user's password: asked twice on a terminal, else the first line of stdin (never an argument,
    which other users of the machine could read in the process list)."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise SystemExit("create-user: the passwords differ")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def create_user(args: argparse.Namespace) -> None:
    """Create a user of the data dir (the first admin's, typically) with a password read from the terminal or stdin."""
    settings = Settings.from_env(data_dir=args.data_dir)
    memberships = []
    for member in args.member or []:
        project, _, role = member.partition(":")
        memberships.append({"project": project, "role": role or "guest"})
    try:
        record = Access(Store(settings.data_dir)).create_user(args.name, _read_password(), args.admin, memberships)
    except ProblemError as exc:
        raise SystemExit(f"create-user: {exc.detail}") from None
    where = "an admin of every project" if record["admin"] else ", ".join(
        f"{m['role']} in {m['project']}" for m in record["memberships"]
    ) or "a member of no project yet"
    print(f"created user {record['name']} ({record['id']}, {where}) in {settings.data_dir.resolve()};"
          " sign in with POST /kmeans/auth/token or `kmeans login`. Servers of this data dir now require"
          " a token or a sign-in.", file=sys.stderr)
    print(record["id"])


def main(argv: list[str] | None = None) -> None:
    """Serve with the embedded uvicorn server, or run one of the admin commands."""
    parser = argparse.ArgumentParser(description="Run kmeans-service.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    parser.add_argument("--data-dir", help="where state is kept (default $KMEANS_DATA_DIR or ./kmeans-data)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve clients on other machines although no token exists (KMEANS_INSECURE=1)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    token = commands.add_parser(
        "create-token", help="create a token and print it (once); the first admin token is made this way"
    )
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--project", help="the project of a contributor or guest token (default: default)")
    token.add_argument("--name", help="what the token is for")
    token.add_argument("--expires-in", type=_seconds, help="lifetime: seconds, or 90m, 12h, 30d")
    token.add_argument("--data-dir", dest="token_data_dir", help="the data dir (as for serving)")
    user = commands.add_parser(
        "create-user",
        help="create a user; the password is asked for (or read from stdin's first line); the first admin may be one",
    )
    user.add_argument("name", help="the sign-in name")
    user.add_argument("--admin", action="store_true", help="an admin of every project")
    user.add_argument(
        "--member", action="append", metavar="PROJECT:ROLE", help="a membership (role guest or contributor); repeatable"
    )
    user.add_argument("--data-dir", dest="user_data_dir", help="the data dir (as for serving)")
    args = parser.parse_args(argv)
    if args.command == "create-token":
        args.data_dir = args.token_data_dir or args.data_dir
        create_token(args)
        return
    if args.command == "create-user":
        args.data_dir = args.user_data_dir or args.data_dir
        create_user(args)
        return

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(data_dir=args.data_dir, insecure=args.insecure or None)
    exposed = not is_loopback(args.host) and not settings.insecure
    if exposed and not Access(Store(settings.data_dir), settings.auth_required).required():
        parser.exit(
            2,
            f"refusing to listen on {args.host} without authentication: no token or user exists in"
            f" {settings.data_dir}. Create one with `python server.py create-token --role admin`"
            " (clients then send it as a bearer token) or `python server.py create-user NAME --admin`,"
            " or pass --insecure to serve everyone.\n",
        )
    log.info("data dir %s; Swagger UI at http://%s:%d/kmeans/ui/", settings.data_dir.resolve(), args.host, args.port)
    uvicorn.run(build_app(settings), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
