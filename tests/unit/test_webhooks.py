"""kmeans.webhooks: the allow-list of addresses, one delivery attempt to the checked address, and
Standard Webhooks signatures, against real receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmeans import webhooks
from kmeans.errors import Unprocessable

PAYLOAD = {"type": "model.succeeded", "timestamp": "2024-01-01T00:00:00Z", "data": {"id": "m_1", "score": 1.5}}
MADE_UP = "hooks.kmeans-test.invalid"  # .invalid never resolves for real

# -- helpers -----------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every connection and request it gets."""

    def __init__(self, answer: Callable[[int], tuple[int, dict[str, str]]] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.server_names: list[str | None] = []
        self.answer = answer or (lambda n: (200, {}))
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 -- http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                status, extra = receiver.answer(len(receiver.requests))
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_PUT = do_POST  # noqa: N815 -- a followed redirect would show here

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                receiver.connections += 1
                super().process_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@contextmanager
def receiving(answer: Callable[[int], tuple[int, dict[str, str]]] | None = None,
              tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    receiver = Receiver(answer, tls)
    try:
        yield receiver
    finally:
        receiver.close()


@contextmanager
def fake_dns(names: dict[str, list[str]]) -> Iterator[list[str]]:
    """socket.getaddrinfo answering ``names`` with the given addresses (others as usual); yields the names looked up."""
    real = socket.getaddrinfo
    looked_up: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else host
        if name in names:
            looked_up.append(name)
            infos = []
            for ip in names[name]:
                if ":" in ip:
                    infos.append((socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port, 0, 0)))
                else:
                    infos.append((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port)))
            return infos
        return real(host, port, *args, **kwargs)

    with mock.patch.object(socket, "getaddrinfo", getaddrinfo):
        yield looked_up


def spec_signature(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks signature, written from the spec independently of kmeans.webhooks."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, message_id.encode() + b"." + timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(secret: str, body: bytes, sent: dict[str, str]) -> Any:
    """Verify a delivery as a receiver would: with the standardwebhooks package, else by the spec."""
    lower = {k.lower(): v for k, v in sent.items()}
    try:
        from standardwebhooks.webhooks import Webhook
    except ImportError:
        assert abs(int(lower["webhook-timestamp"]) - time.time()) < 300
        expected = spec_signature(secret, lower["webhook-id"], lower["webhook-timestamp"], body)
        assert expected in lower["webhook-signature"].split(" ")
        return json.loads(body)
    return Webhook(secret).verify(body, lower)


# -- the allow-list ------------------------------------------------------------------------------

SPECIAL = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/127", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
    "2002::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "::ffff:0:0:0/96", "::/96",
]
# Reach IPv4 or a local translator, whatever the running Python's is_global says of them
# (SIIT, IPv4-compatible, local-use NAT64): never called unless allowed.
NEVER_GLOBAL = [ipaddress.ip_network(n) for n in ("::ffff:0:0:0/96", "::/96", "64:ff9b:1::/48")]
addresses = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6),
    st.sampled_from(SPECIAL).flatmap(lambda net: st.ip_addresses(network=net)),
)


def reaches(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Any]:
    """The addresses a connection really reaches (the test's own reading of the rule)."""
    if address.version == 6:
        if address.ipv4_mapped:
            return [address.ipv4_mapped]
        if address in ipaddress.ip_network("64:ff9b::/96"):
            return [address, ipaddress.ip_address(int(address) & 0xFFFFFFFF)]
        if address.sixtofour:
            return [address, address.sixtofour]
    return [address]


def expected_refused(address: Any, allow: list[str]) -> bool:
    networks = [ipaddress.ip_network(entry, strict=False) for entry in allow]
    allowed = any(a in net for a in {address, *reaches(address)} for net in networks if a.version == net.version)
    never = address.version == 6 and any(address in net for net in NEVER_GLOBAL)
    return not allowed and (never or not all(a.is_global for a in reaches(address)))


@st.composite
def allow_lists(draw: st.DrawFn, address: Any) -> list[str]:
    """Allow lists with nothing, the address itself, a range holding it or an unrelated range."""
    choice = draw(st.sampled_from(["none", "ip", "range", "other"]))
    if choice == "none":
        return []
    if choice == "ip":
        return [str(address)]
    if choice == "range":
        prefix = draw(st.integers(0, address.max_prefixlen))
        return [str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))]
    other = draw(st.ip_addresses(v=address.version))
    return [f"{other}/{draw(st.integers(8, other.max_prefixlen))}"]


def literal_url(address: Any) -> str:
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:8080/hook"


