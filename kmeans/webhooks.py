"""Webhooks: one signed JSON POST at a time to a client's ``callback_url``.

Only http and https, and only to public addresses: every address a name resolves to must be
``is_global`` (an IPv4-mapped, NAT64 or 6to4 IPv6 address is judged by the IPv4 address inside
it too), unless the operator's ``KMEANS_WEBHOOK_ALLOW`` names the host, the IP or a CIDR range
that holds it. A fit request must not become a way to make the server call into its own network.
The URL is checked when a resource is created (:func:`check_url`) and again before every
delivery attempt (:func:`attempt`), which then connects to the very address it checked (no second
DNS lookup), with the original name in the ``Host`` header and, for https, as the TLS server name
that the certificate must match. Redirects are never followed.

Deliveries are signed as `Standard Webhooks <https://www.standardwebhooks.com/>`_ describes
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>``). Retrying
is the caller's business: :func:`attempt` makes one try and says whether another is worth it, and
:func:`backoff` says how long to wait first.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import email.utils
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import random
import secrets
import socket
import ssl
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx

from kmeans.errors import Unprocessable

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# The longest Retry-After a receiver may ask for that :class:`Outcome` passes on, in seconds.
MAX_RETRY_AFTER = 3600.0
# The longest an error message in an Outcome gets.
MAX_ERROR = 300

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# IPv6 ranges that lead to IPv4 (or to a local translator) that some Python releases still call
# global: SIIT's IPv4-translated addresses, the deprecated IPv4-compatible ones, local-use NAT64.
_NEVER_GLOBAL = tuple(ipaddress.IPv6Network(n) for n in ("::ffff:0:0:0/96", "::/96", "64:ff9b:1::/48"))
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Unresolvable(Unprocessable):
    """The callback URL's host name does not resolve (now): a 422 when checked, worth a retry when delivering."""


@dataclass(frozen=True)
class Target:
    """Where a checked callback URL is delivered: its parts, and the address that was checked."""

    scheme: str
    host: str  # the URL's host (ASCII, lower case; an IP literal without brackets)
    port: int
    path: str  # path and query, as sent in the request line
    address: IPAddress  # the checked address to connect to

    @property
    def url(self) -> str:
        """The URL to connect to: the checked address in place of the host name."""
        ip = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.scheme}://{ip}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the original host, and the port unless it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def sni_hostname(self) -> str | None:
        """The TLS server name (the name the certificate must match); None for an IP literal host."""
        return None if _ip_literal(self.host) else self.host


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to: ``delivered``, ``retry`` (worth another try) or ``failed``."""

    state: Literal["delivered", "retry", "failed"]
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds, when the receiver sent a Retry-After (at most MAX_RETRY_AFTER)


# -- checking addresses ----------------------------------------------------------------------


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _judged(address: IPAddress) -> list[IPAddress]:
    """The addresses a connection to ``address`` really reaches: IPv4 inside mapped/NAT64/6to4 IPv6."""
    if not isinstance(address, ipaddress.IPv6Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64:
        return [address, ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address, address.sixtofour]
    return [address]


def _describe(address: IPAddress) -> str:
    """``address``, and the IPv4 address it leads to if it has one inside."""
    inside = [str(a) for a in _judged(address) if a != address]
    return f"{address} (IPv4 {', '.join(inside)})" if inside else str(address)


def _parse_allow(allow: Iterable[str]) -> tuple[set[str], list[IPNetwork]]:
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in allow:
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    return names, networks


def _permitted(host: str, address: IPAddress, names: set[str], networks: list[IPNetwork]) -> bool:
    """Whether a webhook may connect to ``address`` (which ``host`` resolved to)."""
    if host.lower().rstrip(".") in names:
        return True
    candidates = [address, *_judged(address)]
    if any(a in net for a in candidates for net in networks if a.version == net.version):
        return True
    if isinstance(address, ipaddress.IPv6Address) and any(address in net for net in _NEVER_GLOBAL):
        return False
    return all(a.is_global for a in _judged(address))


def resolve(url: str, allow: Iterable[str]) -> Target:
    """Check ``url`` (422 Unprocessable unless http(s) to public or allowed addresses only); where to connect."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise Unprocessable(f"callback_url must be an http or https URL, not {parts.scheme or 'none'!r}",
                            parameter="callback_url")
    if not parts.hostname:
        raise Unprocessable("callback_url has no host", parameter="callback_url")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise Unprocessable("callback_url has an invalid port", parameter="callback_url") from None
    try:
        host = parts.hostname if parts.hostname.isascii() else parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise Unprocessable(f"callback_url host {parts.hostname!r} is not a valid host name",
                            parameter="callback_url") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise Unresolvable(f"callback_url host {host!r} cannot be resolved: {exc}", parameter="callback_url") from None
    addresses: list[IPAddress] = []
    for info in infos:
        if info[0] not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise Unresolvable(f"callback_url host {host!r} has no IP address", parameter="callback_url")
    names, networks = _parse_allow(allow)
    for address in addresses:
        if not _permitted(host, address, names, networks):
            raise Unprocessable(
                f"callback_url {host!r} resolves to {_describe(address)}, which is not a public address"
                " (a private or loopback or other special-purpose one); the server's KMEANS_WEBHOOK_ALLOW"
                " does not allow it",
                parameter="callback_url",
            )
    first = addresses[0]
    if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped is not None:
        first = first.ipv4_mapped
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme=scheme, host=host.lower(), port=port, path=path, address=first)


