"""Running in production, over real sockets on 127.0.0.1: limits, auth
(bearer tokens and mutual TLS), Prometheus metrics and health, and logs.

Timeouts run on a ``task.Clock`` (the factory's, with Autobahn's timers put
on it by ``served(clock=...)``): the socket is real, the waiting is not.
"""

from __future__ import annotations

import io
import json
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import trustme
from autobahn.twisted.websocket import WebSocketClientFactory
from autobahn.websocket.protocol import WebSocketProtocol
from cryptography import x509
from OpenSSL import SSL
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, endpoints, protocol, reactor, ssl, task
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.logger import (
    Logger,
    LogLevel,
    eventsFromJSONLogFile,
    formatEvent,
)
from twisted.plugin import getPlugins
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from mcp_twisted.auth import TokenAuthenticator
from mcp_twisted.endpoints import MutualTLSServerParser
from mcp_twisted.logs import json_stdout
from mcp_twisted.metrics import Metrics, metrics_site
from mcp_twisted.service import MCPWebSocketService
from mcp_twisted.websocket import MCPServerFactory
from tests.support import (
    ProbeClient,
    RecordingEndpoint,
    RecordingFactory,
    SilentClient,
    connect,
    find,
    handshake,
    listen,
    make_app,
    stop,
    until,
)

TOKEN = "tok-5f3a9c1e-very-secret"
WRONG_TOKEN = "tok-00000000-wrong"


def call(client: ProbeClient, request_id: Any, tool: str, **arguments: Any) -> None:
    client.send_json({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                      "params": {"name": tool, "arguments": arguments}})


# 1. Limits.


@pytest_twisted.ensureDeferred
async def test_max_connections_refuses_503_then_accepts_after_a_close(served, events):
    factory, port, _ = await served(max_connections=2)
    first = await connect(port)
    await connect(port)
    status, _ = await handshake(port)
    assert status == 503
    (refusal,) = find(events, "Refused", reason="capacity")
    assert refusal["code"] == 503
    assert len(factory.connections) == 2
    first.sendClose(1000)
    await first.closed
    await until(lambda: factory.countConnections < 2)
    third = await connect(port)
    assert (await third.request(1, "ping"))["result"] == {}
    assert len(factory.connections) == 2


class _PartialRequest(protocol.Protocol):
    """Sends the start of an upgrade request and never finishes it."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_opening_handshake_timeout_drops_a_client_that_never_finishes(served):
    clock = task.Clock()
    factory, port, _ = await served(open_handshake_timeout=2, clock=clock)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = await endpoints.connectProtocol(endpoint, _PartialRequest())
    try:
        await until(lambda: factory.handshaking)
        (server_side,) = factory.handshaking
        clock.advance(1.9)
        assert server_side.state == WebSocketProtocol.STATE_CONNECTING and not server_side.droppedByMe
        clock.advance(0.1)  # dropped by the timer, at its deadline
        assert server_side.droppedByMe
        await client.lost.addTimeout(5, reactor)
    finally:
        client.transport.abortConnection()
    assert client.received == b""
    assert factory.connections == set()


class DeafToCloseClient(ProbeClient):
    """Records the server's close frame and never answers it."""

    close_frames: list[int | None]

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> None:  # type: ignore[override]
        self.close_frames = [*getattr(self, "close_frames", []), code]


@pytest_twisted.ensureDeferred
async def test_closing_handshake_timeout_drops_a_client_that_never_answers(served, events):
    clock = task.Clock()
    factory, port, _ = await served(close_handshake_timeout=2, clock=clock)
    client = await connect(port, client=DeafToCloseClient)
    (server_side,) = factory.connections
    # A binary frame makes the server start the closing handshake (1003).
    client.sendMessage(b"{}", isBinary=True)
    await until(lambda: getattr(client, "close_frames", None))
    clock.advance(1.9)  # the server waits for the answer first
    assert server_side.state == WebSocketProtocol.STATE_CLOSING and not server_side.droppedByMe
    clock.advance(0.1)
    assert server_side.droppedByMe
    was_clean, _, _ = await client.closed.addTimeout(5, reactor)
    assert client.close_frames == [1003]
    assert not was_clean
    await until(lambda: not factory.connections)
    (closed,) = find(events, "Closed")
    assert closed["clean"] is False