@settings(max_examples=400, deadline=None)
@given(data=st.data(), address=addresses)
def test_an_address_is_refused_iff_it_is_not_global_and_not_allowed(data: st.DataObject, address: Any):
    allow = data.draw(allow_lists(address))
    try:
        target = webhooks.resolve(literal_url(address), allow)
    except Unprocessable as exc:
        assert expected_refused(address, allow), f"{address} refused with allow={allow}"
        assert exc.status == 422 and exc.extra["parameter"] == "callback_url"
        assert "private or loopback" in exc.detail
        return
    assert not expected_refused(address, allow), f"{address} passed with allow={allow}"
    assert target.address == (reaches(address)[0] if address.version == 6 and address.ipv4_mapped else address)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(public=st.ip_addresses(v=4).filter(lambda a: a.is_global), other=addresses)
def test_every_address_a_name_resolves_to_is_checked(public: Any, other: Any):
    with fake_dns({MADE_UP: [str(public), str(other)]}):
        try:
            target = webhooks.resolve(f"https://{MADE_UP}/hook", [])
        except Unprocessable:
            assert expected_refused(other, [])
        else:
            assert not expected_refused(other, [])
            assert target.address == public and target.host == MADE_UP and target.port == 443
        assert webhooks.resolve(f"https://{MADE_UP}/hook", [MADE_UP]).address == public  # the name allowed


@pytest.mark.parametrize("address", [
    "100.64.0.1", "192.0.0.1", "198.18.0.1", "0.1.2.3", "240.0.0.1", "64:ff9b::a00:1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:a00:1::1", "127.0.0.1", "10.1.2.3", "::1", "fe80::1",
])
def test_ranges_the_old_deny_list_let_through_are_refused(address: str):
    with fake_dns({MADE_UP: [address]}), pytest.raises(Unprocessable) as caught:
        webhooks.check_url(f"http://{MADE_UP}/hook", [])
    assert caught.value.extra["parameter"] == "callback_url"
    assert str(ipaddress.ip_address(address)) in caught.value.detail


def test_allow_names_hosts_ips_and_ranges():
    with fake_dns({MADE_UP: ["10.1.2.3"], "other.invalid": ["10.9.9.9"]}):
        for allow in ([MADE_UP], [MADE_UP.upper() + "."], ["10.1.2.3"], ["10.0.0.0/8"], ["junk", "10.1.0.0/16"]):
            webhooks.check_url(f"http://{MADE_UP}/hook", allow)
        with pytest.raises(Unprocessable):
            webhooks.check_url("http://other.invalid/hook", [MADE_UP, "10.1.0.0/16"])
    webhooks.check_url("http://[::ffff:127.0.0.1]:9/hook", ["127.0.0.1"])  # a mapped address: its IPv4 allowed
    webhooks.check_url("http://[::1]:9/hook", ["::1"])


@pytest.mark.parametrize("url, words", [
    ("ftp://example.com/hook", "http or https"),
    ("file:///etc/passwd", "http or https"),
    ("http:///hook", "no host"),
    ("http://example.com:99999/hook", "port"),
    ("http://no-such-host.invalid/hook", "cannot be resolved"),
])
def test_check_url_refuses_what_cannot_be_a_callback(url: str, words: str):
    with pytest.raises(Unprocessable) as caught:
        webhooks.check_url(url, [])
    assert caught.value.status == 422
    assert caught.value.extra["parameter"] == "callback_url"
    assert words in caught.value.detail


def test_resolve_gives_the_parts_to_connect_to():
    with fake_dns({MADE_UP: ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]}):
        target = webhooks.resolve(f"HTTPS://user:pw@{MADE_UP.upper()}:8443/a/b?c=1&d=2#frag", [])
    assert target == webhooks.Target("https", MADE_UP, 8443, "/a/b?c=1&d=2", ipaddress.ip_address("93.184.215.14"))
    assert target.url == "https://93.184.215.14:8443/a/b?c=1&d=2"
    assert target.host_header == f"{MADE_UP}:8443"
    assert target.sni_hostname == MADE_UP
    v6 = webhooks.resolve("http://[2606:4700::1]/", [])
    assert (v6.url, v6.host_header, v6.sni_hostname) == ("http://[2606:4700::1]:80/", "[2606:4700::1]", None)
    with pytest.raises(AttributeError):
        target.port = 1  # type: ignore[misc]


# -- signing ------------------------------------------------------------------------------------


