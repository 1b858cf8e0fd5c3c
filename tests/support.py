"""Helpers for tests over real sockets on 127.0.0.1.

The WebSocket peer here is Autobahn's own client (not code of ours), and the
handshake probe is a raw TCP client, so status lines and headers are seen
exactly as a browser or proxy would see them.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.defer import Deferred

from mcp_twisted.websocket import MCPServerFactory


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
