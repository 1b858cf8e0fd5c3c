"""Helpers shared by the tests (fixtures are in ``conftest.py``).

Over real sockets on 127.0.0.1: the WebSocket peer is Autobahn's own client
(not code of ours), and the handshake probe is a raw TCP client, so status
lines and headers are seen exactly as a browser or proxy would see them.
In memory: ``FakeHandler``, a ``SessionHandler`` for driving a bare
``Session`` with ``mcp_twisted.testing.Peer``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mcp_twisted import Context, MCPServer
from mcp_twisted.jsonrpc import METHOD_NOT_FOUND, RPCError
from mcp_twisted.protocol import LATEST_PROTOCOL_VERSION
from mcp_twisted.session import IncomingRequest, Session
from mcp_twisted.testing import Peer
from mcp_twisted.websocket import MCPServerFactory, MCPServerProtocol


async def listen(factory: Any, interface: str = "127.0.0.1") -> Any:
    """Listen on an ephemeral port; returns the IListeningPort."""
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface=interface)
    return await endpoint.listen(factory)


class RecordingEndpoint:
    """Wraps an endpoint to learn the ephemeral port it was given."""

    def __init__(self) -> None:
        self.inner = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port: Any = None

    def listen(self, factory: Any) -> Deferred[Any]:
        def record(port: Any) -> Any:
            self.port = port.getHost().port
            return port

        return self.inner.listen(factory).addCallback(record)


async def stop(port: Any, factory: MCPServerFactory | None = None) -> None:
    if factory is not None:
        for connection in list(factory.connections):
            connection.dropConnection(abort=True)
    await port.stopListening()


class _HandshakeProbe(protocol.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and not self.done.called:
            self.done.callback(self.buffer)
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        if not self.done.called:
            self.done.callback(self.buffer)


async def raw_response(port: int, request: bytes) -> bytes:
    """Send raw bytes to 127.0.0.1:port; return the response head (and what came with it)."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    probe = await endpoints.connectProtocol(endpoint, _HandshakeProbe())
    probe.transport.write(request)
    return await probe.done


async def handshake(
    port: int, path: str = "/mcp", headers: dict[str, str] | None = None, host: str | None = None
) -> tuple[int, dict[str, str]]:
    """Send a WebSocket upgrade request; returns (status, response headers)."""
    request_headers = {
        "Host": host if host is not None else f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in request_headers.items()]
    raw = await raw_response(port, ("\r\n".join(lines) + "\r\n\r\n").encode())
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1]) if head and head[0] else 0
    response_headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        response_headers[name.strip().lower()] = value.strip()
    return status, response_headers