def test_sign_matches_the_specs_reference_vector():
    # The example of the Standard Webhooks reference libraries.
    secret, msg_id, timestamp = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    body = b'{"test": 2432232314}'
    assert webhooks.sign(secret, msg_id, timestamp, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert webhooks.sign(secret, msg_id, timestamp, body) == spec_signature(secret, msg_id, str(timestamp), body)


def test_new_secrets_are_whsec_and_24_to_32_random_bytes():
    made = {webhooks.new_secret() for _ in range(50)}
    assert len(made) == 50
    for secret in made:
        assert secret.startswith("whsec_")
        assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) <= 32


def test_headers_signed_and_unsigned():
    secret, body = webhooks.new_secret(), b'{"a": 1}'
    signed = webhooks.headers(secret, "wh_1", 1700000000, body)
    assert signed == {
        "Content-Type": "application/json", "webhook-id": "wh_1", "webhook-timestamp": "1700000000",
        "webhook-signature": spec_signature(secret, "wh_1", "1700000000", body),
    }
    assert "webhook-signature" not in webhooks.headers(None, "wh_1", 1700000000, body)
    with pytest.raises(ValueError):
        webhooks.headers(secret, "wh_1\r\nX-Injected: 1", 1700000000, body)


def test_backoff_is_exponential_capped_and_jittered_a_little():
    for n in range(1, 80):
        base = min(8.0, 0.5 * 2 ** (n - 1))
        for _ in range(20):
            assert 0.9 * base <= webhooks.backoff(n, 8.0) <= base
    assert webhooks.backoff(10**9, 30.0) <= 30.0
    assert webhooks.backoff(3, 0) == 0


# -- one attempt against a real receiver --------------------------------------------------------


def test_a_signed_delivery_arrives_as_signed():
    secret = webhooks.new_secret()
    with receiving() as receiver:
        outcome = webhooks.attempt(receiver.url("/hook?x=1"), PAYLOAD, ["127.0.0.1"], secret, "wh_0123456789")
        assert outcome == webhooks.Outcome("delivered", status_code=200)
        [request] = receiver.requests
    sent = {k.lower(): v for k, v in request["headers"].items()}
    assert request["path"] == "/hook?x=1"
    assert request["body"] == json.dumps(PAYLOAD).encode()
    assert sent["content-type"] == "application/json"
    assert sent["webhook-id"] == "wh_0123456789"
    assert abs(int(sent["webhook-timestamp"]) - time.time()) < 60
    assert sent["webhook-signature"] == spec_signature(secret, "wh_0123456789", sent["webhook-timestamp"],
                                                       request["body"])
    assert verify(secret, request["body"], sent) == PAYLOAD


def test_without_a_secret_the_delivery_is_unsigned():
    with receiving() as receiver:
        assert webhooks.attempt(receiver.url(), PAYLOAD, ["127.0.0.1"], None, "wh_1").state == "delivered"
        sent = {k.lower(): v for k, v in receiver.requests[0]["headers"].items()}
    assert "webhook-signature" not in sent
    assert sent["webhook-id"] == "wh_1"


def test_a_redirect_is_not_followed():
    with receiving(lambda n: (302, {"Location": "/elsewhere"})) as receiver:
        outcome = webhooks.attempt(receiver.url(), PAYLOAD, ["127.0.0.1"], None, "wh_1")
        assert [r["path"] for r in receiver.requests] == ["/hook"]
    assert (outcome.state, outcome.status_code) == ("failed", 302)
    assert "302" in (outcome.error or "")


@pytest.mark.parametrize("status, state", [(503, "retry"), (500, "retry"), (404, "failed"), (400, "failed"),
                                           (204, "delivered")])
def test_the_status_decides_between_delivered_retry_and_failed(status: int, state: str):
    with receiving(lambda n: (status, {})) as receiver:
        outcome = webhooks.attempt(receiver.url(), PAYLOAD, ["127.0.0.1"], None, "wh_1")
    assert (outcome.state, outcome.status_code, outcome.retry_after) == (state, status, None)
    assert (outcome.error is None) == (state == "delivered")


@pytest.mark.parametrize("value, seconds", [("7", 7.0), ("0", 0.0), ("99999999", webhooks.MAX_RETRY_AFTER),
                                            ("soon", None)])
def test_429_is_retried_after_what_the_receiver_asks(value: str, seconds: float | None):
    with receiving(lambda n: (429, {"Retry-After": value})) as receiver:
        outcome = webhooks.attempt(receiver.url(), PAYLOAD, ["127.0.0.1"], None, "wh_1")
    assert (outcome.state, outcome.status_code, outcome.retry_after) == ("retry", 429, seconds)


def test_retry_after_as_an_http_date():
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120)
    date = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    with receiving(lambda n: (503, {"Retry-After": date})) as receiver:
        outcome = webhooks.attempt(receiver.url(), PAYLOAD, ["127.0.0.1"], None, "wh_1")
    assert outcome.state == "retry" and outcome.retry_after is not None and 100 <= outcome.retry_after <= 121


