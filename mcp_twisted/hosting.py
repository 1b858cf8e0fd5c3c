"""What every transport shares: admission, the session host, and the limits.

A transport (WebSocket, Streamable HTTP, stdio) turns bytes into messages;
everything else about serving an app lives here, once:

- ``Admission.admit`` decides whether a connection or request may reach the
  app, from transport-neutral facts (path, Host, Origin, Authorization, the
  listener's address, the TLS transport for a client certificate). It returns
  the caller's identity or raises a ``Refusal`` that carries the HTTP status,
  text and headers the transport answers with.
- ``SessionHost`` owns the app, the clock, the ``Limits``, the registry of
  live sessions, the drain state and the metrics, and makes the sessions.

Browser safety: a foreign ``Origin`` gets 403; on a loopback listener a
``Host`` that is not a loopback name gets 421 (DNS rebinding).
"""

from __future__ import annotations

import functools
import ipaddress
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from mcp_twisted.auth import certificate_subject
from mcp_twisted.session import OutputFlow, Role, Send, Session, SessionHandler

if TYPE_CHECKING:
    from mcp_twisted.metrics import Metrics

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_SESSIONS",
    "Admission",
    "AdmissionRequest",
    "Authenticator",
    "Limits",
    "OriginPolicy",
    "Refusal",
    "SessionHost",
    "StallLimit",
    "WriteWaiters",
    "is_ip_literal",
    "is_loopback_host",
    "listener_is_loopback",
    "normalize_origin",
    "unsent_bytes",
]

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
# Sessions one process serves at once. An idle WebSocket session costs about
# 10 KiB and a ping every 20 s (about 35 µs of CPU): 10,000 hold about 100 MiB
# and under 2% of a core, half of what one process held in the idle
# benchmark, leaving room under a 20,000 open-file limit for HTTP
# connections and handshakes (see docs/performance.md).
DEFAULT_MAX_SESSIONS = 10_000

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _split_host(host: str) -> tuple[str, int | None]:
    """``"[::1]:8080"`` -> ``("::1", 8080)``; a missing port is ``None``.

    What is not a host at all (an unclosed ``[``, text that NFKC turns into a
    delimiter) is ``("", -1)``: no name, no port, so it matches nothing.
    """
    try:
        parsed = urlsplit("//" + host)
    except ValueError:
        return "", -1
    try:
        port = parsed.port
    except ValueError:
        port = -1  # not a port: will not match anything
    return (parsed.hostname or "").lower(), port


@functools.lru_cache(maxsize=256)  # asked on every HTTP request; bounded, as Host is the client's
def is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine (a name or a loopback address)."""
    name, _ = _split_host(host)
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=256)
def is_ip_literal(host: str) -> bool:
    """Whether a Host header names an address rather than a (rebindable) DNS name."""
    try:
        ipaddress.ip_address(_split_host(host)[0])
    except ValueError:
        return False
    return True


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` lower-cased, default ports dropped; an origin
    that cannot be parsed is kept as sent."""
    normalized = _normalized_origin(origin)
    return origin if normalized is None else normalized


def _normalized_origin(origin: str) -> str | None:
    """``normalize_origin``, or None for what no browser sends as an origin
    (an unclosed ``[``, a port out of range)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def listener_is_loopback(address: IAddress) -> bool:
    """Whether a listener's own address is a loopback one (where a browser
    page could reach it only through DNS rebinding). UNIX sockets and the
    like cannot be reached by a browser at all: False."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        return _is_loopback_ip(address.host)
    return False


@functools.lru_cache(maxsize=64)  # a server listens on few addresses
def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def unsent_bytes(transport: object) -> int:
    """Bytes written to a transport that its peer has not taken yet.

    Walks down wrappers (TLS, twisted.web's channel, StandardIO's stdout
    writer) to the file descriptor that holds Twisted's write buffer.
    """
    for _ in range(4):
        if transport is None or hasattr(transport, "dataBuffer"):
            break
        transport = getattr(transport, "transport", None) or getattr(transport, "_writer", None)
    if transport is None or not hasattr(transport, "dataBuffer"):
        return 0
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen  # type: ignore[attr-defined,no-any-return]  # a FileDescriptor's buffer, found by hasattr: no interface has it


