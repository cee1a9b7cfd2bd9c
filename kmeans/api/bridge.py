"""The bridge from the ASGI server to Flask (WSGI), with fewer thread hand-offs than a2wsgi's.

connexion runs Flask behind a2wsgi, whose worker thread waits for the event loop to accept
every message it sends (response start, each body chunk, the end): three or more round trips
between threads for a one-chunk response, which costs more than most handlers' own work.
Here the worker thread hands messages over without waiting, and waits only when more than
``send_queue_size`` are still unsent (back-pressure for long streams).
"""

from __future__ import annotations

import threading
from typing import Any

from a2wsgi.wsgi import WSGIMiddleware, WSGIResponder


class _EagerResponder(WSGIResponder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.send_queue.maxsize)

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
            responder = _EagerResponder(self.app, self.executor, self.send_queue_size)
            return await responder(scope, receive, send)
        return await super().__call__(scope, receive, send)
