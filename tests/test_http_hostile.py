"""Streamable HTTP against malformed or hostile input: each gets its own
status and JSON-RPC error (never a 500 and a traceback), and no request is
answered twice or bypasses the limits.

In memory, as ``test_http.py``: ``tests.http_support.Served`` on a
``task.Clock``, with twisted.web's parser reading the bytes on both sides.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer

from mcp_twisted import Context, MCPServer
from mcp_twisted.eras import HEADER_MISMATCH, META_CLIENT_CAPABILITIES, META_LOG_LEVEL, META_PROTOCOL_VERSION
from mcp_twisted.http import HTTPSettings
from mcp_twisted.jsonrpc import INVALID_REQUEST
from mcp_twisted.metrics import Metrics
from tests.http_support import JSON_HEADERS, Served, call, init_message, notification, raw_request
from tests.support import find
from tests.test_http import SlowAuthenticator, http_app


def failures(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Log events with a traceback or above info level."""
    return [e for e in events
            if e.get("log_failure") is not None or e["log_level"].name not in ("debug", "info")]


def refusals(events: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    return [e for e in events
            if (e.get("log_format") or "").startswith("Refused") and e.get("reason") == reason]


# -- admission ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["[", "127.0.0.1:8080]", "[::1", "evil\uff03.example"])
def test_a_host_header_that_is_no_host_is_misdirected(events, host):
    server = Served(http_app()[0])
    wire = server.open()
    # As sent on the wire: UTF-8 bytes, which twisted.web reads as Latin-1 text.
    wire.send(raw_request("POST", "/mcp", JSON_HEADERS, json.dumps(init_message()).encode(),
                          host=host.encode().decode("latin-1")))
    assert wire.reply.status == 421 and wire.reply.complete
    assert len(refusals(events, "host")) == 1 and failures(events) == []
    assert server.resource.sessions == {}


@pytest.mark.parametrize("origin", ["http://[", "http://a]b", "http://\uff03"])
def test_an_origin_that_is_no_origin_is_forbidden(events, origin):
    server = Served(http_app()[0], allowed_origins=["http://*.b"])
    reply = server.post(init_message(), headers={"Origin": origin.encode().decode("latin-1")})
    assert reply.status == 403 and reply.complete
    assert len(refusals(events, "origin")) == 1 and failures(events) == []
    assert server.resource.sessions == {}


# -- tokens checked later: the cap and the drain still hold ------------------------


def test_the_session_cap_holds_for_initializes_whose_token_checks_end_later(events):
    auth = SlowAuthenticator()
    metrics = Metrics()
    server = Served(http_app()[0], auth=auth, max_connections=1, metrics=metrics)
    wires = [server.request("POST", init_message(), headers={"Authorization": "Bearer t"}) for _ in range(3)]
    for waiting in auth.waiting:
        waiting.callback("alice")
    assert [wire.reply.status for wire in wires] == [200, 503, 503]
    assert len(server.resource.sessions) == 1 and len(server.host.sessions) == 1
    assert len(refusals(events, "capacity")) == 2 and failures(events) == []
    assert metrics.registry.get_sample_value("mcp_handshake_refusals_total", {"reason": "capacity"}) == 2
    # A live session's requests are not new sessions: the cap does not refuse them.
    session = wires[0].reply.header("mcp-session-id")
    wire = server.request("POST", {"jsonrpc": "2.0", "id": 1, "method": "ping"}, session=session,
                          headers={"Authorization": "Bearer t"})
    auth.waiting[-1].callback("alice")
    assert wire.reply.status == 200


def test_an_initialize_whose_token_check_ends_after_the_drain_began_is_refused(events):
    auth = SlowAuthenticator()
    server = Served(http_app()[0], auth=auth)
    late = server.request("POST", init_message(), headers={"Authorization": "Bearer t"})
    server.host.drain()
    server.resource.close_all()
    auth.waiting[0].callback("alice")
    assert late.reply.status == 503 and late.reply.header("mcp-session-id") is None
    assert server.resource.sessions == {} and server.host.sessions == {}
    assert len(refusals(events, "draining")) == 1 and failures(events) == []


# -- Last-Event-ID ------------------------------------------------------------------


@pytest.mark.parametrize("last_event_id", ["0.\u00b2", "1.\u00b9", "0." + "9" * 5000])
def test_a_last_event_id_no_store_gave_opens_a_fresh_stream(events, last_event_id):
    server = Served(http_app()[0])
    session = server.initialize()
    reply = server.request("GET", session=session,
                           headers={"Last-Event-ID": last_event_id.encode().decode("latin-1")}).reply
    assert reply.status == 200 and reply.header("content-type") == "text/event-stream"
    assert [event.data for event in reply.events] == [b""]  # the priming event of a new stream, no replay
    assert server.http_session(session).standalone is not None and failures(events) == []


# -- 2026-07-28 routing headers -----------------------------------------------------


def modern_app() -> MCPServer:
    app = MCPServer("routed", "1.0")

    @app.tool(input_schema={"type": "object", "properties": {
        "count": {"type": "integer", "x-mcp-header": "Count"}}})
    def counter(count: int = 0) -> str:
        return str(count)

    @app.tool()
    def other() -> str:
        return "other ran"

    @app.tool()
    async def slow(ctx: Context) -> str:
        """Logs (which makes its answer a stream), then never answers."""
        await ctx.log("info", "started")
        never: defer.Deferred[str] = defer.Deferred()
        return await never

    return app


def modern_post(tool: str, arguments: dict[str, Any], routing: list[tuple[str, str]], **meta: Any) -> bytes:
    """A 2026-07-28 tools/call with these routing header lines (a name may
    repeat) and ``meta`` in its ``_meta``."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": tool, "arguments": arguments,
        "_meta": {META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: {}, **meta}}}).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in [
        ("Host", "127.0.0.1:8080"), *JSON_HEADERS.items(), ("MCP-Protocol-Version", "2026-07-28"), *routing,
        ("Content-Length", str(len(body)))])
    return f"POST /mcp HTTP/1.1\r\n{head}\r\n".encode() + body


def test_an_integer_routing_header_too_long_for_any_argument_is_a_mismatch(events):
    server = Served(modern_app())
    for count, status in (("5", 200), ("9" * 5000, 400), ("9" * 21, 400)):
        wire = server.open()
        wire.send(modern_post("counter", {"count": 5}, [
            ("Mcp-Method", "tools/call"), ("Mcp-Name", "counter"), ("Mcp-Param-Count", count)]))
        assert wire.reply.status == status, count
        if status == 400:
            assert wire.reply.json["error"]["code"] == HEADER_MISMATCH
    assert failures(events) == []


@pytest.mark.parametrize("routing", [
    [("Mcp-Method", "tools/call"), ("Mcp-Name", "counter"), ("Mcp-Name", "other")],
    [("Mcp-Method", "tools/list"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "other")],
    [("Mcp-Method", "tools/call"), ("Mcp-Name", "other"), ("Mcp-Name", "other")],
    [("Mcp-Method", "tools/call"), ("Mcp-Name", "counter"),
     ("Mcp-Param-Count", "1"), ("Mcp-Param-Count", "5")],
])
def test_a_routing_header_sent_twice_is_refused(routing):
    # A gateway may have routed on the first value: neither may be trusted.
    server = Served(modern_app())
    wire = server.open()
    tool = dict(routing)["Mcp-Name"]
    wire.send(modern_post(tool, {"count": 5} if tool == "counter" else {}, routing))
    assert wire.reply.status == 400
    assert wire.reply.json["error"]["code"] == HEADER_MISMATCH
    assert "more than once" in wire.reply.json["error"]["message"]


# -- MCP-Protocol-Version without a session --------------------------------------------


@pytest.mark.parametrize("version", ["garbage", "1999-01-01", "", "2027-01-01"])
def test_a_sessionless_notification_naming_no_revision_spoken_here_is_refused(version):
    # Only a 2026-07-28-era revision makes a session-less notification a
    # stateless one (accepted and dropped); others are refused as with a session.
    server = Served(http_app()[0])
    reply = server.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, version=version)
    assert reply.status == 400 and reply.json["error"]["code"] == INVALID_REQUEST
    assert reply.json["error"]["message"] == f"Unsupported MCP-Protocol-Version: {version}"
    assert server.post({"jsonrpc": "2.0", "method": "notifications/initialized"},
                       version="2026-07-28").status == 202


# -- 2026-07-28 streams: the stall limit --------------------------------------------


def test_a_paused_stateless_stream_is_dropped_only_after_staying_over_the_limit(events):
    metrics = Metrics()
    settings = HTTPSettings(keepalive_interval=10, max_output_buffer=1024, output_stall_timeout=30)
    app = modern_app()
    server = Served(app, settings, metrics=metrics)
    wire = server.open()
    wire.send(modern_post("slow", {}, [("Mcp-Method", "tools/call"), ("Mcp-Name", "slow")],
                          **{META_LOG_LEVEL: "info"}))
    assert wire.reply.header("content-type") == "text/event-stream"
    wire.protocol.pauseProducing()  # the client reads slowly: the kernel's send buffer is full
    server.clock.advance(3600)  # paused with little unsent, keep-alives going: no reason to drop it
    assert not wire.transport.disconnecting
    # Now more than the limit waits in the transport's write buffer.
    wire.transport.dataBuffer, wire.transport.offset, wire.transport._tempDataLen = b"x" * 2048, 0, 0
    server.clock.advance(10)  # a keep-alive finds the client over the limit: the clock starts
    server.clock.advance(29)
    assert not wire.transport.disconnecting
    server.clock.advance(1)
    assert wire.transport.disconnecting
    assert len(find(events, "Dropping a 2026-07-28 stream")) == 1 and metrics.output_stalls._value.get() == 1


# -- 2025-03-26 batches -----------------------------------------------------------------


def test_a_cancel_batched_before_its_request_leaves_the_request_to_answer_its_post():
    app, state = http_app()
    server = Served(app)
    session = server.initialize("2025-03-26")
    stream = server.request("GET", session=session, version="2025-03-26")
    batch = [notification("notifications/cancelled", {"requestId": 1}), call(1, "hang")]
    post = server.request("POST", batch, session=session, version="2025-03-26")
    # The session ignored the cancel (request 1 was not running yet): it runs on.
    assert post.replies() == [] and state["cancelled"] == 0
    state["gates"][0].callback("real result")
    assert post.reply.status == 200
    (answer,) = post.reply.json
    assert answer["id"] == 1 and answer["result"]["content"][0]["text"] == "real result"
    assert [event.data for event in stream.reply.events if event.data] == []  # answered once, on its POST


@pytest.mark.parametrize(("batch", "owed"), [
    ([{"jsonrpc": "2.0", "id": 5, "method": 123}, 7], [(5, INVALID_REQUEST), (None, INVALID_REQUEST)]),
    # Over the batch limit: one error for the batch, as a batch with requests gets.
    ([notification("notifications/roots/list_changed")] * 65, [(None, INVALID_REQUEST)]),
])
def test_a_batch_with_no_request_gets_the_errors_it_is_owed_on_its_post(batch, owed):
    server = Served(http_app()[0])
    session = server.initialize("2025-03-26")
    stream = server.request("GET", session=session, version="2025-03-26")
    reply = server.post(batch, session, version="2025-03-26")
    assert reply.status == 200 and reply.header("mcp-session-id") == session
    answers = reply.json if isinstance(reply.json, list) else [reply.json]
    assert [(a["id"], a["error"]["code"]) for a in answers] == owed
    assert [event.data for event in stream.reply.events if event.data] == []  # nothing for the GET stream
    # Notifications alone are owed nothing: 202, as before.
    assert server.post([notification("notifications/roots/list_changed")], session,
                       version="2025-03-26").status == 202


# -- the status table's order, and its log ---------------------------------------


@pytest.mark.parametrize(("path", "host", "status"), [
    ("/mcp", "127.0.0.1:8080", 405), ("/other", "127.0.0.1:8080", 404), ("/mcp", "evil.example", 421),
])
def test_an_unknown_method_is_admitted_first_as_every_method_is(path, host, status):
    # 405 says the path exists: a path the server does not serve is 404, and
    # a foreign Host 421, whatever the method.
    server = Served(http_app()[0])
    wire = server.open()
    wire.send(raw_request("PUT", path, JSON_HEADERS, b"{}", host=host))
    assert wire.reply.status == status
    assert (wire.reply.header("allow") is not None) == (status == 405)


def test_malformed_posts_are_logged_once_per_interval(events):
    server = Served(http_app()[0])
    session = server.initialize()
    statuses = [server.post(b"{not json", session).status,
                server.post(init_message(), headers={"Content-Type": "text/plain"}).status,
                server.post(init_message(), headers={"Accept": "text/html"}).status]
    for _ in range(100):
        server.post(b"[", session)
    assert statuses == [400, 415, 406]
    assert [e["count"] for e in find(events, "Refused {count} malformed POST")] == [1]
    server.clock.advance(10)
    lines = find(events, "Refused {count} malformed POST")
    assert [e["count"] for e in lines] == [1, 102] and lines[-1]["status"] == 400
    assert failures(events) == []
