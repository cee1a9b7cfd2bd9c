"""The one adapter between the handlers and connexion's two app classes, AsyncApp and FlaskApp.

Handlers are framework-neutral: they answer through :mod:`kmeans.api.media`, which builds
Starlette responses (or connexion's ``(body, status, headers)`` tuples for JSON), read their
request bodies from what BodyMiddleware and the multipart validator collected on the event
loop, and stream events from async generators. Under AsyncApp that is served as it is. Under
FlaskApp each handler is wrapped here: a Starlette response becomes the same Flask response
(status, headers and bytes), and a streamed one (CSV/JSON labels in pieces, Server-Sent Events)
is handed back to the ASGI layer by :class:`StreamMiddleware`, which sends it on the event loop,
exactly as AsyncApp would; so a stream holds no WSGI thread while it waits for events, and a
hang-up ends it the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import connexion
from connexion import context
from connexion.resolver import Resolver
from connexion.utils import get_function_from_name
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STREAM = "kmeans.stream"  # scope key: the StreamingResponse a Flask handler handed back to the ASGI layer
STREAM_HEADER = "x-kmeans-stream"  # marks the placeholder Flask response of a handed-back stream
# FlaskApp runs views in a2wsgi's own thread pool (10 threads by default); as many as AsyncApp's
# handler pool (anyio's default of 40) so that both app classes take the same load.
FLASK_THREADS = 40


def app_class(name: str) -> type[connexion.AsyncApp] | type[connexion.FlaskApp]:
    """The connexion app class a ``KMEANS_APP`` value names."""
    return connexion.FlaskApp if name == "flask" else connexion.AsyncApp


def is_flask(cls: type) -> bool:
    """Whether ``cls`` is connexion's FlaskApp (or a subclass of it)."""
    return isinstance(cls, type) and issubclass(cls, connexion.FlaskApp)


def resolver(cls: type) -> Resolver:
    """connexion's resolver (operationId -> function), with each handler adapted to ``cls``."""
    flask = is_flask(cls)

    def resolve(operation_id: str) -> Callable[..., Any]:
        function = get_function_from_name(operation_id)
        return flask_view(function) if flask else function

    return Resolver(function_resolver=resolve)


def flask_view(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` as a FlaskApp view: run in the WSGI thread, answered with a Flask response."""
    # A handler that AsyncApp runs on the event loop for small bodies (media.inline_small_json)
    # is a coroutine around the plain one; Flask views already run in a thread, so call that.
    handler = getattr(function, "thread_handler", function)

    @functools.wraps(handler)
    def view(*args: Any, **kwargs: Any) -> Any:
        return flask_response(handler(*args, **kwargs))

    return view


def flask_response(result: Any) -> Any:
    """A handler's answer as FlaskApp sends it (tuples are left to connexion's own serializer)."""
    import flask

    if isinstance(result, StreamingResponse):
        context.scope[STREAM] = result
        return flask.Response(status=result.status_code, headers=[(STREAM_HEADER, "1")])
    if isinstance(result, Response):
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in result.raw_headers]
        response = flask.Response(result.body, status=result.status_code, headers=headers)
        if not any(k.lower() == "content-type" for k, _ in headers):
            del response.headers["Content-Type"]  # werkzeug's text/html default; a 204 has none
        return response
    return result


class StreamMiddleware:
    """Send the streams FlaskApp handlers handed back (see :func:`flask_response`) on the event loop.

    Innermost of the middleware stack, around the Flask app: the placeholder response Flask sends
    is dropped and the StreamingResponse in ``scope[STREAM]`` is run as the ASGI app it is, with the
    request's own receive channel (so DisconnectMiddleware sees a hang-up as under AsyncApp).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handed_back = False

        async def send_or_hold(message: Message) -> None:
            nonlocal handed_back
            if message["type"] == "http.response.start" and STREAM in scope:
                handed_back = any(k == STREAM_HEADER.encode() for k, _ in message.get("headers", []))
            if not handed_back:
                await send(message)

        await self.app(scope, receive, send_or_hold)
        if handed_back:
            await scope.pop(STREAM)(scope, receive, send)


def configure_flask(app: connexion.FlaskApp) -> None:
    """Make a FlaskApp answer as AsyncApp does: as many handler threads, the same 404/405 problems."""
    import werkzeug.exceptions
    from a2wsgi import WSGIMiddleware

    bridge = app._middleware_app  # connexion's FlaskASGIApp: the Flask app behind a2wsgi
    bridge.asgi_app = WSGIMiddleware(bridge.app.wsgi_app, workers=FLASK_THREADS)
    app.app.register_error_handler(werkzeug.exceptions.HTTPException, _http_exception)


def _http_exception(exc: Any) -> Any:
    """Re-raise a Flask routing error (a path only Flask knows nothing of) as Starlette's, without
    werkzeug's long description, so that connexion renders the problem AsyncApp's router gives."""
    from starlette.exceptions import HTTPException

    raise HTTPException(exc.code)