@pytest_twisted.ensureDeferred
async def test_max_message_size_closes_1009(served):
    _, port, _ = await served(max_message_size=200)
    client = await connect(port)
    await client.initialize()
    reply = await client.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x" * 50}})
    assert reply["result"]["content"][0]["text"] == "x" * 50
    call(client, 2, "echo", text="x" * 300)
    assert (await client.closed)[1] == 1009


@pytest_twisted.ensureDeferred
async def test_max_in_flight_refuses_the_request_over_the_limit(served):
    _, port, state = await served(max_in_flight=2)
    client = await connect(port)
    await client.initialize()
    call(client, 1, "hang")
    call(client, 2, "hang")
    reply = await client.request(3, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    assert reply["error"]["code"] == -32000
    assert reply["error"]["data"] == {"limit": 2}
    assert len(state["gates"]) == 2
    # A slot frees up: the next request runs.
    state["gates"][0].callback("done")
    assert (await client.next_message())["id"] == 1
    reply = await client.request(4, "tools/call", {"name": "echo", "arguments": {"text": "again"}})
    assert reply["result"]["content"][0]["text"] == "again"


@pytest_twisted.ensureDeferred
async def test_handler_timeout_cancels_the_handler_and_answers_32001(served):
    clock = task.Clock()
    factory, port, state = await served(handler_timeout=0.5, clock=clock)
    client = await connect(port)
    await client.initialize()
    call(client, 1, "hang")
    await until(lambda: state["gates"])
    clock.advance(0.4)
    assert factory.app.sessions[0].in_flight == 1 and state["cancelled"] == 0
    clock.advance(0.1)
    reply = await client.next_message()
    assert reply["id"] == 1 and reply["error"]["code"] == -32001
    assert "time limit" in reply["error"]["message"]
    assert state["cancelled"] == 1
    # Fast handlers are not affected, and the session goes on.
    reply = await client.request(2, "tools/call", {"name": "echo", "arguments": {"text": "quick"}})
    assert reply["result"]["content"][0]["text"] == "quick"


@pytest_twisted.ensureDeferred
async def test_sub_second_open_handshake_timeout_is_refused_or_honoured(served):
    try:
        _, port, _ = await served(open_handshake_timeout=0.5)
    except ValueError:
        return  # refused, like sub-second ping settings
    for _ in range(3):
        # In the first part of a second the deadline rounds down to "now".
        while not 0.05 < reactor.seconds() % 1 < 0.3:
            await task.deferLater(reactor, 0.02)
        client = await connect(port)  # a prompt client must get through
        client.sendClose(1000)
        await client.closed


# 2. Auth: bearer tokens and mutual TLS.


def test_token_file(tmp_path: Path):
    path = tmp_path / "tokens"
    path.write_text("# who may connect\n\n  alice : a-token  \nbot:b:with:colons\n   # indented comment\n")
    auth = TokenAuthenticator.from_file(path)
    assert auth.authenticate("Bearer a-token") == "alice"
    assert auth.authenticate("bearer b:with:colons") == "bot"
    assert auth.authenticate("Bearer b") is None
    assert auth.authenticate("Bearer # who may connect") is None
    for bad, number in [("alice:a\nno-colon-here\n", 2), ("# c\n\n:token\n", 3), ("x:y\nname:   \n", 2)]:
        path.write_text(bad)
        with pytest.raises(ValueError, match=f"line {number}\\b"):
            TokenAuthenticator.from_file(path)
    path.write_text("# nobody\n")
    with pytest.raises(ValueError, match="no tokens"):
        TokenAuthenticator.from_file(path)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        (f"Bearer {WRONG_TOKEN}", 401),
        (f"Basic {TOKEN}", 401),
        (TOKEN, 401),
        ("Bearer", 401),
        (f"Bearer {TOKEN}", 101),
        (f"bearer {TOKEN}", 101),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bearer_token_handshake(served, authorization, status):
    _, port, _ = await served(auth=TokenAuthenticator({"alice": TOKEN, "bob": "other"}))
    headers = {"Authorization": authorization} if authorization is not None else {}
    assert (await handshake(port, headers=headers))[0] == status


@pytest_twisted.ensureDeferred
async def test_identity_is_the_token_name_and_the_token_is_never_logged(served, events):
    factory, port, _ = await served(auth=TokenAuthenticator({"alice": TOKEN, "bob": "other"}),
                                    metrics=Metrics())
    assert (await handshake(port, headers={"Authorization": f"Bearer {WRONG_TOKEN}"}))[0] == 401
    assert (await handshake(port, headers={"Authorization": f"Basic {TOKEN}"}))[0] == 401
    # The right token, refused for another reason.
    assert (await handshake(port, path="/nope", headers={"Authorization": f"Bearer {TOKEN}"}))[0] == 404
    client = await connect(port, headers={"Authorization": f"Bearer {TOKEN}"})
    await client.initialize()
    reply = await client.request(1, "tools/call", {"name": "whoami", "arguments": {}})
    assert reply["result"]["content"][0]["text"] == "alice"
    reply = await client.request(2, "tools/call", {"name": "boom", "arguments": {}})
    assert reply["result"]["isError"] is True
    client.sendClose(1000)
    await client.closed
    await until(lambda: not factory.connections)

    # The capture saw the handshakes (so the search below is not vacuous).
    assert len(find(events, "Refused", reason="auth")) == 2
    assert find(events, "Refused", reason="path")
    assert find(events, "Opened", identity="alice")
    assert find(events, "Closed")
    for event in events:
        texts = [formatEvent(event), *(repr(value) for value in event.values())]
        if event.get("log_failure") is not None:
            texts.append(event["log_failure"].getTraceback())
        for text in texts:
            assert TOKEN not in text, event
            assert WRONG_TOKEN not in text, event


class TLSProbeClient(ProbeClient):
    def connectionLost(self, reason: Any) -> None:
        self.factory.lost_reason = reason
        self.factory.lost.callback(None)
        super().connectionLost(reason)


async def tls_connect(port: int, server_ca: trustme.CA, cert: trustme.LeafCert | None) -> TLSProbeClient:
    client_certificate = None
    if cert is not None:
        client_certificate = ssl.PrivateCertificate.loadPEM(cert.private_key_and_cert_chain_pem.bytes())
    options = ssl.optionsForClientTLS(
        "localhost", trustRoot=ssl.Certificate.loadPEM(server_ca.cert_pem.bytes()),
        clientCertificate=client_certificate,
    )
    factory = WebSocketClientFactory(f"wss://localhost:{port}/mcp", protocols=["mcp"])
    factory.protocol = TLSProbeClient
    factory.opened = defer.Deferred()
    factory.lost = defer.Deferred()
    endpoint = endpoints.wrapClientTLS(options, endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    await endpoint.connect(factory)
    try:
        return await factory.opened.addTimeout(5, reactor)
    except Exception as e:
        await factory.lost
        e.lost = factory.lost_reason  # type: ignore[attr-defined]
        raise


@pytest_twisted.async_yield_fixture
async def mtls_server(pki):
    (parser,) = [p for p in getPlugins(IStreamServerEndpointStringParser) if p.prefix == "mtls"]
    # The repo's plugin (twisted/plugins/mcpws.py) with the repo's parser.
    assert isinstance(parser, MutualTLSServerParser)
    endpoint = endpoints.serverFromString(
        reactor, f"mtls:0:privateKey={pki['server.key']}:certKey={pki['server.pem']}"
                 f":caCerts={pki['client_ca.pem']}")
    factory = RecordingFactory(make_app()[0])
    port = await endpoint.listen(factory)
    assert port.getHost().host == "127.0.0.1"
    yield factory, port.getHost().port
    await stop(port, factory)


@pytest_twisted.ensureDeferred
async def test_mtls_client_certificate_is_the_identity(pki, mtls_server):
    _, port = mtls_server
    client = await tls_connect(port, pki["ca"], pki["alice"])
    await client.initialize()
    reply = await client.request(1, "tools/call", {"name": "whoami", "arguments": {}})
    subject = x509.load_pem_x509_certificate(pki["alice"].cert_chain_pems[0].bytes()).subject
    assert reply["result"]["content"][0]["text"] == subject.rfc4514_string()
    assert "CN=alice" in subject.rfc4514_string()
    client.sendClose(1000)
    assert (await client.closed)[:2] == (True, 1000)


@pytest.mark.parametrize("who", [None, "stranger"])
@pytest_twisted.ensureDeferred
async def test_mtls_refuses_clients_without_a_trusted_certificate(pki, mtls_server, who):
    factory, port = mtls_server
    with pytest.raises(ConnectionError) as raised:
        await tls_connect(port, pki["ca"], pki[who] if who else None)
    # Refused in the TLS handshake: no HTTP request ever reached the server.
    assert raised.value.lost.check(SSL.Error), raised.value.lost  # type: ignore[attr-defined]
    assert factory.upgrades == []
    assert factory.connections == set()
    # The listener still serves trusted clients.
    client = await tls_connect(port, pki["ca"], pki["alice"])
    assert (await client.request(1, "ping"))["result"] == {}
    assert len(factory.upgrades) == 1


# 3. Metrics and health.


async def http_get(port: int, path: str, accept: str | None = None, response: list[Any] | None = None,
                   ) -> tuple[int, str]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    headers = Headers({"Accept": [accept]} if accept else {})
    try:
        answer = await Agent(reactor, pool=pool).request(
            b"GET", f"http://127.0.0.1:{port}{path}".encode(), headers)
        if response is not None:
            response.append(answer)
        with warnings.catch_warnings():
            # Twisted 26.10 warns for its own HTTP/1.1 client transport.
            warnings.filterwarnings("ignore", "Using readBody with a transport", DeprecationWarning)
            body = readBody(answer)
        return answer.code, (await body).decode()
    finally:
        await pool.closeCachedConnections()


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    code, text = await http_get(port, "/metrics")
    assert code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest_twisted.async_yield_fixture
async def metered(served):
    factory, port, state = await served(metrics=Metrics())
    site_port = await listen(metrics_site(factory))
    yield factory, port, site_port.getHost().port, state
    await site_port.stopListening()


@pytest_twisted.ensureDeferred
async def test_metrics_follow_connections_refusals_requests_and_messages(metered):
    factory, port, metrics_port, state = metered
    before = await scrape(metrics_port)
    assert value(before, "mcp_connections_accepted_total", transport="websocket") == 0
    assert value(before, "mcp_connections_open") == 0

    assert (await handshake(port, path="/elsewhere"))[0] == 404
    client = await connect(port)
    await client.initialize()
    replies = [
        await client.request(1, "tools/list"),
        await client.request(2, "tools/call", {"name": "echo", "arguments": {"text": "a"}}),
        await client.request(3, "tools/call", {"name": "echo", "arguments": {"text": "b"}}),
        await client.request(4, "tools/call", {"name": "boom", "arguments": {}}),
        await client.request(5, "tools/call", {"name": "no-such-tool", "arguments": {}}),
    ]
    assert replies[3]["result"]["isError"] and replies[4]["error"]["code"] == -32602
    call(client, 6, "hang")
    await until(lambda: state["gates"])

    during = await scrape(metrics_port)
    assert value(during, "mcp_handshake_refusals_total", reason="path") == 1
    assert value(during, "mcp_connections_accepted_total", transport="websocket") == 1
    assert value(during, "mcp_connections_open") == 1
    assert value(during, "mcp_sessions_open", transport="websocket") == 1
    assert value(during, "mcp_requests_in_flight") == 1
    assert value(during, "mcp_requests_total", method="tools/list", outcome="ok", transport="websocket") == 1
    assert value(during, "mcp_requests_total", method="tools/call", outcome="ok", transport="websocket") == 2
    assert value(
        during, "mcp_requests_total", method="tools/call", outcome="tool_error", transport="websocket") == 1
    assert value(
        during, "mcp_requests_total", method="tools/call", outcome="error", transport="websocket") == 1
    assert value(during, "mcp_request_duration_seconds_count", method="tools/call") == 4
    # In: initialize, initialized, 6 requests. Out: 6 answers (the hanging one is pending).
    assert value(during, "mcp_messages_received_total") == 8
    assert value(during, "mcp_messages_sent_total") == 6

    state["gates"][0].callback("released")
    assert (await client.next_message())["id"] == 6
    client.sendClose(1000)
    await client.closed
    await until(lambda: not factory.connections)
    after = await scrape(metrics_port)
    assert value(after, "mcp_connections_open") == 0
    assert value(after, "mcp_requests_in_flight") == 0
    assert value(after, "mcp_connections_closed_total", code="1000") == 1
    assert value(after, "mcp_requests_total", method="tools/call", outcome="ok", transport="websocket") == 3
    assert value(after, "mcp_messages_sent_total") == 7
    assert value(after, "mcp_connections_accepted_total", transport="websocket") == 1
    assert value(after, "mcp_sessions_open", transport="websocket") == 0


class ThreadRecorder:
    """A collector that notes which thread the scrape runs in."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def collect(self) -> Any:
        self.threads.append(threading.current_thread())
        return []


@pytest_twisted.ensureDeferred
async def test_scrape_reads_live_state_in_the_reactor_thread(metered):
    # The live gauges walk connections, transports and sessions: Twisted
    # objects that only the reactor thread may touch.
    factory, port, metrics_port, _ = metered
    recorder = ThreadRecorder()
    factory.metrics.registry.register(recorder)
    await connect(port)
    assert value(await scrape(metrics_port), "mcp_connections_open") == 1
    assert recorder.threads == [threading.main_thread()]
    # Content negotiation as prometheus-client does it.
    response: list[Any] = []
    code, text = await http_get(metrics_port, "/metrics", "application/openmetrics-text", response)
    assert code == 200 and text.endswith("# EOF\n")
    (content_type,) = response[0].headers.getRawHeaders("content-type")
    assert content_type.startswith("application/openmetrics-text")


@pytest_twisted.ensureDeferred
async def test_ping_timeout_is_counted_and_logged(served, events):
    clock = task.Clock()
    factory, port, _ = await served(metrics=Metrics(), ping_interval=1, ping_timeout=1, clock=clock)
    client = await connect(port, client=SilentClient)
    peer = f"tcp4:127.0.0.1:{client.transport.getHost().port}"
    await client.initialize()
    clock.advance(1)  # ping
    clock.advance(1)  # no pong
    was_clean, _, _ = await client.closed.addTimeout(5, reactor)
    assert not was_clean
    await until(lambda: not factory.connections)
    assert factory.metrics.registry.get_sample_value("mcp_ping_timeouts_total") == 1
    assert find(events, "Dropping", peer=peer)


@pytest_twisted.ensureDeferred
async def test_healthz_says_503_while_the_service_drains():
    app, state = make_app()
    factory = MCPServerFactory(app, metrics=Metrics())
    listener, health = RecordingEndpoint(), RecordingEndpoint()
    service = MCPWebSocketService(factory, [listener], metrics_endpoint=health, drain_timeout=5,
                                  close_timeout=2)
    service.startService()
    stopping = None
    try:
        assert await http_get(health.port, "/healthz") == (200, "ok\n")
        client = await connect(listener.port)
        await client.initialize()
        call(client, 1, "hang")
        await until(lambda: state["gates"])
        stopping = defer.ensureDeferred(service.stopService())
        code, body = await http_get(health.port, "/healthz")
        assert (code, body) == (503, "draining\n")
        assert (await scrape(health.port))[("mcp_requests_in_flight", frozenset())] == 1
        state["gates"][0].callback("finished")
        assert (await client.next_message())["result"]["content"][0]["text"] == "finished"
        assert (await client.closed)[1] == 1001
        await stopping
        with pytest.raises(ConnectionRefusedError):
            await http_get(health.port, "/healthz")
    finally:
        if stopping is None:
            await service.stopService()


# 4. Logs.


@pytest_twisted.ensureDeferred
async def test_connection_lifecycle_is_logged_with_fields(served, events):
    _, port, _ = await served(allowed_origins=[])
    assert (await handshake(port, headers={"Origin": "https://evil.example"}))[0] == 403
    (refused,) = find(events, "Refused")
    assert refused["reason"] == "origin" and refused["code"] == 403
    assert refused["origin"] == "https://evil.example"

    client = await connect(port)
    peer = f"tcp4:127.0.0.1:{client.transport.getHost().port}"
    (opened,) = find(events, "Opened")
    assert opened["peer"] == peer
    await task.deferLater(reactor, 0.2)
    client.sendClose(1000)
    await client.closed
    await until(lambda: find(events, "Closed"))
    (closed,) = find(events, "Closed")
    assert closed["peer"] == peer and closed["code"] == 1000 and closed["clean"] is True
    assert 0.2 <= closed["duration"] < 5
    assert f"Closed {peer} code=1000" in formatEvent(closed)


@pytest_twisted.ensureDeferred
async def test_tool_exception_logs_traceback_and_client_gets_only_the_error_id(served, events):
    _, port, _ = await served()
    client = await connect(port)
    await client.initialize()
    reply = await client.request(1, "tools/call", {"name": "boom", "arguments": {}})
    assert reply["result"]["isError"] is True
    text = reply["result"]["content"][0]["text"]
    assert "kaboom" in text and "Traceback" not in text and "RuntimeError" not in text
    match = re.search(r"\(error id ([^)]+)\)", text)
    assert match, text
    (logged,) = [e for e in events if "error_id" in e]
    assert logged["error_id"] == match.group(1)
    assert logged["log_level"] == LogLevel.error
    traceback = logged["log_failure"].getTraceback()
    assert "Traceback" in traceback and "kaboom" in traceback and "RuntimeError" in traceback
    assert match.group(1) in formatEvent(logged)


def test_json_stdout_writes_json_records(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buffer)
    observer = json_stdout()
    Logger(namespace="mcp_twisted.test", observer=observer).info(
        "Closed {peer} code={code} after {duration:.1f}s", peer="tcp4:127.0.0.1:5", code=1000, duration=1.25)
    written = buffer.getvalue()
    assert written.startswith("\x1e") and written.endswith("\n")
    assert json.loads(written.lstrip("\x1e"))["code"] == 1000
    (event,) = eventsFromJSONLogFile(io.StringIO(written))
    assert event["peer"] == "tcp4:127.0.0.1:5" and event["code"] == 1000 and event["duration"] == 1.25
    assert event["log_namespace"] == "mcp_twisted.test"
    assert event["log_level"] == LogLevel.info
    # (Twisted's flattening keeps str(value) and drops the format spec: "1.25s".)
    assert formatEvent(event).startswith("Closed tcp4:127.0.0.1:5 code=1000 after 1.2")


def test_metric_labels_from_clients_are_bounded():
    from mcp_twisted.metrics import Metrics

    metrics = Metrics()
    request_finished = metrics.observer("http")
    for i in range(100):
        request_finished(f"made/up/{i}", "error", 0.001)
        metrics.connection_closed(3000 + i)
    request_finished("tools/call", "ok", 0.001)
    metrics.connection_closed(1001)
    sample = metrics.registry.get_sample_value
    assert sample("mcp_requests_total", {"method": "other", "outcome": "error", "transport": "http"}) == 100
    assert sample("mcp_requests_total", {"method": "tools/call", "outcome": "ok", "transport": "http"}) == 1
    assert sample("mcp_connections_closed_total", {"code": "other"}) == 100
    assert sample("mcp_connections_closed_total", {"code": "1001"}) == 1
    families = {f.name: f for f in metrics.registry.collect()}
    assert len(families["mcp_requests"].samples) <= 4  # two label sets: total + created each
