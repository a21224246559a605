"""One HTTP attempt at a bot's callback URL, bounded in time, in bytes and in where it may go.

- Where: the host is resolved once; every address it resolves to must be public
  or inside settings.CALLBACK_ALLOWED_NETWORKS, or the URL is refused before any
  connection. The connection then goes to an address that was checked (no
  second lookup, so no DNS rebinding), with the original Host header and, for
  https, SNI and the certificate checked against the hostname.
- Time: one total deadline (settings.CALLBACK_TIMEOUT_SECONDS) covers the lookup,
  the connection, TLS, sending and the answer. A per-read timeout alone never
  trips on a server that answers a byte a second; here a watchdog shuts the
  socket down when the deadline passes, whatever the call is doing.
- Bytes: only the status line and headers are parsed, and at most
  settings.CALLBACK_MAX_RESPONSE_BYTES of the body are read (for the error
  message); then the connection is closed.

The same check serves the integration's validation when it is created or edited.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote, urlsplit

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(Exception):
    """The URL may not be called: not http(s), or it resolves to an address outside the allowed set."""


class CallbackUnresolved(Exception):
    """The host did not resolve (now): a failure like any other, tried again later."""


class DeadlineExceeded(Exception):
    pass


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str  # as written in the URL (IDNA-encoded), for Host, SNI and the certificate
    port: int
    target: str  # path and query
    addresses: tuple[IPAddress, ...]  # every address the host resolved to, all checked
    authorization: str | None


@dataclass(frozen=True)
class Answer:
    status: int
    body_head: bytes


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return _networks(tuple(settings.CALLBACK_ALLOWED_NETWORKS))


# IPv6 prefixes that carry an IPv4 address in their last 32 bits and reach it: NAT64's well-known
# prefix (RFC 6052) and the deprecated IPv4-compatible addresses. Python calls them global whatever
# the IPv4 address inside is, so 64:ff9b::7f00:1 would reach 127.0.0.1 through a NAT64 gateway.
_IPV4_IN_LAST_32_BITS = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::/96"))
# NAT64 for local use (RFC 8215): whatever it reaches is the operator's own network.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64, IPv4-compatible), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if address.sixtofour is not None:
        return address.sixtofour  # 2002:7f00:1:: reaches 127.0.0.1
    if any(address in prefix for prefix in _IPV4_IN_LAST_32_BITS):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _in_allowed_networks(address: IPAddress) -> bool:
    return any(address in network for network in allowed_networks() if network.version == address.version)


def address_allowed(address: IPAddress) -> bool:
    """Public (globally routable unicast), or inside one of CALLBACK_ALLOWED_NETWORKS.

    An IPv6 address that wraps an IPv4 one (mapped, 6to4, NAT64, IPv4-compatible) is judged by the
    IPv4 address it reaches: allowed when either is in an allowed network, public when the IPv4
    address is.
    """
    embedded = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
    if _in_allowed_networks(address) or (embedded is not None and _in_allowed_networks(embedded)):
        return True
    if isinstance(address, ipaddress.IPv6Address) and address in _LOCAL_NAT64:
        return False
    reached = embedded if embedded is not None else address
    return reached.is_global and not reached.is_multicast


def _refusal(host: str, address: IPAddress) -> str:
    return f"refused: {host} resolves to {address}, which is not a public address and not in CALLBACK_ALLOWED_NETWORKS"


def _lookup(host: str, port: int) -> tuple[IPAddress, ...]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 zone
        if address not in found:
            found.append(address)
    return tuple(found)


def _lookup_within(host: str, port: int, timeout: float) -> tuple[IPAddress, ...]:
    """The lookup in a thread of its own, so that a hung resolver cannot hold the attempt past its
    deadline (the attempt gives up on time; the lookup ends on the resolver's own timeout). Not a
    shared pool: one bot's hanging DNS must not queue every other bot's lookups behind it."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["addresses"] = _lookup(host, port)
        except Exception as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="callback-dns", daemon=True)
    thread.start()
    thread.join(max(timeout, 0.001))
    if thread.is_alive():
        raise CallbackUnresolved(f"{host} did not resolve within {timeout:g} s")
    if "error" in outcome:
        raise CallbackUnresolved(f"{host} does not resolve ({outcome['error']})")
    addresses = outcome["addresses"]
    assert isinstance(addresses, tuple)  # noqa: S101 - for the type checker
    return addresses


