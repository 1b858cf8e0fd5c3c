"""Helpers for the Streamable HTTP tests (``test_http*.py``).

In memory: ``Served`` is what ``MCPService`` listens with (an ``MCPSite``
with both transports, the factory's ``SessionHost``), on a ``task.Clock``,
and each request is a real HTTP/1.1 exchange with twisted.web's own parser
over a ``StringTransport``: status lines, headers, chunked bodies and SSE
are read from the bytes the server wrote, as a client would read them.

Over real sockets: ``serve`` listens on 127.0.0.1 and ``Agent`` requests
read the answers, SSE streams included, as they arrive.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import Agent, Response
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from mcp_twisted import MCPServer
from mcp_twisted.http import HTTPSettings, MCPHTTPResource, MCPSite
from mcp_twisted.protocol import LATEST_PROTOCOL_VERSION
from mcp_twisted.websocket import MCPServerFactory

BOTH = "application/json, text/event-stream"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": BOTH}


def init_message(version: str = LATEST_PROTOCOL_VERSION, capabilities: dict[str, Any] | None = None,
                 request_id: Any = 0) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": capabilities or {},
        "clientInfo": {"name": "http-test", "version": "0"}}}


def call(request_id: Any, tool: str, arguments: dict[str, Any] | None = None,
         **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments or {}, **params}}


def notification(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


@dataclass
class SSEEvent:
    id: str | None
    data: bytes
    retry: int | None = None

    @property
    def message(self) -> Any:
        return json.loads(self.data)


def parse_sse(body: bytes) -> tuple[list[SSEEvent], int]:
    """The complete events in an SSE body, and how many comment lines it had."""
    events, comments = [], 0
    for block in body.split(b"\n\n")[:-1]:  # the last piece is an incomplete event
        event_id, data, retry, seen = None, [], None, False
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                comments += 1
                continue
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            seen = True
            if name == b"id":
                event_id = value.decode()
            elif name == b"data":
                data.append(value)
            elif name == b"retry":
                retry = int(value)
        if seen:
            events.append(SSEEvent(event_id, b"\n".join(data), retry))
    return events, comments


@dataclass
class Reply:
    """One HTTP response as read off the wire (possibly still arriving)."""

    status: int
    reason: str
    headers: dict[str, list[str]]
    body: bytes = b""
    complete: bool = False

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def json(self) -> Any:
        assert self.header("content-type") == "application/json", self
        return json.loads(self.body)

    @property
    def events(self) -> list[SSEEvent]:
        assert self.header("content-type") == "text/event-stream", self
        return parse_sse(self.body)[0]

    @property
    def messages(self) -> list[Any]:
        """The JSON-RPC messages of an SSE body (priming events left out)."""
        return [event.message for event in self.events if event.data]

    @property
    def keepalives(self) -> int:
        return parse_sse(self.body)[1]


def parse_responses(data: bytes, closed: bool = False) -> list[Reply]:
    """Every HTTP/1.1 response in ``data`` (interim 1xx ones too), the last
    possibly incomplete; ``closed`` says the server closed the connection."""
    replies = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        _, code, reason = [*lines[0].split(" ", 2), ""][:3]
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        reply = Reply(int(code), reason, headers)
        replies.append(reply)
        if reply.status < 200 or reply.status in (204, 304):
            reply.complete, data = True, rest
            continue
        if "content-length" in headers:
            length = int(headers["content-length"][0])
            reply.body, data = rest[:length], rest[length:]
            reply.complete = len(reply.body) == length
        elif headers.get("transfer-encoding") == ["chunked"]:
            reply.body, reply.complete, data = _dechunk(rest)
        else:
            reply.body, reply.complete, data = rest, closed, b""
    return replies


def _dechunk(data: bytes) -> tuple[bytes, bool, bytes]:
    body = b""
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            return body, False, b""
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body, True, rest[2:]
        if len(rest) < size + 2:
            return body + rest[:size], False, b""
        body, data = body + rest[:size], rest[size + 2:]


def raw_request(method: str, path: str = "/mcp", headers: dict[str, str] | None = None,
                body: bytes = b"", host: str = "127.0.0.1:8080") -> bytes:
    """An HTTP/1.1 request as bytes (Content-Length from the body unless given)."""
    all_headers = {"Host": host, **(headers or {})}
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in all_headers):
        all_headers["Content-Length"] = str(len(body))
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in all_headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Wire:
    """One client connection to a site in memory."""

    def __init__(self, site: MCPSite, peer_port: int) -> None:
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", peer_port))
        self.protocol = site.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self.closed = False

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def replies(self) -> list[Reply]:
        return parse_responses(self.transport.value(), self.closed or self.transport.disconnecting)

    @property
    def reply(self) -> Reply:
        """The last (final) response on this connection, as far as it arrived."""
        final = [r for r in self.replies() if r.status >= 200]
        assert final, f"no response yet: {self.transport.value()!r}"
        return final[-1]

    def drop(self) -> None:
        """The client goes away (the TCP connection is lost)."""
        self.closed = True
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Served:
    """An app served as ``MCPService`` serves it (HTTP and WebSocket on one
    site, one ``SessionHost``), in memory on a ``task.Clock``."""

    def __init__(self, app: MCPServer, settings: HTTPSettings | None = None, **factory_options: Any) -> None:
        self.clock = task.Clock()
        factory_options.setdefault("ping_interval", 0)
        self.factory = MCPServerFactory(app, clock=self.clock, **factory_options)
        self.resource = MCPHTTPResource(self.factory.host, settings or HTTPSettings())
        self.site = MCPSite(self.resource, WebSocketResource(self.factory),
                            max_body_size=self.factory.host.limits.max_message_size)
        self.wires: list[Wire] = []

    @property
    def host(self) -> Any:
        return self.factory.host

    def open(self) -> Wire:
        self.wires.append(Wire(self.site, 40000 + len(self.wires)))
        return self.wires[-1]

    def request(self, method: str, body: Any = None, *, session: str | None = None,
                version: str | None = None, headers: dict[str, str] | None = None,
                path: str = "/mcp") -> Wire:
        """Send one request on a new connection; returns the connection
        (``wire.reply`` is its answer, as far as it has arrived)."""
        all_headers = dict(JSON_HEADERS if method == "POST" else {"Accept": "text/event-stream"})
        if session is not None:
            all_headers["Mcp-Session-Id"] = session
        if version is not None:
            all_headers["MCP-Protocol-Version"] = version
        all_headers.update(headers or {})
        data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        wire = self.open()
        wire.send(raw_request(method, path, {k: v for k, v in all_headers.items() if v is not None}, data))
        return wire

    def post(self, body: Any, session: str | None = None, **options: Any) -> Reply:
        return self.request("POST", body, session=session, **options).reply

    def initialize(self, version: str = LATEST_PROTOCOL_VERSION, capabilities: dict[str, Any] | None = None,
                   **options: Any) -> str:
        """A new session past ``notifications/initialized``; returns its id."""
        reply = self.post(init_message(version, capabilities), **options)
        assert reply.status == 200, reply
        session = reply.header("mcp-session-id")
        assert session, reply
        assert self.post(notification("notifications/initialized"), session, **options).status == 202
        return session

    def http_session(self, session: str) -> Any:
        return self.resource.sessions[session]


# -- real sockets -----------------------------------------------------------


async def serve(app: MCPServer, settings: HTTPSettings | None = None, *, endpoint: Any = None,
                **factory_options: Any) -> tuple[MCPServerFactory, MCPHTTPResource, Any]:
    """An ``MCPSite`` (both transports) on an ephemeral port of 127.0.0.1
    (or ``endpoint``); returns the factory, the HTTP resource and the port."""
    factory_options.setdefault("ping_interval", 0)
    factory = MCPServerFactory(app, **factory_options)
    resource = MCPHTTPResource(factory.host, settings or HTTPSettings())
    site = MCPSite(resource, WebSocketResource(factory), max_body_size=factory.host.limits.max_message_size)
    if endpoint is None:
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(site)
    return factory, resource, port


@implementer(IBodyProducer)
class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


async def agent_request(url: str, method: bytes = b"POST", body: Any = None,
                        **headers: str) -> tuple[Response, bytes]:
    """One request with ``Agent`` (JSON body, both Accept types; ``Mcp_Session_Id=``
    style keywords for headers); the response and its whole body."""
    all_headers = Headers({"Content-Type": ["application/json"], "Accept": [BOTH]})
    for name, value in headers.items():
        all_headers.setRawHeaders(name.replace("_", "-"), [value])
    producer = _Body(json.dumps(body).encode()) if body is not None else None
    response = await Agent(reactor).request(method, url.encode(), all_headers, producer)
    collected = Collect()
    response.deliverBody(collected)
    return response, await collected.done.addTimeout(15, reactor)


class Collect(protocol.Protocol):
    """Reads a response body as it arrives; ``done`` fires at its end."""

    def __init__(self) -> None:
        self.body = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.arrived: list[defer.Deferred[None]] = []

    def dataReceived(self, data: bytes) -> None:
        self.body += data
        waiting, self.arrived = self.arrived, []
        for d in waiting:
            d.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(self.body)

    @property
    def events(self) -> list[SSEEvent]:
        return parse_sse(self.body)[0]

    async def until_events(self, count: int, timeout: float = 5.0) -> list[SSEEvent]:
        """Wait for ``count`` events with data (priming events not counted)."""
        deadline = reactor.seconds() + timeout
        while len([e for e in self.events if e.data]) < count:
            if self.done.called or reactor.seconds() > deadline:
                raise AssertionError(f"{count} events expected, got {self.body!r}")
            d: defer.Deferred[None] = defer.Deferred()
            self.arrived.append(d)
            await d.addTimeout(max(0.01, deadline - reactor.seconds()), reactor).addErrback(lambda _: None)
        return [e for e in self.events if e.data]


@dataclass
class HTTPClient:
    """A Streamable HTTP client made of ``Agent`` requests, for tests of the wiring."""

    url: str
    session: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    agent: Agent = field(default_factory=lambda: Agent(reactor))

    def _headers(self, extra: Iterable[tuple[str, str]]) -> Headers:
        headers = Headers()
        for name, value in [*self.headers.items(), *extra]:
            headers.addRawHeader(name, value)
        if self.session is not None:
            headers.addRawHeader("Mcp-Session-Id", self.session)
        return headers

    async def open(self, method: str, body: Any = None, **headers: str) -> tuple[Response, Collect]:
        """Send a request; returns the response and its body as it arrives."""
        extra = {**(JSON_HEADERS if method == "POST" else {"Accept": "text/event-stream"}), **headers}
        data = _Body(json.dumps(body).encode()) if body is not None else None
        response = await self.agent.request(method.encode(), self.url.encode(),
                                            self._headers(extra.items()), data)
        collect = Collect()
        response.deliverBody(collect)
        return response, collect

    async def post(self, body: Any, **headers: str) -> tuple[Response, bytes]:
        response, collect = await self.open("POST", body, **headers)
        return response, await collect.done.addTimeout(5, reactor)

    async def call(self, message: dict[str, Any]) -> Any:
        """POST a request; its answer, from a JSON body or the end of an SSE stream."""
        response, body = await self.post(message)
        assert response.code == 200, (response.code, body)
        content_type = response.headers.getRawHeaders("content-type", [""])[0]
        if content_type == "application/json":
            return json.loads(body)
        (answer,) = [m for m in (e.message for e in parse_sse(body)[0] if e.data) if "id" in m
                     and "method" not in m]
        return answer

    async def initialize(self, version: str = LATEST_PROTOCOL_VERSION,
                         capabilities: dict[str, Any] | None = None) -> Any:
        response, body = await self.post(init_message(version, capabilities))
        assert response.code == 200, body
        self.session = response.headers.getRawHeaders("mcp-session-id")[0]
        response, _ = await self.post(notification("notifications/initialized"))
        assert response.code == 202
        return json.loads(body)