class ProbeClient(WebSocketClientProtocol):
    """Autobahn client that records messages and the close, for assertions."""

    answer_pings = True

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[bytes, bool]] = []
        self.waiters: list[Deferred[Any]] = []
        self.closed: Deferred[tuple[bool, int | None, str | None]] = Deferred()

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((payload, isBinary))
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def onPing(self, payload: bytes) -> None:
        if self.answer_pings:
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"handshake failed: {reason}"))
        if not self.closed.called:
            self.closed.callback((wasClean, code, reason))

    async def next_message(self, timeout: float = 5.0) -> Any:
        """The next JSON message received (decoded)."""
        while not self.messages:
            waiter: Deferred[Any] = Deferred()
            self.waiters.append(waiter)
            waiter.addTimeout(timeout, reactor)
            await waiter
        payload, _ = self.messages.pop(0)
        return json.loads(payload)

    def send_json(self, message: Any) -> None:
        self.sendMessage(json.dumps(message).encode())

    async def request(self, request_id: Any, method: str, params: Any = None) -> Any:
        """Send a request and return the response to it (skipping notifications)."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send_json(message)
        while True:
            reply = await self.next_message()
            if reply.get("id") == request_id and "method" not in reply:
                return reply

    async def initialize(self, version: str = "2025-11-25", capabilities: Any = None) -> Any:
        reply = await self.request("init", "initialize", {
            "protocolVersion": version, "capabilities": capabilities or {},
            "clientInfo": {"name": "probe", "version": "0"},
        })
        self.send_json({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return reply


async def connect(
    port: int,
    path: str = "/mcp",
    *,
    protocols: list[str] | None = None,
    origin: str | None = None,
    headers: dict[str, str] | None = None,
    client: type[ProbeClient] = ProbeClient,
    host: str = "127.0.0.1",
) -> ProbeClient:
    factory = WebSocketClientFactory(
        f"ws://{host}:{port}{path}", origin=origin,
        protocols=["mcp"] if protocols is None else protocols, headers=headers,
    )
    factory.protocol = client
    factory.opened = defer.Deferred()
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoint.connect(factory)
    return await factory.opened


class SilentClient(ProbeClient):
    """Never answers a WebSocket ping, like a peer that has gone away."""

    answer_pings = False


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Let the reactor run until ``predicate()`` is true (for what crosses a real socket)."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.01)


def find(events: list[dict[str, Any]], prefix: str, **fields: Any) -> list[dict[str, Any]]:
    """Log events whose format starts with ``prefix`` and whose fields match."""
    return [e for e in events if (e.get("log_format") or "").startswith(prefix)
            and all(e.get(k) == v for k, v in fields.items())]


def make_app(name: str = "test-app") -> tuple[MCPServer, dict[str, Any]]:
    """An app with ``echo``, ``whoami`` (ctx.identity), ``boom`` (raises) and
    ``hang``, which waits for the test to fire the Deferred it appends to
    ``state["gates"]`` and counts its cancellations in ``state["cancelled"]``."""
    app = MCPServer(name, "1.0")
    state: dict[str, Any] = {"gates": [], "cancelled": 0}

    @app.tool()
    def echo(text: str) -> str:
        return text

    @app.tool()
    def whoami(ctx: Context) -> str:
        return str(ctx.identity)

    @app.tool()
    def boom() -> str:
        raise RuntimeError("kaboom")

    @app.tool()
    async def hang() -> str:
        """Waits until the test fires its gate (or it is cancelled)."""
        gate: defer.Deferred[str] = defer.Deferred()
        state["gates"].append(gate)
        try:
            return await gate
        except defer.CancelledError:
            state["cancelled"] += 1
            raise

    return app, state


class _ClockTimer:
    """Autobahn's timer interface (``call_later``, returning something with
    ``cancel``) on a clock; cancelling a call that has run is harmless, as in Autobahn."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any, **kwargs: Any) -> Any:
        call = self.clock.callLater(delay, fn, *args, **kwargs)
        return _Cancellable(call)


class _Cancellable:
    def __init__(self, call: IDelayedCall) -> None:
        self.call = call

    def cancel(self) -> None:
        if self.call.active():
            self.call.cancel()


def run_timers_on(factory: MCPServerFactory, clock: IReactorTime) -> None:
    """Put Autobahn's timers (auto-ping, handshake timeouts) on ``clock``.

    The factory's own timers (init, stall, drain) already use ``factory.clock``;
    Autobahn's use a batched timer on the global reactor, replaced here (a
    private attribute of Autobahn's factory). They then fire at exactly their
    delay instead of on whole seconds.
    """
    factory._batched_timer = _ClockTimer(clock)


class RecordingProtocol(MCPServerProtocol):
    """The real server protocol; it records each upgrade request and each
    close on its ``RecordingFactory``."""

    factory: RecordingFactory

    def onConnect(self, request: ConnectionRequest) -> Any:
        self.factory.upgrades.append(self.factory.clock.seconds())
        self.factory.upgrade_requests.append(request)
        return super().onConnect(request)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        super().onClose(wasClean, code, reason)
        self.factory.closes.append(code)
        waiters, self.factory.close_waiters = self.factory.close_waiters, []
        for waiter in waiters:
            waiter.callback(code)


