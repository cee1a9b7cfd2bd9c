"""Webhooks: a JSON POST to the client's ``callback_url`` when a fit ends.

Only http and https, and never to a private, loopback or otherwise internal address unless
the operator allows it (``KMEANS_WEBHOOK_ALLOW``): a fit request must not become a way to
make the server call into its own network. The address is checked when the model is created
and again before every delivery attempt (a name may resolve differently later).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from kmeans.errors import Unprocessable

log = logging.getLogger(__name__)


class RetryableDelivery(Exception):
    """The receiver was unreachable or answered 5xx/429: worth another try."""


def _allowed(host: str, address: ipaddress._BaseAddress, allow: list[str]) -> bool:
    for entry in allow:
        if entry.lower() == host.lower():
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def check_url(url: str, allow: list[str]) -> None:
    """Raise Unprocessable unless ``url`` is http(s) to a public address or an allowed one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise Unprocessable(f"callback_url must be an http or https URL, not {parts.scheme or 'none'!r}",
                            parameter="callback_url")
    if not parts.hostname:
        raise Unprocessable("callback_url has no host", parameter="callback_url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as exc:
        raise Unprocessable(f"callback_url host {parts.hostname!r} cannot be resolved: {exc}",
                            parameter="callback_url") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        internal = (address.is_private or address.is_loopback or address.is_link_local or address.is_reserved
                    or address.is_multicast or address.is_unspecified)
        if internal and not _allowed(parts.hostname, address, allow):
            raise Unprocessable(
                f"callback_url {parts.hostname!r} resolves to {address}, a private or loopback address;"
                " the server's KMEANS_WEBHOOK_ALLOW does not allow it",
                parameter="callback_url",
            )


def deliver(url: str, payload: dict[str, Any], allow: list[str], attempts: int, max_wait: float) -> dict[str, Any]:
    """POST ``payload`` with bounded retries and exponential backoff; returns what happened."""
    tries = 0
    last: dict[str, Any] = {}

    def attempt() -> None:
        nonlocal tries, last
        tries += 1
        check_url(url, allow)
        try:
            response = httpx.post(url, json=payload, timeout=5.0, follow_redirects=False)
        except httpx.HTTPError as exc:
            last = {"error": f"{type(exc).__name__}: {exc}"}
            raise RetryableDelivery from exc
        last = {"status_code": response.status_code}
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableDelivery
        if response.status_code >= 300:
            raise Unprocessable(f"the receiver answered {response.status_code}")

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=max_wait),
        retry=retry_if_exception_type(RetryableDelivery),
        reraise=False,
    )
    try:
        retrying(attempt)
        state = "delivered"
    except RetryError:
        state = "failed"
    except Unprocessable as exc:
        state, last = "failed", {**last, "error": exc.detail}
    if state == "failed":
        log.warning("webhook to %s failed after %d attempt(s): %s", url, tries, last)
    return {"state": state, "attempts": tries, **last}
