"""The client against malicious or broken servers: none of them may make a
request hang, hold sockets or memory without bound, spin the reactor or the
reconnecting service, or make the client log a traceback for their mistakes."""

from __future__ import annotations

import io
import json
import sys
import time
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.web import resource, server

from mcp_twisted import MCPServer
from mcp_twisted.client import (
    ConnectionLost,
    MCPClient,
    MCPClientService,
    RequestTimedOut,
    _api,
    backoff_policy,
)
from mcp_twisted.client._http import HTTPError
from mcp_twisted.client._lifecycle import ConnectionState
from mcp_twisted.client._service import MIN_UPTIME
from mcp_twisted.client._sse import SSEParser, StreamTooLarge
from mcp_twisted.client.cli import Progress
from mcp_twisted.jsonrpc import LocalProtocolError
from mcp_twisted.websocket import MCPServerFactory
from tests.test_client import ScriptedEndpoint, clocked_service, run_attempts
from tests.test_client_cli import run_all

# -- SSE, fed bytes ----------------------------------------------------------


def test_an_endless_line_costs_linear_time():
    parser = SSEParser()
    parser.feed(b"data: ")
    chunk = b"x" * 65536
    started = time.process_time()
    try:
        for _ in range(8 * 16):  # 8 MiB, as a socket delivers it
            parser.feed(chunk)
    except StreamTooLarge:
        pass
    assert time.process_time() - started < 1.0  # rescanning the buffer per chunk took seconds


# -- handshake-era Streamable HTTP servers on 127.0.0.1 ------------------------