class WriteWaiters:
    """Handlers waiting for a paused transport to drain (``OutputFlow.when_writable``).

    Kept weakly: a handler that calls ``ctx.log()`` without awaiting it leaves
    a Deferred nobody holds, which must not pile up while the peer is behind.
    """

    def __init__(self) -> None:
        # Made on the first wait: an empty WeakSet is about 700 bytes, and
        # every idle connection has one of these.
        self._waiters: weakref.WeakSet[Deferred[None]] | None = None

    def wait(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self._waiters is None:
            self._waiters = weakref.WeakSet()
        self._waiters.add(waiter)
        return waiter

    def release(self) -> None:
        if not self._waiters:
            return
        waiters = list(self._waiters)
        self._waiters.clear()
        for waiter in waiters:
            waiter.callback(None)

    def __len__(self) -> int:
        return len(self._waiters) if self._waiters is not None else 0


class StallLimit:
    """A stream's stall limit: ``expired`` is called (to drop the connection)
    once its client has stayed over ``limit`` unsent bytes for ``timeout``
    seconds (0: never).

    As over WebSocket, the clock runs from the first write that finds the
    client over the limit while the transport is paused, not from the pause:
    a stream may sit paused below the limit for any time. The transport
    resuming stops the clock, and a client that caught up by its end is kept.
    """

    __slots__ = ("_call", "_clock", "_expired", "_limit", "_timeout", "_unsent")

    def __init__(
        self, clock: IReactorTime, limit: int, timeout: float, unsent: Callable[[], int],
        expired: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._timeout = timeout
        self._unsent = unsent
        self._expired = expired
        self._call: IDelayedCall | None = None

    @property
    def running(self) -> bool:
        """Whether the clock runs (the client is over the limit)."""
        return self._call is not None

    def wrote(self) -> None:
        """After a write to the paused transport: start the clock if the client is over the limit."""
        if self._call is None and self._timeout and self._unsent() > self._limit:
            self._call = self._clock.callLater(self._timeout, self._end)

    def stop(self) -> None:
        """The transport resumed, or the stream ended: no clock."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _end(self) -> None:
        self._call = None
        # Under the limit again: kept, and the next write over it starts a new clock.
        if self._unsent() > self._limit:
            self._expired()


class OriginPolicy:
    """Which browser origins may open a connection.

    Allowed: requests with no ``Origin`` (non-browser clients), the server's
    own origin (the ``Origin`` names the same host and port as ``Host``), and
    the configured list: exact origins such as ``https://app.example.com``,
    ``https://*.example.com`` for subdomains, ``null`` for opaque origins, or
    ``*`` for any origin.
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allow_any = False
        self.allow_null = False
        self.exact: set[str] = set()
        self.suffixes: list[tuple[str, str]] = []
        for entry in allowed:
            if entry == "*":
                self.allow_any = True
            elif entry == "null":
                self.allow_null = True
            elif "://*." in entry:
                scheme, _, rest = normalize_origin(entry.replace("*.", "wildcard.", 1)).partition("://")
                self.suffixes.append((scheme, rest.removeprefix("wildcard")))
            else:
                self.exact.add(normalize_origin(entry))

    def allows(self, origin: str | None, host: str, host_trusted: bool = True) -> bool:
        """Whether a request from ``origin`` with this ``Host`` may connect.

        ``host_trusted`` says whether the Host header can be believed (an IP
        literal, a loopback name, a configured name); otherwise it does not
        make an origin "the same", as a DNS-rebinding page controls both.
        """
        if origin is None or self.allow_any:
            return True
        if origin == "null":
            return self.allow_null
        normalized = _normalized_origin(origin)
        if normalized is None:
            return False  # not an origin: no browser sent it, nothing may match it
        if normalized in self.exact:
            return True
        scheme, _, netloc = normalized.partition("://")
        if any(scheme == s and netloc.endswith(suffix) for s, suffix in self.suffixes):
            return True
        if not host_trusted:
            return False
        # Same origin: the page was served by this very host:port.
        origin_host, origin_port = _split_host(netloc)
        request_host, request_port = _split_host(host)
        default = _DEFAULT_PORTS.get(scheme)
        return origin_host == request_host and (origin_port or default) == (request_port or default)


class Refusal(Exception):
    """A connection or request that may not reach the app, and the answer.

    ``reason`` is a short fixed word (``path``, ``draining``, ``capacity``,
    ``host``, ``origin``, ``auth``) for logs and the metrics label.
    """

    def __init__(self, status: int, reason: str, text: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(f"HTTP {status} ({reason}): {text}")
        self.status = status
        self.reason = reason
        self.text = text
        self.headers = tuple(headers)


class Authenticator(Protocol):
    """What checks a request's ``Authorization`` header: static tokens
    (``auth.TokenAuthenticator``) or OAuth access tokens (``oauth``)."""

    def authenticate(self, authorization: str | None) -> Any:
        """The caller's identity, None to refuse with a plain 401, or a
        Deferred of the identity when the check must ask elsewhere first; may
        raise (or fail with) a ``Refusal`` of its own (a challenge, a 403)."""


@dataclass(slots=True)  # made for every HTTP request: not frozen, which costs a setattr call a field
class AdmissionRequest:
    """The facts admission decides on, whatever the transport."""

    path: str
    host: str = ""
    origin: str | None = None
    authorization: str | None = None
    on_loopback: bool = False  # the listener's own address is a loopback one
    tls_transport: object = None  # for the client certificate, when there is one
    opens_session: bool = True  # counts against the session cap; refused while draining
    credentials: bool = True  # False for a CORS preflight, which never carries a token


class Admission:
    """Who may reach the app: path, drain, capacity, Host, Origin, token, certificate.

    One object for every transport, so that WebSocket and HTTP refuse the
    same requests with the same statuses.
    """

    def __init__(
        self,
        *,
        path: str | None = "/mcp",
        allowed_origins: Iterable[str] = (),
        allowed_hosts: Iterable[str] = (),
        auth: Authenticator | None = None,
    ) -> None:
        self.path = path
        self.origin_policy = OriginPolicy(allowed_origins)
        self.allowed_hosts = frozenset(h.lower().rstrip(".") for h in allowed_hosts)
        self.auth = auth

    def is_allowed_host(self, host: str) -> bool:
        """Whether ``host`` (a Host header, port and trailing dot ignored) was configured."""
        return _split_host(host)[0].rstrip(".") in self.allowed_hosts

    def admit(self, request: AdmissionRequest, host: SessionHost) -> Any:
        """The caller's identity (token name, certificate subject or None);
        raises ``Refusal`` in the order path, drain, capacity, Host, Origin, token."""
        if self.path is not None and request.path != self.path:
            raise Refusal(404, "path", "Not Found")
        # A live session's requests still reach it while draining (it answers
        # new ones -32003; running handlers hear the client's answers).
        if request.opens_session:
            host.check_room()
        loopback_host = is_loopback_host(request.host)
        host_trusted = loopback_host or is_ip_literal(request.host) or self.is_allowed_host(request.host)
        if request.on_loopback and not (loopback_host or self.is_allowed_host(request.host)):
            raise Refusal(421, "host", "Misdirected Request: Host not allowed")
        if not self.origin_policy.allows(request.origin, request.host, host_trusted):
            raise Refusal(403, "origin", "Forbidden: Origin not allowed")
        if self.auth is not None and request.credentials:
            identity = self.auth.authenticate(request.authorization)
            if identity is None:
                # RFC 6750: a 401 names the scheme it wants.
                raise Refusal(401, "auth", "Unauthorized", [("WWW-Authenticate", 'Bearer realm="mcp"')])
            return identity
        return certificate_subject(request.tls_transport)


@dataclass
class Limits:
    """The per-session limits every transport applies (see docs/operations.md)."""

    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_in_flight: int = 64
    handler_timeout: float | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_batch_size: int = 64


class SessionHost:
    """The app served by every transport, with its limits, live sessions,
    drain state and metrics.

    Transports ask it to ``admit`` a caller and to ``open_session``; the
    service asks it to ``drain``. ``sessions`` maps each live session to the
    name of the transport that carries it (for the metrics' label).
    """

    def __init__(
        self,
        app: SessionHandler,
        *,
        admission: Admission | None = None,
        limits: Limits | None = None,
        metrics: Metrics | None = None,
        clock: IReactorTime | None = None,
        client_request_timeout: float | None = 60.0,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            # The module stands for the installed reactor, which provides IReactorTime.
            clock = cast(IReactorTime, reactor)
        self.app = app
        self.admission = admission if admission is not None else Admission()
        self.limits = limits if limits is not None else Limits()
        self.metrics = metrics
        self.clock: IReactorTime = clock
        self.client_request_timeout = client_request_timeout
        self.sessions: dict[Session, str] = {}
        # True once the service started shutting down: admission answers 503.
        self.draining = False

    @property
    def at_capacity(self) -> bool:
        maximum = self.limits.max_sessions
        return bool(maximum) and len(self.sessions) >= maximum

    def check_room(self) -> None:
        """Raise the 503 ``Refusal`` of a host that takes no new session now
        (draining, or at the session cap)."""
        if self.draining:
            raise Refusal(503, "draining", "Service Unavailable: shutting down")
        if self.at_capacity:
            raise Refusal(503, "capacity", "Service Unavailable: too many connections")

    def admit(self, request: AdmissionRequest) -> Any:
        """``Admission.admit`` against this host (the identity, or a Deferred
        of it); refusals are counted, those that come later too."""
        try:
            identity = self.admission.admit(request, self)
        except Refusal as refusal:
            self._count_refusal(refusal)
            raise
        if isinstance(identity, Deferred):
            if request.opens_session:
                # The drain may have begun, or the cap filled, while the token was checked.
                identity.addCallback(self._room_left)
            identity.addErrback(self._count_late_refusal)
        return identity

    def _room_left(self, identity: Any) -> Any:
        self.check_room()
        return identity

    def _count_refusal(self, refusal: Refusal) -> None:
        if self.metrics is not None:
            self.metrics.handshake_refusals.labels(refusal.reason).inc()

    def _count_late_refusal(self, failure: Failure) -> Failure:
        if failure.check(Refusal):
            self._count_refusal(cast(Refusal, failure.value))
        return failure

    def open_session(
        self,
        send: Send,
        *,
        transport: str,
        identity: Any = None,
        peer: str | None = None,
        flow: OutputFlow | None = None,
        counted: bool = True,
    ) -> Session:
        """A server-role session for the app, with this host's limits, registered as live.

        ``counted=False``: not counted as accepted yet (an HTTP session is
        made to run its ``initialize`` and counted by ``accepted`` only if
        that succeeds)."""
        limits = self.limits
        session = Session(
            send,
            role=Role.SERVER,
            handler=self.app,
            clock=self.clock,
            max_in_flight=limits.max_in_flight,
            handler_timeout=limits.handler_timeout,
            request_timeout=self.client_request_timeout,
            observer=self.metrics.observer(transport) if self.metrics is not None else None,
            max_message_size=limits.max_message_size,
            max_batch_size=limits.max_batch_size,
            flow=flow,
        )
        session.attributes["identity"] = identity
        session.attributes["peer"] = peer
        self.sessions[session] = transport
        if counted:
            self.accepted(transport)
        return session

    def accepted(self, transport: str) -> None:
        """Count a session as accepted (``mcp_connections_accepted_total``)."""
        if self.metrics is not None:
            self.metrics.connections_accepted.labels(transport).inc()

    def session_closed(self, session: Session) -> None:
        """Forget a session the transport closed."""
        self.sessions.pop(session, None)

    def drain(self) -> Deferred[Any]:
        """Refuse new callers and new requests; fires when every session's
        running requests have finished (the caller bounds the wait)."""
        self.draining = True
        # Listen streams (2026-07-28) would run until the drain timeout: end them first.
        end_listeners = getattr(self.app, "end_listeners", None)
        if end_listeners is not None:
            end_listeners()
        return DeferredList([session.drain() for session in list(self.sessions)], consumeErrors=True)

    @property
    def in_flight(self) -> int:
        return sum(session.in_flight for session in self.sessions)
