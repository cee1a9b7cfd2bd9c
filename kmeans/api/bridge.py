"""The bridge from the ASGI server to Flask (WSGI), with fewer thread hand-offs than a2wsgi's.

connexion runs Flask behind a2wsgi, whose worker thread waits for the event loop at every
step: to read each piece of the request body, and to hand over each message it sends
(response start, each body chunk, the end). For a small request that is four or more round
trips between threads, which costs more than most handlers' own work. Here small bodies are
read before the thread starts, and the thread hands messages over without waiting, unless
more than ``send_queue_size`` are still unsent (back-pressure for long streams). Large
bodies still stream in piece by piece, as the upload handlers need.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from typing import Any

from a2wsgi.wsgi import Body, WSGIMiddleware, WSGIResponder, build_environ

PREREAD_BYTES = 65536  # bodies up to this size are read before the handler's thread starts


class _EagerResponder(WSGIResponder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.send_queue.maxsize)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = Body(self.loop, receive)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) <= PREREAD_BYTES:
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                body.buffer.extend(message.get("body", b""))
                more = message.get("more_body", False)
            body._has_more = False
        environ = build_environ(scope, body)
        sender = self.loop.create_task(self.sender(send))
        try:
            call = functools.partial(contextvars.copy_context().run, self.wsgi)
            await self.loop.run_in_executor(self.executor, call, environ, self.start_response)
            await self.send_queue.put(None)
            await sender
            if self.exc_info is not None:
                raise self.exc_info[0].with_traceback(self.exc_info[1], self.exc_info[2])
        finally:
            if not sender.done():
                sender.cancel()

    def send(self, message: Any) -> None:
        self._slots.acquire()
        self.loop.call_soon_threadsafe(self.send_queue.put_nowait, message)

    async def sender(self, send: Any) -> None:
        while True:
            message = await self.send_queue.get()
            if message is None:  # put by the event loop itself when the app has returned
                break
            self._slots.release()
            await send(message)


class EagerWSGIMiddleware(WSGIMiddleware):
    """a2wsgi's WSGIMiddleware with the eager responder."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            return await _EagerResponder(self.app, self.executor, self.send_queue_size)(scope, receive, send)
        return await super().__call__(scope, receive, send)