def _json(request_id: Any, result: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()


class HandshakeServer(resource.Resource):
    """Answers initialize with a session; subclasses answer the other
    requests (``post``) and the GETs (``get``; by default 405: no stream)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str | None] = []
        self.open_streams = 0

    def render_POST(self, request: server.Request) -> Any:
        message = json.loads(request.content.read())
        request.setHeader("mcp-session-id", "s1")
        if "id" not in message:
            request.setResponseCode(202)
            return b""
        if message["method"] == "initialize":
            request.setHeader("content-type", "application/json")
            return _json(message["id"], {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                                         "serverInfo": {"name": "hostile", "version": "0"}})
        return self.post(request, message)

    def post(self, request: server.Request, message: dict[str, Any]) -> Any:
        request.setHeader("content-type", "application/json")
        return _json(message["id"], {"content": []})

    def render_GET(self, request: server.Request) -> Any:
        last = request.getHeader("last-event-id")
        self.gets.append(last)
        return self.get(request, last)

    def get(self, request: server.Request, last: str | None) -> Any:
        request.setResponseCode(405)
        return b""

    def render_DELETE(self, request: server.Request) -> bytes:
        return b""

    def stream(self, request: server.Request, *events: bytes) -> Any:
        """Starts an SSE stream with ``events`` and leaves it open."""
        request.setHeader("content-type", "text/event-stream")
        for event in events:
            request.write(event)
        self.open_streams += 1
        request.notifyFinish().addBoth(lambda _: setattr(self, "open_streams", self.open_streams - 1))
        return server.NOT_DONE_YET


@pytest_twisted.async_yield_fixture
async def http_service():
    """``await http_service(server_resource, **options)`` serves it and starts a
    handshake-era client service for it; both are stopped after the test."""
    started: list[tuple[Any, MCPClientService]] = []

    async def start(script: HandshakeServer, **options: Any) -> MCPClientService:
        port = reactor.listenTCP(0, server.Site(script), interface="127.0.0.1")
        options.setdefault("backoff", backoff_policy(initial_delay=0.05, max_delay=0.2, jitter=False))
        service = MCPClientService(reactor, f"http://127.0.0.1:{port.getHost().port}/mcp", era="legacy",
                                   era_cache={}, **options)
        started.append((port, service))
        service.startService()
        return service

    yield start
    for port, service in started:
        await service.stopService()
        await port.stopListening()


async def ready(service: MCPClientService, within: float = 10) -> MCPClient:
    return await service.when_ready().addTimeout(within, reactor)


async def _until(predicate: Any, limit: int = 300) -> None:
    for _ in range(limit):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not met")


class GiantEvent(HandshakeServer):
    def post(self, request: server.Request, message: dict[str, Any]) -> Any:
        line = b"data: " + b"x" * 4090 + b"\n"  # many short lines: cheap to parse, one huge event
        return self.stream(request, b"id: 1\n", *[line] * (17 * 256))


@pytest_twisted.ensureDeferred
async def test_an_event_over_the_limit_fails_the_request_it_carried(http_service):
    client = await ready(await http_service(GiantEvent(), request_timeout=None))
    call = client.call_tool("x").addTimeout(10, reactor)  # it used to wait forever
    try:
        await call
    except HTTPError as e:
        assert "SSE event over" in str(e)
    else:
        raise AssertionError("answered?")


class PrimingOnly(HandshakeServer):
    """Every stream, and every resumption, brings only a priming event (the
    same id, ``retry: 0``) and ends."""

    priming = b"retry: 0\nid: 1\ndata:\n\n"

    def post(self, request: server.Request, message: dict[str, Any]) -> Any:
        request.setHeader("content-type", "text/event-stream")
        return self.priming

    def get(self, request: server.Request, last: str | None) -> Any:
        if last is None:
            return super().get(request, last)
        request.setHeader("content-type", "text/event-stream")
        return self.priming


@pytest_twisted.ensureDeferred
async def test_resumptions_that_bring_nothing_are_capped_and_paced(http_service):
    script = PrimingOnly()
    client = await ready(await http_service(script, request_timeout=None))
    started = reactor.seconds()
    call = client.call_tool("x").addTimeout(10, reactor)  # it used to resume in a hot loop forever
    try:
        await call
    except HTTPError as e:
        assert "resumptions in a row brought nothing new" in str(e)
    else:
        raise AssertionError("answered?")
    resumptions = [last for last in script.gets if last is not None]
    assert resumptions == ["1"] * 5
    assert reactor.seconds() - started >= 0.5  # retry: 0 is not taken literally


class NeverEnding(HandshakeServer):
    """Answers each call on an SSE stream that it never ends."""

    def post(self, request: server.Request, message: dict[str, Any]) -> Any:
        answer = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}})
        return self.stream(request, f"id: {message['id']}\ndata: {answer}\n\n".encode())


@pytest_twisted.ensureDeferred
async def test_a_stream_is_closed_once_its_answer_came(http_service):
    script = NeverEnding()
    client = await ready(await http_service(script))
    for _ in range(5):
        await client.call_tool("x")
    await _until(lambda: script.open_streams == 0)  # each used to stay open, with its socket


class SilentGet(HandshakeServer):
    def get(self, request: server.Request, last: str | None) -> Any:
        return server.NOT_DONE_YET  # no response headers, ever


@pytest_twisted.ensureDeferred
async def test_a_get_stream_never_answered_does_not_keep_the_session_from_ready(http_service):
    client = await ready(await http_service(SilentGet(), request_timeout=0.5), within=5)
    assert (await client.call_tool("x")) == {"content": []}


class EndlessPages(HandshakeServer):
    """Every tools/list page names a next one: a new cursor (after
    ``delay`` seconds), or with ``repeat`` the same one each time."""

    def __init__(self, repeat: bool = False, delay: float = 0.0) -> None:
        super().__init__()
        self.repeat = repeat
        self.delay = delay
        self.pages = 0

    def post(self, request: server.Request, message: dict[str, Any]) -> Any:
        if message["method"] != "tools/list":
            return super().post(request, message)
        self.pages += 1
        cursor = "again" if self.repeat else f"page{self.pages}"
        page = _json(message["id"], {"tools": [{"name": f"t{self.pages}", "inputSchema": {"type": "object"}}],
                                     "nextCursor": cursor})
        request.setHeader("content-type", "application/json")
        if not self.delay:
            return page
        reactor.callLater(self.delay, lambda: (request.write(page), request.finish()))
        return server.NOT_DONE_YET


async def _walk(client: MCPClient, **options: Any) -> BaseException:
    try:
        async for _ in client.iter_tools(**options):
            pass
    except Exception as e:
        return e
    raise AssertionError("the walk ended")


@pytest_twisted.ensureDeferred
async def test_a_list_walk_stops_at_a_repeated_cursor_max_pages_and_its_timeout(http_service, monkeypatch):
    repeating = EndlessPages(repeat=True)
    client = await ready(await http_service(repeating))
    error = await defer.ensureDeferred(_walk(client)).addTimeout(10, reactor)
    assert isinstance(error, LocalProtocolError) and "twice" in str(error)
    assert repeating.pages == 2

    monkeypatch.setattr(_api, "MAX_PAGES", 20)
    fresh = EndlessPages()
    client = await ready(await http_service(fresh))
    error = await defer.ensureDeferred(_walk(client)).addTimeout(10, reactor)
    assert isinstance(error, LocalProtocolError) and "more than 20 pages" in str(error)
    assert fresh.pages == 20

    slow = EndlessPages(delay=0.1)
    client = await ready(await http_service(slow))
    started = reactor.seconds()
    error = await defer.ensureDeferred(_walk(client, timeout=0.5)).addTimeout(10, reactor)
    assert isinstance(error, RequestTimedOut) and reactor.seconds() - started < 1.0


# -- the reconnecting service ---------------------------------------------------


def test_a_server_that_drops_every_session_at_once_is_retried_with_growing_delays():
    clock = task.Clock()
    endpoint = ScriptedEndpoint(clock)
    app = MCPServer("flapping", "1.0")
    endpoint.server = MCPServerFactory(app, clock=clock, ping_interval=0, ping_timeout=0)
    service = clocked_service(clock, endpoint)
    service.startService()

    def session_then_drop(after: float = 0.0) -> None:
        endpoint.pumps[-1].flush()  # upgrade and handshake
        assert service.client.connected
        clock.advance(after)
        endpoint.pumps[-1].serverIO.loseConnection()
        endpoint.pumps[-1].flush()

    for attempt in range(1, 5):
        run_attempts(clock, endpoint, attempt)
        session_then_drop()
    run_attempts(clock, endpoint, 5)
    assert endpoint.gaps() == [1.0, 2.0, 4.0, 8.0]  # each used to be 1.0: a reset per session
    # A session that stays up starts the count afresh.
    session_then_drop(after=MIN_UPTIME)
    run_attempts(clock, endpoint, 6)
    assert endpoint.gaps(4) == [MIN_UPTIME + 1.0]
    service.stopService()


# -- stdio ------------------------------------------------------------------------

def stdio_server(then: str) -> str:
    """A child that answers initialize, reads notifications/initialized, then runs ``then``."""
    return """
import json, os, sys, time
request = json.loads(sys.stdin.readline())
print(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "f", "version": "0"}}}),
    flush=True)
