"""The one place that wires the app: ``build_app(settings)``; ``server:app`` for gunicorn.

Run the embedded server with ``python server.py`` (127.0.0.1:8080), or in production
``gunicorn -k uvicorn_worker.UvicornWorker server:app``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# connexion imports Starlette's test client, which warns about httpx at import time.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

import connexion
import yaml
from connexion.jsonifier import Jsonifier
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.middleware import MiddlewarePosition

from kmeans.api.bridge import EagerWSGIMiddleware
from kmeans.api.validation import AllowMiddleware, DisconnectMiddleware, RequestLimitsMiddleware, validator_map
from kmeans.config import Settings
from kmeans.errors import ProblemError
from kmeans.service import KMeansService

ROOT = Path(__file__).resolve().parent
PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("kmeans")
# connexion warns on every request to an operation that takes several content types; ours do
# so on purpose (multipart, raw CSV and JSON), so the warning is only noise.
logging.getLogger("connexion.operations.openapi3").setLevel(logging.ERROR)


def problem_response(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    """Render a ProblemError (or any unexpected error, without its traceback) as problem+json."""
    if not isinstance(exc, ProblemError):
        log.error("unhandled error", exc_info=exc)
        exc = ProblemError("the server hit an unexpected error; it has been logged")
    return ConnexionResponse(
        status_code=exc.status,
        body=json.dumps(exc.to_problem()),
        content_type=PROBLEM_JSON,
        headers=exc.headers,
    )


def build_app(settings: Settings | None = None) -> connexion.FlaskApp:
    """The connexion app for ``settings`` (from the environment when not given)."""
    settings = settings or Settings.from_env()
    service = KMeansService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        # Each server process runs queued fits and recovers stalled ones while it serves.
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = connexion.FlaskApp(
        __name__, specification_dir=ROOT, jsonifier=Jsonifier(json, separators=(",", ":")), lifespan=lifespan
    )
    app.add_api(
        "api.yaml",
        strict_validation=True,
        validate_responses=False,
        validator_map=validator_map(service.store.root / "tmp"),
    )
    app.app.extensions["kmeans"] = service
    # connexion's documented place for the WSGI side (see FlaskApp.add_wsgi_middleware).
    app._middleware_app.asgi_app = EagerWSGIMiddleware(app.app.wsgi_app)
    app.add_error_handler(ProblemError, problem_response)
    app.add_error_handler(Exception, problem_response)
    app.add_middleware(
        RequestLimitsMiddleware, position=MiddlewarePosition.BEFORE_SWAGGER, max_bytes=settings.max_upload_bytes
    )
    app.add_middleware(DisconnectMiddleware, position=MiddlewarePosition.BEFORE_SWAGGER)
    spec = yaml.safe_load((ROOT / "api.yaml").read_text())
    base = spec["servers"][0]["url"].rstrip("/")
    paths = {
        base + path: [m.upper() for m in item if m in ("get", "put", "post", "delete", "patch", "head", "options")]
        for path, item in spec["paths"].items()
    }
    # Outside the exception middleware, which is where the 405 is rendered.
    app.add_middleware(AllowMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION, paths=paths)
    return app


def __getattr__(name: str) -> Any:
    # ``server:app`` is built on first access, so importing this module has no side effects.
    if name == "app":
        globals()["app"] = build_app()
        return globals()["app"]
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> None:
    """Serve with the embedded uvicorn server."""
    import uvicorn

    parser = argparse.ArgumentParser(description="Run kmeans-service.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    parser.add_argument("--data-dir", help="where state is kept (default $KMEANS_DATA_DIR or ./kmeans-data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(data_dir=args.data_dir)
    log.info("data dir %s; Swagger UI at http://%s:%d/kmeans/ui/", settings.data_dir.resolve(), args.host, args.port)
    uvicorn.run(build_app(settings), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