class RecordingFactory(MCPServerFactory):
    """Serves with ``RecordingProtocol``: ``upgrades`` (when each came),
    ``upgrade_requests``, ``closes`` (codes). WebSocket ping is off unless
    asked for: it is noise in tests that are not about it."""

    protocol = RecordingProtocol

    def __init__(self, app: MCPServer, **options: Any) -> None:
        options.setdefault("ping_interval", 0)
        options.setdefault("ping_timeout", 0)
        super().__init__(app, **options)
        self.upgrades: list[float] = []
        self.upgrade_requests: list[ConnectionRequest] = []
        self.closes: list[int | None] = []
        self.close_waiters: list[Deferred[int | None]] = []

    def next_close(self) -> Deferred[int | None]:
        """Fires with the code of the next connection to close."""
        d: Deferred[int | None] = Deferred()
        self.close_waiters.append(d)
        return d.addTimeout(5, reactor)

    def only_session(self) -> Session:
        (connection,) = self.connections
        return connection.session  # type: ignore[return-value]


Route = Callable[[IncomingRequest], Any]


class FakeHandler:
    """A ``SessionHandler`` whose methods are a dict of functions (``echo``
    answers with its params), recording every call."""

    def __init__(self, routes: dict[str, Route] | None = None) -> None:
        self.routes: dict[str, Route] = {"echo": lambda request: request.params, **(routes or {})}
        self.requests: list[IncomingRequest] = []
        self.notifications: list[tuple[str, Any]] = []
        self.ready: list[Session] = []
        self.closed: list[Session] = []

    def describe(self, session: Session) -> dict[str, Any]:
        return {"capabilities": {"tools": {}}, "serverInfo": {"name": "fake", "version": "1"}}

    def handle_request(self, request: IncomingRequest) -> Any:
        self.requests.append(request)
        route = self.routes.get(request.method)
        if route is None:
            raise RPCError(METHOD_NOT_FOUND, f"Method not found: {request.method}")
        return route(request)

    def handle_notification(self, session: Session, method: str, params: Any) -> None:
        self.notifications.append((method, params))

    def session_ready(self, session: Session) -> None:
        self.ready.append(session)

    def session_closed(self, session: Session) -> None:
        self.closed.append(session)


def initialized(server: MCPServer, version: str = LATEST_PROTOCOL_VERSION, *,
                capabilities: dict[str, Any] | None = None, ready: bool = True) -> Peer:
    """A hand-written client of ``server`` over one in-memory session, past ``initialize``
    (and ``notifications/initialized`` unless ``ready=False``)."""
    peer = Peer(server)
    peer.initialize(version, capabilities, ready=ready)
    return peer


def text_of(result: dict[str, Any]) -> str:
    """The text of a result whose content is one text block."""
    assert [block["type"] for block in result["content"]] == ["text"], result
    return result["content"][0]["text"]  # type: ignore[no-any-return]


def result(reply: dict[str, Any]) -> Any:
    """The result of a JSON-RPC answer, which must not be an error."""
    assert "error" not in reply, reply
    return reply["result"]


def error_code(reply: dict[str, Any]) -> int:
    return reply["error"]["code"]  # type: ignore[no-any-return]


def waiting_route() -> tuple[Route, list[Deferred[Any]]]:
    """A route whose every request waits on a fresh Deferred, and the list of them."""
    deferreds: list[Deferred[Any]] = []

    def wait(request: IncomingRequest) -> Deferred[Any]:
        deferreds.append(Deferred())
        return deferreds[-1]

    return wait, deferreds


class Flow:
    """An OutputFlow the test controls: congested (``full``) or not; while
    full, ``when_writable`` waits until ``drain()``."""

    def __init__(self, full: bool = False) -> None:
        self.full = full
        self.waiters: list[Deferred[None]] = []

    def congested(self) -> bool:
        return self.full

    def when_writable(self) -> Deferred[None]:
        if not self.full:
            return defer.succeed(None)
        self.waiters.append(Deferred())
        return self.waiters[-1]

    def drain(self) -> None:
        self.full = False
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.callback(None)