_PRINTABLE_ASCII = "".join(chr(code) for code in range(0x21, 0x7F))


def resolve(url: str, *, timeout: float) -> Destination:
    """Parse, resolve and check the URL; raises CallbackRefused or CallbackUnresolved."""
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CallbackRefused("refused: not an http:// or https:// URL with a host")
    try:
        host = parsed.hostname.encode("idna").decode("ascii")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except (UnicodeError, ValueError) as exc:
        raise CallbackRefused(f"refused: invalid host or port ({exc})") from None
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses: tuple[IPAddress, ...] = (literal,)
    else:
        addresses = _lookup_within(host, port, timeout)
        if not addresses:
            raise CallbackUnresolved(f"{host} resolves to no address")
    for address in addresses:
        if not address_allowed(address):
            raise CallbackRefused(_refusal(host, address))
    authorization = None
    if parsed.username is not None:
        credentials = f"{unquote(parsed.username)}:{unquote(parsed.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode()
    # The request line is ASCII: a path or query in other characters goes as UTF-8, percent-encoded
    # (what a browser sends for the same URL); what is ASCII already, escapes included, is left alone.
    target = quote((parsed.path or "/") + (f"?{parsed.query}" if parsed.query else ""), safe=_PRINTABLE_ASCII)
    return Destination(parsed.scheme, host, port, target, addresses, authorization)


class _Watchdog:
    """Shuts the attempt's socket down at the deadline, so that whatever reads from it returns."""

    def __init__(self, seconds: float) -> None:
        self.sock: socket.socket | None = None
        self.fired = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self.sock = sock
            if self.fired:
                self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self.sock is not None:
            try:
                # socket.socket's own shutdown, also for an SSLSocket (mid-handshake included)
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            except OSError:
                pass


def _connect(destination: Destination, deadline: float, watchdog: _Watchdog) -> socket.socket:
    last: OSError | None = None
    for address in destination.addresses:  # each one was checked
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        watchdog.watch(sock)
        sock.settimeout(remaining)
        try:
            sock.connect((str(address), destination.port))
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or DeadlineExceeded()


@lru_cache(maxsize=4)
def _tls_context(bundle: str) -> ssl.SSLContext:
    if not bundle:
        import certifi

        bundle = certifi.where()
    return ssl.create_default_context(cafile=bundle)


class _HTTPSOverSocket(http.client.HTTPConnection):
    """http.client over a TLS socket made here (so it omits :443 from Host, as https does)."""

    default_port = 443


def post(destination: Destination, body: bytes, headers: dict[str, str], *, deadline: float) -> Answer:
    """POST to the checked destination; at most CALLBACK_MAX_RESPONSE_BYTES of the answer's body are read.

    `deadline` is a time.monotonic() value. Raises DeadlineExceeded past it, or an OSError /
    http.client.HTTPException when the exchange fails.
    """
    cap = settings.CALLBACK_MAX_RESPONSE_BYTES
    connection: http.client.HTTPConnection | None = None
    with _Watchdog(deadline - time.monotonic()) as watchdog:
        try:
            sock = _connect(destination, deadline, watchdog)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            if destination.scheme == "https":
                tls = _tls_context(settings.CALLBACK_CA_BUNDLE).wrap_socket(
                    sock, server_hostname=destination.host, do_handshake_on_connect=False
                )
                watchdog.watch(tls)
                tls.do_handshake()
                sock = tls
                connection = _HTTPSOverSocket(destination.host, destination.port)
            else:
                connection = http.client.HTTPConnection(destination.host, destination.port)
            connection.sock = sock  # already connected to the checked address: never connects again
            if destination.authorization:
                headers = {**headers, "Authorization": destination.authorization}
            connection.request("POST", destination.target, body=body, headers=headers)
            response = connection.getresponse()
            head = b"" if 200 <= response.status < 300 else response.read(cap)
            return Answer(response.status, head[:cap])
        except (OSError, http.client.HTTPException, ValueError):
            if watchdog.fired:
                raise DeadlineExceeded() from None
            raise
        finally:
            if connection is not None:
                connection.close()
            elif watchdog.sock is not None:
                watchdog.sock.close()
