"""The Streamable HTTP client: SSE parsing and the 2026-07-28 headers
without sockets; the handshake-era details (session id, resumption, the GET
stream, DELETE, an expired session) against servers on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor, ssl, task
from twisted.web import resource, server

from mcp_twisted.client import ConnectionFailed, MCPClient, MCPClientService, backoff_policy
from mcp_twisted.client._sse import SSEEvent, SSEParser, StreamTooLarge
from mcp_twisted.demo import server as demo_app
from mcp_twisted.eras import InvalidToolHeaders, encode_header_value, request_headers, tool_param_headers
from tests.http_support import serve

# -- SSE, fed bytes ---------------------------------------------------------


def test_sse_events_ids_retry_comments_and_multi_line_data():
    parser = SSEParser()
    stream = (b": keep-alive\r\nid: 7\r\nretry: 250\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n"
              b"event: other\ndata: x\n\n")
    events = []
    for i in range(len(stream)):  # one byte at a time: CRLF split across chunks too
        events += parser.feed(stream[i:i + 1])
    assert events == [SSEEvent('{"a":\n1}', "7"), SSEEvent("x", "7", "other")]
    assert (parser.last_event_id, parser.retry) == ("7", 250)


def test_a_priming_event_sets_the_id_and_retry_and_dispatches_empty_data():
    parser = SSEParser()
    assert parser.feed(b"id: s1.0\nretry: 100\ndata: \n\n") == [SSEEvent("", "s1.0")]
    assert parser.feed(b"retry: soon\nid: bad\0id\n\n") == []  # ignored: not digits, a NUL
    assert (parser.last_event_id, parser.retry) == ("s1.0", 100)


def test_an_endless_line_is_refused():
    parser = SSEParser(max_event_size=64)
    with pytest.raises(StreamTooLarge):
        parser.feed(b"data: " + b"x" * 100)


# -- 2026-07-28 headers ------------------------------------------------------


def test_standard_headers_name_the_method_and_its_target():
    assert request_headers("tools/list", {}) == {"Mcp-Method": "tools/list"}
    assert request_headers("resources/read", {"uri": "file:///a b"}) == {
        "Mcp-Method": "resources/read", "Mcp-Name": "file:///a b"}
    assert request_headers("prompts/get", {"name": "Grüße"})["Mcp-Name"] == "=?base64?R3LDvMOfZQ==?="


def test_annotated_arguments_are_mirrored_and_unsafe_values_base64():
    schema = {"type": "object", "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "count": {"type": "integer", "x-mcp-header": "Count"},
        "on": {"type": "boolean", "x-mcp-header": "On"},
        "plain": {"type": "string"}}}
    headers = tool_param_headers(schema)
    assert headers == {"region": "Region", "count": "Count", "on": "On"}
    sent = request_headers("tools/call", {"name": "t", "arguments": {
        "region": " eu ", "count": 3, "on": False, "plain": "x"}}, headers)
    assert sent == {"Mcp-Method": "tools/call", "Mcp-Name": "t", "Mcp-Param-Region": "=?base64?IGV1IA==?=",
                    "Mcp-Param-Count": "3", "Mcp-Param-On": "false"}
    assert encode_header_value(None) is None
    assert encode_header_value("=?base64?eA==?=").startswith("=?base64?P")  # looks encoded: encoded


@pytest.mark.parametrize("header", ["", "My Region", "Région", "a:b", None])
def test_invalid_header_annotations_are_refused(header):
    with pytest.raises(InvalidToolHeaders):
        tool_param_headers({"properties": {"v": {"type": "string", "x-mcp-header": header}}})


def test_duplicate_and_non_primitive_annotations_are_refused():
    with pytest.raises(InvalidToolHeaders, match="twice"):
        tool_param_headers({"properties": {"a": {"type": "string", "x-mcp-header": "X"},
                                           "b": {"type": "string", "x-mcp-header": "x"}}})
    with pytest.raises(InvalidToolHeaders, match="type"):
        tool_param_headers({"properties": {"a": {"type": "object", "x-mcp-header": "X"}}})


# -- against servers ----------------------------------------------------------


def fast() -> Any:
    return backoff_policy(initial_delay=0.05, max_delay=0.2, jitter=False)


@pytest_twisted.async_yield_fixture
async def services():
    started: list[MCPClientService] = []

    def start(url: str, **options: Any) -> MCPClientService:
        options.setdefault("backoff", fast())
        options.setdefault("request_timeout", 10.0)
        service = MCPClientService(reactor, url, era_cache={}, **options)
        started.append(service)
        service.startService()
        return service

    yield start
    for service in started:
        await service.stopService()


@pytest_twisted.async_yield_fixture
async def demo_http():
    _, http_resource, port = await serve(demo_app)
    yield http_resource, f"http://127.0.0.1:{port.getHost().port}/mcp"
    http_resource.close_all()
    await port.stopListening()


async def ready(service: MCPClientService) -> MCPClient:
    return await service.when_ready().addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_an_expired_session_is_initialized_again_with_its_subscriptions(services, demo_http):
    http_resource, url = demo_http
    service = services(url, era="legacy")
    client = await ready(service)
    first = service.connector.current
    assert first.session_id in http_resource.sessions
    updates: list[str] = []
    await client.subscribe("demo://readme", updates.append)
    http_resource.sessions[first.session_id].end()  # the server forgets the session: 404 from now on
    with pytest.raises(Exception):  # noqa: B017  # the call that met the 404 fails with the connection
        await client.call_tool("echo", {"text": "x"})
    await ready(service)
    second = service.connector.current
    assert second is not first and second.session_id in http_resource.sessions
    # The subscription is restored once the new session is up: news arrives again.
    await _until(lambda: updates or demo_app.notify_resource_updated("demo://readme"))
    assert set(updates) == {"demo://readme"}


@pytest_twisted.ensureDeferred
async def test_closing_deletes_the_session(services, demo_http):
    http_resource, url = demo_http
    service = services(url, era="legacy")
    await ready(service)
    session_id = service.connector.current.session_id
    assert session_id in http_resource.sessions
    await service.stopService()
    assert session_id not in http_resource.sessions


class ScriptedServer(resource.Resource):
    """A handshake-era server written out by hand: its tools/call stream
    drops after a priming event, the answer comes on the resumed GET, and it
    has no standalone GET stream (405)."""

    isLeaf = True

    def __init__(self, refuse: int | None = None) -> None:
        super().__init__()
        self.refuse = refuse
        self.seen: list[tuple[str, Any]] = []
        self.pending: Any = None

    def render_POST(self, request: server.Request) -> bytes:
        message = json.loads(request.content.read())
        self.seen.append(("POST", message.get("method")))
        if self.refuse is not None:
            request.setResponseCode(self.refuse)
            return b"go away"
        request.setHeader("mcp-session-id", "s1")
        if "id" not in message:
            request.setResponseCode(202)
            return b""
        if message["method"] == "initialize":
            return _json(message["id"], {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                                         "serverInfo": {"name": "scripted", "version": "1"}})
        if message["method"] == "tools/call":
            self.pending = message["id"]
            request.setHeader("content-type", "text/event-stream")
            request.write(b"id: e1\nretry: 20\ndata: \n\n")
            request.finish()
            return server.NOT_DONE_YET  # type: ignore[no-any-return]
        request.setResponseCode(400)
        return _json(message["id"], error={"code": -32601, "message": "no"})

    def render_GET(self, request: server.Request) -> bytes:
        last = request.getHeader("last-event-id")
        self.seen.append(("GET", last))
        if last is None:
            request.setResponseCode(405)
            return b""
        request.setHeader("content-type", "text/event-stream")
        answer = json.dumps({"jsonrpc": "2.0", "id": self.pending,
                             "result": {"content": [{"type": "text", "text": "resumed"}]}})
        request.write(f"id: e2\ndata: {answer}\n\n".encode())
        return server.NOT_DONE_YET  # type: ignore[no-any-return]

    def render_DELETE(self, request: server.Request) -> bytes:
        self.seen.append(("DELETE", request.getHeader("mcp-session-id")))
        return b""


def _json(request_id: Any, result: Any = None, error: Any = None) -> bytes:
    message = {"jsonrpc": "2.0", "id": request_id}
    message.update({"error": error} if error is not None else {"result": result})
    return json.dumps(message).encode()


@pytest_twisted.async_yield_fixture
async def scripted():
    started: list[Any] = []

    async def listen(script: ScriptedServer) -> str:
        port = reactor.listenTCP(0, server.Site(script), interface="127.0.0.1")
        started.append(port)
        return f"http://127.0.0.1:{port.getHost().port}/mcp"

    yield listen
    for port in started:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_dropped_stream_is_resumed_with_last_event_id_and_405_is_tolerated(services, scripted):
    script = ScriptedServer()
    service = services(await scripted(script), era="legacy")
    client = await ready(service)
    result = await client.call_tool("anything")
    assert result["content"][0]["text"] == "resumed"
    await service.stopService()
    # The standalone GET goes out beside the call, so it may arrive before or after it.
    assert ("GET", None) in script.seen
    assert [seen for seen in script.seen if seen != ("GET", None)] == [
        ("POST", "initialize"), ("POST", "notifications/initialized"), ("POST", "tools/call"), ("GET", "e1"),
        ("DELETE", "s1")]


@pytest.mark.parametrize("status", [401, 403, 404, 503])
@pytest_twisted.ensureDeferred
async def test_refusals_grow_the_backoff_then_give_up_naming_the_status(services, scripted, status):
    script = ScriptedServer(refuse=status)
    service = services(await scripted(script), era="legacy", max_attempts=3)
    with pytest.raises(ConnectionFailed, match=f"after 3 failed attempts: initialize failed: HTTP {status}"):
        await ready(service)
    assert script.seen == [("POST", "initialize")] * 3


async def _until(predicate: Any, limit: int = 200) -> None:
    for _ in range(limit):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not met")


def server_tls(pki: dict[str, Any], client_ca: Any = None) -> Any:
    private = ssl.PrivateCertificate.loadPEM(pki["server"].private_key_and_cert_chain_pem.bytes())
    if client_ca is None:
        return private.options()
    return private.options(ssl.Certificate.loadPEM(client_ca.cert_pem.bytes()))  # a client cert required


@pytest_twisted.async_yield_fixture
async def https_server():
    listening: list[Any] = []

    async def start(options: Any) -> str:
        endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1")
        _, http_resource, port = await serve(demo_app, endpoint=endpoint)
        listening.append((http_resource, port))
        return f"https://localhost:{port.getHost().port}/mcp"

    yield start
    for http_resource, port in listening:
        http_resource.close_all()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_https_verifies_the_server_against_the_given_ca(services, pki, https_server):
    url = await https_server(server_tls(pki))
    client = await ready(services(url, tls_ca=pki["ca.pem"]))
    assert (await client.call_tool("echo", {"text": "secure"}))["content"][0]["text"] == "secure"
    stranger = services(url, tls_ca=pki["other_ca.pem"], max_attempts=1)
    with pytest.raises(ConnectionFailed, match=r"TLS verification failed: .*certificate verify failed"):
        await ready(stranger)


@pytest_twisted.ensureDeferred
async def test_https_presents_a_client_certificate(services, pki, https_server):
    url = await https_server(server_tls(pki, client_ca=pki["ca"]))
    client = await ready(services(url, tls_ca=pki["ca.pem"], tls_client_cert=pki["client.pem"],
                                  tls_client_key=pki["client.key"]))
    assert (await client.call_tool("echo", {"text": "mutual"}))["content"][0]["text"] == "mutual"
    anonymous = services(url, tls_ca=pki["ca.pem"], max_attempts=1)
    with pytest.raises(ConnectionFailed, match="TLS handshake failed"):
        await ready(anonymous)