sys.stdin.readline()  # notifications/initialized
""" + then


async def lost_ping(script: str) -> tuple[ConnectionLost, Any]:
    """Serve ``script`` over stdio, ping it; the ping's ConnectionLost and the connection."""
    service = MCPClientService(reactor, command=[sys.executable, "-c", script], era="legacy",
                               request_timeout=20, close_timeout=0.2, max_attempts=1)
    service.startService()
    try:
        client = await ready(service)
        connection = service.connector.current
        try:
            await client.ping().addTimeout(5, reactor)  # it used to wait for its timeout: nothing reads
        except ConnectionLost as e:
            await connection.when_closed().addTimeout(5, reactor)  # the child is ended, not left running
            return e, connection
        raise AssertionError("the ping was answered")
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_child_that_closes_its_stdout_is_a_lost_connection():
    error, connection = await lost_ping(stdio_server("os.close(1)\ntime.sleep(30)\n"))
    assert "closed its stdout" in str(error)
    assert connection.connection_state is ConnectionState.CLOSED


@pytest_twisted.ensureDeferred
async def test_a_child_that_crashes_is_reported_by_its_exit_status():
    # It closes stdout as it ends: that alone is not the reason to give.
    error, _ = await lost_ping(stdio_server("sys.stdin.readline()  # the ping\nsys.exit(3)\n"))
    assert "exit code 3" in str(error)


