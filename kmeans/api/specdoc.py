"""The spec as written: ``GET {base}/openapi.json`` and ``.yaml`` serve api.yaml itself, with its
``$ref``s and component names (connexion serves every ``$ref`` expanded, connexion issue #2127:
generators then name types per operation), and with the server's own origin as the default of
the ``origin`` server variable, so a client generated off a server's spec knows where it is."""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

# A Host header that is a host name or address with an optional port (anything else is not echoed).
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def base_path(spec: dict) -> str:
    """The path the spec's first server puts the API under (``/kmeans``), its variables at their defaults."""
    server = spec["servers"][0]
    url = server["url"]
    for name, variable in server.get("variables", {}).items():
        url = url.replace("{" + name + "}", str(variable["default"]))
    return urlparse(url).path.rstrip("/")


class SpecDocumentMiddleware:
    """Answers GET/HEAD of ``{base}/openapi.json`` and ``{base}/openapi.yaml`` with ``spec``."""

    def __init__(self, app: ASGIApp, spec: dict) -> None:
        self.app = app
        self.spec = copy.deepcopy(spec)  # as written, whatever connexion does to its own copy
        base = base_path(spec)
        self.documents = {f"{base}/openapi.json": "json", f"{base}/openapi.yaml": "yaml"}
        self.render = lru_cache(maxsize=16)(self._render)

    def _render(self, kind: str, origin: str | None) -> bytes:
        spec = self.spec
        if origin is not None and "origin" in spec["servers"][0].get("variables", {}):
            spec = {**spec, "servers": copy.deepcopy(spec["servers"])}
            spec["servers"][0]["variables"]["origin"]["default"] = origin
        if kind == "json":
            return json.dumps(spec, separators=(",", ":")).encode()
        return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = self.documents.get(scope["path"]) if scope["type"] == "http" else None
        if kind is None or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body = self.render(kind, _origin(scope))
        media = "application/json" if kind == "json" else "application/yaml"
        headers = [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _origin(scope: Scope) -> str | None:
    """``scheme://host[:port]`` the request was sent to, from its Host header (None if odd)."""
    host: Any = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
    if not host or not _HOST.match(host):
        return None
    return f"{scope.get('scheme', 'http')}://{host}"