def check_url(url: str, allow: Iterable[str]) -> None:
    """Raise Unprocessable unless ``url`` is http(s) to a public address or an allowed one."""
    resolve(url, allow)


# -- signing (Standard Webhooks) ---------------------------------------------------------------


def new_secret() -> str:
    """A new signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _key(secret: str) -> bytes:
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' and base64") from None


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` and base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))."""
    content = f"{message_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: str | None, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """A delivery's headers: content type, ``webhook-id``, ``webhook-timestamp`` and, with a secret, the signature."""
    if not message_id or not message_id.isascii() or not message_id.isprintable() or " " in message_id:
        raise ValueError("a webhook message id is printable ASCII without spaces")
    result = {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp)),
    }
    if secret is not None:
        result["webhook-signature"] = sign(secret, message_id, timestamp, body)
    return result


def backoff(attempt_number: int, max_wait: float) -> float:
    """Seconds to wait after failed attempt ``attempt_number`` (1, 2, ...): 0.5·2^(n-1), capped, minus <10% jitter."""
    if max_wait <= 0:
        return 0.0
    delay = min(max_wait, 0.5 * 2.0 ** min(max(attempt_number, 1) - 1, 60))
    return delay * random.uniform(0.9, 1.0)


# -- one delivery attempt ------------------------------------------------------------------------


def _tls_context() -> ssl.SSLContext:
    """How https receivers' certificates are verified (certifi, or SSL_CERT_FILE / SSL_CERT_DIR)."""
    return httpx.create_ssl_context(trust_env=True)


def _retry_after(value: str | None) -> float | None:
    """Retry-After (seconds or an HTTP date) as seconds from now, within [0, MAX_RETRY_AFTER]; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return message[:MAX_ERROR]


async def _post(target: Target, body: bytes, sent: dict[str, str], auth: httpx.Auth | None,
                timeout: float) -> tuple[int, str | None]:
    """POST to the checked address (all within ``timeout`` seconds); the status and the Retry-After header."""
    extensions = {"sni_hostname": target.sni_hostname} if target.scheme == "https" and target.sni_hostname else {}
    async with asyncio.timeout(timeout), httpx.AsyncClient(
        trust_env=False, verify=_tls_context(), follow_redirects=False, timeout=httpx.Timeout(timeout),
    ) as client:
        request = client.build_request(
            "POST", target.url, content=body, headers={**sent, "Host": target.host_header}, extensions=extensions,
        )
        response = await client.send(request, auth=auth, stream=True, follow_redirects=False)
        try:
            return response.status_code, response.headers.get("retry-after")
        finally:
            await response.aclose()


def _run(coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
    """Run ``coroutine`` to its end: here, or in a helper thread if this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kmeans-webhook") as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=timeout + 5)


def attempt(url: str, payload: dict[str, Any], allow: Iterable[str], secret: str | None, message_id: str,
            timeout: float = 5.0) -> Outcome:
    """One delivery attempt of ``payload`` to ``url`` (checked again now), signed when ``secret`` is given."""
    if not timeout > 0:
        raise ValueError("timeout must be positive")
    try:
        target = resolve(url, allow)
    except Unresolvable as exc:
        return Outcome("retry", error=exc.detail[:MAX_ERROR])
    except Unprocessable as exc:
        return Outcome("failed", error=exc.detail[:MAX_ERROR])
    body = json.dumps(payload).encode("utf-8")
    sent = headers(secret, message_id, int(time.time()), body)
    parts = urlsplit(url)
    auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or "")) if parts.username else None
    try:
        status, retry_after = _run(_post(target, body, sent, auth, timeout), timeout)
    except (TimeoutError, concurrent.futures.TimeoutError):
        return Outcome("retry", error=f"no answer within {timeout:g} s")
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        return Outcome("retry", error=_error(exc))
    except httpx.InvalidURL as exc:
        return Outcome("failed", error=_error(exc))
    wait = _retry_after(retry_after)
    log.debug("webhook %s to %s (%s): %d", message_id, target.host, target.address, status)
    if 200 <= status < 300:
        return Outcome("delivered", status_code=status, retry_after=wait)
    if status == 429 or status >= 500:
        return Outcome("retry", status_code=status, error=f"the receiver answered {status}", retry_after=wait)
    if 300 <= status < 400:
        return Outcome("failed", status_code=status, retry_after=wait,
                       error=f"the receiver answered {status}, a redirect (webhooks do not follow redirects)")
    return Outcome("failed", status_code=status, error=f"the receiver answered {status}", retry_after=wait)