# -- malformed notifications and results ---------------------------------------------


class BadNotifications(HandshakeServer):
    """Sends a call's answer after 100 resources/updated notifications whose
    uri is a list and 100 progress notifications whose progress is a string."""

    def post(self, request: server.Request, message: dict[str, Any]) -> Any:
        if message["method"] != "tools/call":
            return super().post(request, message)  # the subscription
        token = message["params"]["_meta"]["progressToken"]
        events = []
        for _ in range(100):
            for bad in ({"method": "notifications/resources/updated", "params": {"uri": ["not", "a", "uri"]}},
                        {"method": "notifications/progress",
                         "params": {"progressToken": token, "progress": "lots", "total": 3}}):
                events.append(b"data: " + json.dumps({"jsonrpc": "2.0", **bad}).encode() + b"\n\n")
        answer = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}})
        request.setHeader("content-type", "text/event-stream")
        return b"".join(events) + f"data: {answer}\n\n".encode()


@pytest_twisted.ensureDeferred
async def test_malformed_notifications_are_ignored_and_logged_once(http_service, events):
    client = await ready(await http_service(BadNotifications()))
    client.subscribe("demo://x", lambda uri: None).addErrback(lambda failure: None)
    shown = io.StringIO()
    assert await client.call_tool("x", on_progress=Progress(shown)) == {"content": []}
    assert shown.getvalue() == ""
    assert not [event for event in events if event.get("log_failure")]  # each one used to log a traceback
    assert len([event for event in events if "malformed notification" in event.get("log_format", "")]) == 1


class MalformedResults(HandshakeServer):
    def post(self, request: server.Request, message: dict[str, Any]) -> Any:
        request.setHeader("content-type", "application/json")
        if message["method"] == "tools/list":
            return _json(message["id"], {"tools": [{"description": "no name"}]})
        shapes = {"no-text": {"content": [{"type": "text"}]}, "list": ["not", "an", "object"]}
        return _json(message["id"], shapes[message["params"]["name"]])


@pytest_twisted.ensureDeferred
async def test_the_cli_reports_a_malformed_answer_in_one_line_and_exits_1():
    port = reactor.listenTCP(0, server.Site(MalformedResults()), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/mcp"
    try:
        runs = await run_all(*[("--era", "legacy", url, *command)
                               for command in (("call", "no-text"), ("call", "list"), ("tools",))])
    finally:
        await port.stopListening()
    for code, out, err in runs:
        assert (code, out) == (1, "")  # it used to be a traceback and 3, "could not connect"
        assert err.startswith("mcp-call: malformed answer") and err.count("\n") == 1, err


@pytest_twisted.ensureDeferred
async def test_streams_a_server_ends_keep_their_pooled_connection():
    # Only a stream the server leaves open after its answer is aborted (after
    # ANSWERED_STREAM_GRACE): aborting at once cost a TCP connection a call.
    from autobahn.twisted.resource import WebSocketResource
    from twisted.internet import endpoints

    from mcp_twisted.client import MCPClientService
    from mcp_twisted.http import HTTPSettings, MCPHTTPResource, MCPSite

    app = MCPServer("pooled")

    @app.tool()
    def echo(text: str) -> str:
        return text

    factory = MCPServerFactory(app, ping_interval=0)
    streaming = MCPHTTPResource(factory.host, HTTPSettings(always_stream=True))
    site = MCPSite(streaming, WebSocketResource(factory), max_body_size=1 << 20)
    built = []
    build = site.buildProtocol
    site.buildProtocol = lambda addr: built.append(addr) or build(addr)  # type: ignore[method-assign]
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    service = MCPClientService(reactor, url=f"http://127.0.0.1:{port.getHost().port}/mcp")
    service.startService()
    try:
        client = await service.when_ready()
        before = len(built)
        for _ in range(5):
            assert (await client.call_tool("echo", {"text": "x"}))["content"][0]["text"] == "x"
        assert len(built) - before <= 1
    finally:
        await service.stopService()
        await port.stopListening()