def test_a_refused_address_is_never_connected_to():
    with receiving() as receiver:
        outcome = webhooks.attempt(receiver.url(), PAYLOAD, [], webhooks.new_secret(), "wh_1")
        time.sleep(0.1)
        assert receiver.connections == 0 and receiver.requests == []
    assert outcome.state == "failed" and outcome.status_code is None
    assert "127.0.0.1" in (outcome.error or "")


def test_the_attempt_connects_to_the_checked_address_with_the_original_host():
    with receiving() as receiver, fake_dns({MADE_UP: ["127.0.0.1"]}) as looked_up:
        outcome = webhooks.attempt(receiver.url(host=MADE_UP), PAYLOAD, [MADE_UP], None, "wh_1")
        assert outcome.state == "delivered"
        assert looked_up == [MADE_UP]  # resolved once, when checked: no second lookup to connect
        assert receiver.requests[0]["headers"]["Host"] == f"{MADE_UP}:{receiver.port}"


def test_the_address_is_checked_again_at_delivery_time():
    with receiving() as receiver:
        with fake_dns({MADE_UP: ["127.0.0.1"]}):
            webhooks.check_url(receiver.url(host=MADE_UP), ["127.0.0.1"])  # allowed when the model was made
            outcome = webhooks.attempt(receiver.url(host=MADE_UP), PAYLOAD, [], None, "wh_1")  # not any more
        assert outcome.state == "failed" and receiver.connections == 0
        with fake_dns({}):  # the name does not resolve now: worth another try later
            outcome = webhooks.attempt(receiver.url(host=MADE_UP), PAYLOAD, [MADE_UP], None, "wh_1")
        assert outcome.state == "retry" and "cannot be resolved" in (outcome.error or "")


def test_a_closed_port_is_a_retry():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens on it
    outcome = webhooks.attempt(f"http://127.0.0.1:{port}/hook", PAYLOAD, ["127.0.0.1"], None, "wh_1", timeout=2)
    assert outcome.state == "retry" and outcome.status_code is None and outcome.error


def test_the_whole_attempt_is_bounded_by_the_timeout():
    """A receiver that trickles its answer a byte at a time never trips a per-read timeout; the total one ends it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]

    def trickle() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(50):  # 5 s at most
                    conn.sendall(b"a")
                    time.sleep(0.1)
            except OSError:
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        outcome = webhooks.attempt(f"http://127.0.0.1:{port}/hook", PAYLOAD, ["127.0.0.1"], None, "wh_1", timeout=0.5)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
        thread.join(timeout=6)
    assert outcome.state == "retry" and "0.5" in (outcome.error or "")
    assert elapsed < 2.0


def test_an_attempt_works_from_a_thread_running_an_event_loop():
    async def inside_a_loop() -> webhooks.Outcome:
        return webhooks.attempt(receiver.url(), PAYLOAD, ["127.0.0.1"], None, "wh_1")

    with receiving() as receiver:
        assert asyncio.run(inside_a_loop()).state == "delivered"


# -- https: SNI and certificate of the original name, connecting to the checked address ------------


def make_certificates(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for ``name`` signed by it: (ca.pem, cert.pem, key.pem)."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kmeans test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_https_verifies_the_original_name_while_connecting_to_the_checked_address(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch):
    ca, cert, key = make_certificates(tmp_path, MADE_UP)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    monkeypatch.setattr(webhooks, "_tls_context", lambda: ssl.create_default_context(cafile=str(ca)))
    secret = webhooks.new_secret()
    with receiving(tls=server_tls) as receiver, fake_dns({MADE_UP: ["127.0.0.1"], "other.invalid": ["127.0.0.1"]}):
        outcome = webhooks.attempt(receiver.url(host=MADE_UP, scheme="https"), PAYLOAD, [MADE_UP], secret, "wh_1")
        assert outcome == webhooks.Outcome("delivered", status_code=200)
        assert receiver.server_names == [MADE_UP]
        [request] = receiver.requests
        assert request["headers"]["Host"] == f"{MADE_UP}:{receiver.port}"
        assert verify(secret, request["body"], request["headers"]) == PAYLOAD
        # The same server under a name its certificate does not have: the handshake fails, nothing is sent.
        mismatch = webhooks.attempt(receiver.url(host="other.invalid", scheme="https"), PAYLOAD, ["other.invalid"],
                                    secret, "wh_2")
        assert mismatch.state == "retry" and "certificate" in (mismatch.error or "").lower()
        assert len(receiver.requests) == 1
