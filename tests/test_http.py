"""Streamable HTTP (``mcp_twisted.http``): what each request gets, which
stream each message takes, session lifetime, replay, and the status table.

Most tests run the real ``MCPSite`` in memory (``tests.http_support.Served``:
twisted.web parses the bytes, the test reads the bytes it wrote back) with
time on a ``task.Clock``; the tests at the end use sockets on 127.0.0.1,
where the wiring is the point (Agent, TLS, both transports on one port,
the service's drain).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, ssl
from twisted.web.client import Agent
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from mcp_twisted import Context, MCPServer
from mcp_twisted.auth import TokenAuthenticator
from mcp_twisted.hosting import Refusal
from mcp_twisted.http import EventStore, HTTPSettings, MCPHTTPResource
from mcp_twisted.jsonrpc import INVALID_REQUEST, PARSE_ERROR
from mcp_twisted.metrics import Metrics
from mcp_twisted.protocol import SERVER_BUSY, SERVER_SHUTTING_DOWN
from mcp_twisted.proxy import TrustedProxies
from mcp_twisted.service import MCPService
from mcp_twisted.websocket import MCPServerFactory
from tests.http_support import (
    HTTPClient,
    Served,
    call,
    init_message,
    notification,
    raw_request,
    serve,
)
from tests.support import RecordingEndpoint, connect, find, make_app, until

CAPABILITIES = {"sampling": {}, "roots": {}, "elicitation": {}}
INFO_LOGS = {"jsonrpc": "2.0", "id": 0, "method": "logging/setLevel", "params": {"level": "info"}}


def http_app() -> tuple[MCPServer, dict[str, Any]]:
    """``make_app()``'s tools plus ones that talk before they answer."""
    app, state = make_app("http-app")

    @app.tool()
    async def steps(n: int, ctx: Context) -> str:
        """Reports progress ``n`` times, then waits for a gate."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n)
        gate: defer.Deferred[str] = defer.Deferred()
        state["gates"].append(gate)
        return await gate

    @app.tool()
    async def ask(prompt: str, ctx: Context) -> str:
        sampled = await ctx.sample(prompt)
        roots = await ctx.list_roots()
        form = await ctx.elicit("Name?", {"type": "object", "properties": {"name": {"type": "string"}}})
        return f"{sampled['content']['text']}|{roots[0]['uri']}|{form['content']['name']}"

    @app.tool()
    async def detach(ctx: Context) -> str:
        """Ends its stream at once (SEP-1699), then answers when its gate fires."""
        await ctx.log("info", "before")
        ctx.close_stream()
        gate: defer.Deferred[str] = defer.Deferred()
        state["gates"].append(gate)
        await ctx.log("info", "after")
        return await gate

    return app, state


@pytest.fixture
def served() -> tuple[Served, dict[str, Any]]:
    app, state = http_app()
    return Served(app), state


def answer(reply: Any) -> Any:
    """The JSON-RPC answer on an SSE reply (the message that is not a request or notification)."""
    (found,) = [m for m in reply.messages if "method" not in m]
    return found


# -- POST: what each kind of message gets ----------------------------------


def test_initialize_mints_a_random_128_bit_session_id(served):
    server, _ = served
    reply = server.post(init_message())
    assert reply.status == 200 and reply.json["result"]["protocolVersion"] == "2025-11-25"
    session = reply.header("mcp-session-id")
    assert len(session) == 32 and int(session, 16) >= 0  # 128 bits, visible ASCII
    assert server.post(init_message()).header("mcp-session-id") != session
    assert len(server.resource.sessions) == 2


def test_only_a_successful_initialize_makes_a_session(served):
    server, _ = served
    bad = init_message()
    del bad["params"]["protocolVersion"]
    reply = server.post(bad)
    assert reply.json["error"]["code"] == -32602
    assert reply.header("mcp-session-id") is None
    assert server.resource.sessions == {} and server.host.sessions == {}
    # initialize with a session id goes to that session, which is initialized already.
    session = server.initialize()
    again = server.post(init_message(), session)
    assert again.json["error"]["code"] == INVALID_REQUEST
    assert list(server.resource.sessions) == [session]


def test_notifications_and_responses_get_202_with_no_body(served):
    server, _ = served
    session = server.initialize()
    for message in (notification("notifications/roots/list_changed"),
                    {"jsonrpc": "2.0", "id": 99, "result": {}}):
        reply = server.post(message, session)
        assert (reply.status, reply.body, reply.header("content-type")) == (202, b"", None)


def test_a_request_answered_without_other_messages_gets_json_now_or_later(served):
    server, state = served
    session = server.initialize()
    reply = server.post(call(1, "echo", {"text": "hi"}), session)
    assert reply.status == 200 and reply.header("mcp-session-id") == session
    assert reply.json == {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "hi"}]}}
    later = server.request("POST", call(2, "hang"), session=session)
    assert later.transport.value() == b""  # nothing yet, not even the head
    state["gates"][0].callback("done")
    assert later.reply.json["result"]["content"][0]["text"] == "done" and later.reply.complete


def test_a_request_whose_handler_talks_first_gets_an_sse_stream_from_that_message_on(served):
    server, state = served
    session = server.initialize()
    wire = server.request("POST", call(1, "steps", {"n": 2}, _meta={"progressToken": "t"}), session=session)
    reply = wire.reply
    assert reply.header("content-type") == "text/event-stream" and not reply.complete
    priming, *progress = reply.events
    assert (priming.data, priming.retry) == (b"", 1000) and priming.id
    assert [e.message["params"]["progress"] for e in progress] == [1, 2]
    state["gates"][0].callback("end")
    reply = wire.reply
    assert reply.complete  # the stream ends with the answer
    assert answer(reply)["result"]["content"][0]["text"] == "end"
    ids = [event.id for event in reply.events]
    assert len(set(ids)) == len(ids) == 4 and all(ids)


def test_streams_of_older_revisions_start_without_a_priming_event(served):
    server, _ = served
    session = server.initialize("2025-06-18")
    wire = server.request("POST", call(1, "steps", {"n": 1}, _meta={"progressToken": "t"}), session=session)
    (event,) = wire.reply.events
    assert event.retry is None and event.message["method"] == "notifications/progress"


def test_always_stream_answers_every_request_on_a_primed_stream():
    app, _ = http_app()
    server = Served(app, HTTPSettings(always_stream=True))
    reply = server.post(init_message())
    assert reply.header("content-type") == "application/json"  # its answer carries the session id
    session = reply.header("mcp-session-id")
    reply = server.post(call(1, "echo", {"text": "hi"}), session)
    assert reply.complete and [bool(e.data) for e in reply.events] == [False, True]
    assert answer(reply)["result"]["content"][0]["text"] == "hi"


def test_each_message_takes_exactly_one_stream(served):
    server, state = served
    session = server.initialize(capabilities=CAPABILITIES)
    get = server.request("GET", session=session)
    first = server.request("POST", call(1, "steps", {"n": 1}, _meta={"progressToken": "a"}), session=session)
    second = server.request("POST", call(2, "steps", {"n": 2}, _meta={"progressToken": "b"}), session=session)
    server.host.app.add_tool(lambda: "new", "added")  # list_changed: no request owns it
    server.http_session(session).session.notify("notifications/message", {"level": "info", "data": "x"})
    state["gates"][1].callback("two")
    state["gates"][0].callback("one")
    assert [m["params"]["progressToken"] for m in first.reply.messages if "method" in m] == ["a"]
    assert [m["params"]["progressToken"] for m in second.reply.messages if "method" in m] == ["b", "b"]
    assert answer(first.reply)["id"] == 1 and answer(second.reply)["id"] == 2
    assert [m["method"] for m in get.reply.messages] == ["notifications/tools/list_changed",
                                                         "notifications/message"]


def play_the_client(server: Served, session: str, wire: Any) -> None:
    """Answer the requests ``ask`` makes on ``wire``'s stream, one by one, with POSTs."""
    results = {
        "sampling/createMessage": {"role": "assistant", "content": {"type": "text", "text": "sampled"},
                                   "model": "m"},
        "roots/list": {"roots": [{"uri": "file:///r"}]},
        "elicitation/create": {"action": "accept", "content": {"name": "Ada"}},
    }
    for number, method in enumerate(results, 1):
        asked = [m for m in wire.reply.messages if "method" in m]
        assert len(asked) == number and asked[-1]["method"] == method
        reply = server.post({"jsonrpc": "2.0", "id": asked[-1]["id"], "result": results[method]}, session)
        assert (reply.status, reply.body) == (202, b"")


def test_requests_to_the_client_go_out_on_the_posts_stream_and_answers_come_back_as_posts(served):
    server, _ = served
    session = server.initialize(capabilities=CAPABILITIES)
    get = server.request("GET", session=session)
    wire = server.request("POST", call(7, "ask", {"prompt": "p"}), session=session)
    play_the_client(server, session, wire)
    assert wire.reply.complete
    assert answer(wire.reply)["result"]["content"][0]["text"] == "sampled|file:///r|Ada"
    assert get.reply.messages == []


def test_while_draining_new_sessions_get_503_and_live_ones_are_still_heard(served):
    server, _ = served
    session = server.initialize(capabilities=CAPABILITIES)
    wire = server.request("POST", call(1, "ask", {"prompt": "p"}), session=session)
    server.host.drain()
    refused = server.post(init_message())
    assert refused.status == 503 and refused.header("mcp-session-id") is None
    # A new request in a live session is refused by the session, as over WebSocket.
    late = server.post(call(2, "echo", {"text": "late"}), session)
    assert late.json["error"]["code"] == SERVER_SHUTTING_DOWN
    play_the_client(server, session, wire)  # a running handler still hears what it asked for
    assert answer(wire.reply)["result"]["content"][0]["text"] == "sampled|file:///r|Ada"


def test_a_2025_03_26_batch_is_answered_as_one_array(served):
    server, _ = served
    session = server.initialize("2025-03-26")
    reply = server.post([call(1, "echo", {"text": "a"}), notification("notifications/x"),
                         call(2, "echo", {"text": "b"})], session)
    assert sorted(item["id"] for item in reply.json) == [1, 2]
    assert server.post([notification("notifications/x")], session).status == 202


# -- sessions ----------------------------------------------------------------


def test_a_session_belongs_to_the_identity_that_made_it():
    app, _ = http_app()
    server = Served(app, auth=TokenAuthenticator({"alice": "a" * 32, "bob": "b" * 32}))
    alice, bob = {"Authorization": "Bearer " + "a" * 32}, {"Authorization": "Bearer " + "b" * 32}
    session = server.initialize(headers=alice)
    mine = server.post(call(1, "whoami"), session, headers=alice)
    assert mine.json["result"]["content"][0]["text"] == "alice"
    for method in ("POST", "GET", "DELETE"):
        # Another identity's token: as good as unknown, not even "forbidden".
        theirs = server.request(method, call(2, "whoami") if method == "POST" else None,
                                session=session, headers=bob).reply
        assert theirs.status == 404, method
    assert server.post(call(3, "echo", {"text": "still"}), session, headers=alice).status == 200


@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", None])
def test_any_supported_protocol_version_header_is_accepted(served, version):
    server, _ = served
    session = server.initialize("2025-06-18")
    assert server.post(call(1, "echo", {"text": "v"}), session, version=version).status == 200


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
def test_an_unsupported_protocol_version_header_gets_400(served, method):
    server, _ = served
    session = server.initialize()
    reply = server.request(method, call(1, "echo", {"text": "v"}) if method == "POST" else None,
                           session=session, version="2099-01-01").reply
    assert reply.status == 400 and "2099-01-01" in reply.json["error"]["message"]


def test_an_idle_session_expires_on_the_clock_and_an_open_stream_pauses_the_timer():
    app, _ = http_app()
    server = Served(app, HTTPSettings(session_idle_timeout=60, keepalive_interval=0))
    session = server.initialize()
    server.clock.advance(59)
    assert server.post(call(1, "echo", {"text": "x"}), session).status == 200  # a request restarts it
    server.clock.advance(59)
    get = server.request("GET", session=session)
    server.clock.advance(3600)  # a stream is open: no expiry
    assert server.post(call(2, "echo", {"text": "y"}), session).status == 200
    get.drop()
    server.clock.advance(59.9)
    assert session in server.resource.sessions
    server.clock.advance(0.1)
    assert session not in server.resource.sessions and not server.host.sessions
    assert server.post(call(3, "echo", {"text": "z"}), session).status == 404


def test_a_running_request_keeps_its_session_alive_even_after_its_client_left():
    app, state = http_app()
    server = Served(app, HTTPSettings(session_idle_timeout=10))
    session = server.initialize()
    wire = server.request("POST", call(1, "hang"), session=session)
    server.clock.advance(100)
    assert session in server.resource.sessions
    wire.drop()  # the client gave up on the answer; the handler goes on
    server.clock.advance(100)
    assert session in server.resource.sessions and state["cancelled"] == 0
    state["gates"][0].callback("late")  # answered into the event store: the idle timer starts
    server.clock.advance(9.9)
    assert session in server.resource.sessions
    server.clock.advance(0.1)
    assert session not in server.resource.sessions


def test_the_session_cap_counts_every_transport_and_more_get_503():
    app, _ = http_app()
    server = Served(app, max_connections=2)
    first = server.initialize()
    server.initialize()
    refused = server.post(init_message())
    assert refused.status == 503 and refused.header("mcp-session-id") is None
    # Requests in live sessions are not new sessions: still served.
    assert server.post(call(1, "echo", {"text": "in"}), first).status == 200
    assert server.request("DELETE", session=first).reply.status == 204
    assert server.post(init_message()).status == 200


def test_the_in_flight_limit_applies_per_session_as_over_websocket():
    app, state = http_app()
    server = Served(app, max_in_flight=2)
    session = server.initialize()
    running = [server.request("POST", call(i, "hang"), session=session) for i in (1, 2)]
    busy = server.post(call(3, "echo", {"text": "x"}), session)
    assert busy.status == 200 and busy.json["error"]["code"] == SERVER_BUSY
    assert server.post({"jsonrpc": "2.0", "id": 4, "method": "ping"}, session).json["result"] == {}
    other = server.initialize()  # the limit is per session
    assert server.post(call(5, "echo", {"text": "y"}), other).status == 200
    state["gates"][0].callback("one")
    assert running[0].reply.complete
    assert server.post(call(6, "echo", {"text": "z"}), session).json["result"]["content"][0]["text"] == "z"


def test_delete_ends_the_session_its_handlers_and_its_streams(served):
    server, state = served
    session = server.initialize()
    get = server.request("GET", session=session)
    streaming = server.request("POST", call(1, "steps", {"n": 1}, _meta={"progressToken": 1}),
                               session=session)
    waiting = server.request("POST", call(2, "hang"), session=session)
    reply = server.request("DELETE", session=session).reply
    assert (reply.status, reply.body) == (204, b"")
    assert state["cancelled"] == 1  # hang; steps was waiting on its gate
    assert get.reply.complete and streaming.reply.complete
    # The POST still waiting for a JSON answer is told the session is gone.
    assert waiting.reply.status == 404 and waiting.reply.complete
    for method in ("POST", "GET", "DELETE"):
        gone = server.request(method, call(3, "echo", {"text": "x"}) if method == "POST" else None,
                              session=session).reply
        assert gone.status == 404, method
    assert not server.host.sessions and not server.resource.sessions


# -- GET: the session's own stream ---------------------------------------------


def test_get_opens_the_one_standalone_stream_and_a_second_gets_409(served):
    server, _ = served
    session = server.initialize()
    first = server.request("GET", session=session)
    reply = first.reply
    assert reply.status == 200 and reply.header("content-type") == "text/event-stream"
    assert reply.header("mcp-session-id") == session and not reply.complete
    (priming,) = reply.events
    assert priming.retry == 1000 and priming.id.startswith("0.")
    assert server.request("GET", session=session).reply.status == 409
    first.drop()
    assert server.request("GET", session=session).reply.status == 200


def test_keepalive_comments_follow_the_clock():
    app, _ = http_app()
    server = Served(app, HTTPSettings(keepalive_interval=15))
    session = server.initialize()
    get = server.request("GET", session=session)
    server.clock.advance(14)
    assert get.reply.keepalives == 0
    server.clock.advance(1)
    assert get.reply.keepalives == 1
    server.clock.pump([15] * 3)
    assert get.reply.keepalives == 4 and len(get.reply.events) == 1  # comments are not events
    get.drop()  # its keep-alive stops with it
    assert not [c for c in server.clock.getDelayedCalls() if "keep-alive" in repr(c)]


def test_get_needs_an_accept_of_event_stream(served):
    server, _ = served
    session = server.initialize()
    reply = server.request("GET", session=session, headers={"Accept": "application/json"}).reply
    assert reply.status == 406


# -- replay: a dropped stream loses nothing ----------------------------------------


def test_a_dropped_post_stream_is_resumed_with_last_event_id(served):
    server, state = served
    session = server.initialize()
    wire = server.request("POST", call(1, "steps", {"n": 2}, _meta={"progressToken": 1}), session=session)
    seen = wire.reply.events
    wire.drop()  # after two progress events; the handler is not cancelled
    state["gates"][0].callback("finished")
    assert state["cancelled"] == 0
    resumed = server.request("GET", session=session, headers={"Last-Event-ID": seen[1].id}).reply
    assert resumed.complete  # the answer was in the store: replayed, then the end
    assert [e.message.get("params", {}).get("progress") for e in resumed.events] == [2, None]
    assert answer(resumed)["result"]["content"][0]["text"] == "finished"


def test_a_stream_resumed_while_its_request_runs_carries_on_to_the_answer(served):
    server, state = served
    session = server.initialize()
    wire = server.request("POST", call(1, "steps", {"n": 1}, _meta={"progressToken": 1}), session=session)
    last = wire.reply.events[-1].id
    wire.drop()
    resumed = server.request("GET", session=session, headers={"Last-Event-ID": last})
    assert resumed.reply.events == [] and not resumed.reply.complete
    state["gates"][0].callback("live")
    assert resumed.reply.complete and answer(resumed.reply)["id"] == 1


def test_resuming_takes_over_a_stream_whose_connection_has_not_dropped_yet(served):
    # A client that saw its stream die reconnects before the server noticed;
    # the old connection's late end must not detach the new stream.
    server, state = served
    session = server.initialize()
    old = server.request("POST", call(1, "steps", {"n": 1}, _meta={"progressToken": 1}), session=session)
    last = old.reply.events[-1].id
    resumed = server.request("GET", session=session, headers={"Last-Event-ID": last})
    old.drop()
    state["gates"][0].callback("taken over")
    assert resumed.reply.complete and answer(resumed.reply)["result"]["content"][0]["text"] == "taken over"


def test_a_last_event_id_naming_a_post_still_waiting_for_json_does_not_take_its_answer(served):
    # Its stream has sent nothing, so no real client can hold such an id.
    server, state = served
    session = server.initialize()
    server.request("GET", session=session).drop()  # the session's sequence is at 1 now
    waiting = server.request("POST", call(1, "hang"), session=session)
    stream_id = server.http_session(session).exchanges[1].stream_id
    forged = server.request("GET", session=session, headers={"Last-Event-ID": f"{stream_id}.1"})
    state["gates"][0].callback("mine")
    assert waiting.reply.json["result"]["content"][0]["text"] == "mine"
    assert forged.reply.status == 200 and forged.reply.messages == []  # the session's own stream


def test_the_standalone_stream_replays_what_was_sent_while_it_was_closed(served):
    server, _ = served
    session = server.initialize()
    get = server.request("GET", session=session)
    (priming,) = get.reply.events
    get.drop()
    server.host.app.add_tool(lambda: "a", "one")
    server.host.app.remove_tool("one")
    resumed = server.request("GET", session=session, headers={"Last-Event-ID": priming.id}).reply
    assert [m["method"] for m in resumed.messages] == ["notifications/tools/list_changed"] * 2
    assert not resumed.complete  # it is the session's stream again
    assert server.request("GET", session=session, headers={"Last-Event-ID": priming.id}).reply.status == 409


def test_close_stream_ends_the_stream_early_and_the_client_resumes_for_the_rest(served):
    server, state = served
    session = server.initialize()
    server.post(INFO_LOGS, session)
    wire = server.request("POST", call(1, "detach"), session=session)
    reply = wire.reply
    assert reply.complete and [m["params"]["data"] for m in reply.messages] == ["before"]
    state["gates"][0].callback("done")
    resumed = server.request("GET", session=session, headers={"Last-Event-ID": reply.events[-1].id}).reply
    assert [m.get("params", {}).get("data") for m in resumed.messages] == ["after", None]
    assert resumed.complete


def test_close_stream_does_nothing_before_2025_11_25(served):
    # Older clients do not expect a request's stream to end before its answer.
    server, state = served
    session = server.initialize("2025-06-18")
    server.post(INFO_LOGS, session)
    wire = server.request("POST", call(1, "detach"), session=session)
    assert not wire.reply.complete
    state["gates"][0].callback("done")
    assert [m.get("params", {}).get("data") for m in wire.reply.messages] == ["before", "after", None]
    assert wire.reply.complete


def test_the_event_store_is_bounded_by_count_bytes_and_age():
    from twisted.internet.task import Clock

    clock = Clock()
    store = EventStore(clock, max_events=3, max_bytes=100, ttl=10)
    ids = [store.add("1", b"x" * 10) for _ in range(5)]
    assert [i for i, _ in store.after(ids[0])[1]] == ids[2:]  # the two oldest are gone
    store.add("1", b"y" * 95)  # 125 bytes: the oldest go until it fits
    assert [data for _, data in store.after("1.0")[1]] == [b"y" * 95]
    clock.advance(9)
    store.add("2", b"z")
    clock.advance(1)  # the old ones age out on their own, with no request to trim them
    assert store._bytes == 1 and store.after("1.0") == ("1", [])
    clock.advance(9)
    assert store._bytes == 0 and not clock.getDelayedCalls()
    assert store.after("1.99") is None and store.after("nonsense") is None
    assert store.gap_after(ids[0]) and not store.gap_after("2.99")


def test_a_resume_that_cannot_replay_everything_is_logged(events):
    app, _ = http_app()
    server = Served(app, HTTPSettings(max_events=2))
    session = server.initialize()
    get = server.request("GET", session=session)
    (priming,) = get.reply.events
    get.drop()
    for name in ("one", "two"):  # four events while the stream is closed; two are kept
        server.host.app.add_tool(lambda: "a", name)
        server.host.app.remove_tool(name)
    resumed = server.request("GET", session=session, headers={"Last-Event-ID": priming.id})
    assert len(resumed.reply.messages) == 2
    (line,) = find(events, "Resumed {count} stream(s) whose missed events were partly given up")
    assert line["count"] == 1 and line["session"] == session[:8]
    last = resumed.reply.events[-1].id
    resumed.drop()
    server.request("GET", session=session, headers={"Last-Event-ID": last})  # nothing missed: no line
    server.clock.advance(60)
    assert len(find(events, "Resumed {count} stream(s) whose missed events were partly given up")) == 1


# -- cancellation -----------------------------------------------------------------


@pytest.mark.parametrize("talks_first", [False, True], ids=["json", "sse"])
def test_a_cancelled_request_ends_its_post(served, talks_first):
    server, state = served
    session = server.initialize()
    message = call(1, "steps", {"n": 1}, _meta={"progressToken": 1}) if talks_first else call(1, "hang")
    wire = server.request("POST", message, session=session)
    cancel = notification("notifications/cancelled", {"requestId": 1, "reason": "user"})
    assert server.post(cancel, session).status == 202
    reply = wire.reply
    assert reply.complete
    ended = answer(reply) if talks_first else reply.json
    assert ended["id"] == 1 and ended["error"] == {"code": -32800, "message": "Request cancelled"}
    assert state["cancelled"] == (0 if talks_first else 1)
    assert not server.http_session(session).exchanges
    assert server.post(call(2, "echo", {"text": "on"}), session).status == 200


def test_a_request_id_already_running_is_refused_without_losing_the_first(served):
    server, state = served
    session = server.initialize()
    first = server.request("POST", call(1, "hang"), session=session)
    duplicate = server.post(call(1, "echo", {"text": "dup"}), session)
    assert duplicate.json["error"]["code"] == INVALID_REQUEST
    state["gates"][0].callback("first")
    assert first.reply.json["result"]["content"][0]["text"] == "first"


# -- bad input: one status table --------------------------------------------------

SESSION = "<session>"  # replaced by a live session's id
TABLE = [
    # (case, method, headers, body, status, JSON-RPC error code or None)
    ("wrong content type", "POST", {"Content-Type": "text/plain"}, b"{}", 415, None),
    ("accept without event-stream", "POST", {"Accept": "application/json"}, b"{}", 406, INVALID_REQUEST),
    ("accept without json", "POST", {"Accept": "text/event-stream"}, b"{}", 406, INVALID_REQUEST),
    ("malformed json", "POST", {}, b'{"jsonrpc": ', 400, PARSE_ERROR),
    ("not json-rpc", "POST", {}, b'{"hello": "world"}', 400, INVALID_REQUEST),
    ("empty batch", "POST", {}, b"[]", 400, INVALID_REQUEST),
    ("initialize in a batch", "POST", {"Mcp-Session-Id": None}, json.dumps([init_message()]).encode(), 400,
     INVALID_REQUEST),
    ("batch after 2025-03-26", "POST", {}, json.dumps([notification("notifications/x")]).encode(), 400,
     INVALID_REQUEST),
    ("missing session id", "POST", {"Mcp-Session-Id": None}, json.dumps(call(1, "echo")).encode(), 400,
     INVALID_REQUEST),
    ("unknown session id", "POST", {"Mcp-Session-Id": "f" * 32}, json.dumps(call(1, "echo")).encode(),
     404, INVALID_REQUEST),
    ("get without session", "GET", {"Mcp-Session-Id": None}, b"", 400, INVALID_REQUEST),
    ("delete of an unknown session", "DELETE", {"Mcp-Session-Id": "0" * 32}, b"", 404, INVALID_REQUEST),
    ("unknown method", "PUT", {}, b"{}", 405, None),
    ("wrong path", "POST", {"path": "/other"}, json.dumps(init_message()).encode(), 404, None),
    ("foreign host on loopback", "POST", {"Host": "evil.example"}, json.dumps(init_message()).encode(),
     421, None),
    ("foreign origin", "POST", {"Origin": "https://evil.example"}, json.dumps(init_message()).encode(),
     403, None),
]


@pytest.mark.parametrize(("method", "headers", "body", "status", "code"),
                         [case[1:] for case in TABLE], ids=[case[0] for case in TABLE])
def test_status_table(served, method, headers, body, status, code):
    server, _ = served
    session = server.initialize()
    headers = {"Mcp-Session-Id": session, **headers}
    path = headers.pop("path", "/mcp")
    host = headers.pop("Host", "127.0.0.1:8080")
    base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    wire = server.open()
    sent = {k: v for k, v in {**base, **headers}.items() if v is not None}
    wire.send(raw_request(method, path, sent, body, host=host))
    reply = wire.reply
    assert reply.status == status and reply.complete
    if code is not None:
        assert reply.json["error"]["code"] == code
    if status == 405:
        assert reply.header("allow") == "GET, POST, DELETE, OPTIONS"
    assert server.post(call(9, "echo", {"text": "fine"}), session).status == 200


def test_a_token_is_required_when_auth_is_on_with_www_authenticate():
    app, _ = http_app()
    server = Served(app, auth=TokenAuthenticator({"alice": "a" * 32}))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + "a" * 32}):
        reply = server.post(init_message(), headers=headers)
        assert reply.status == 401 and reply.header("www-authenticate") == 'Bearer realm="mcp"'
    assert server.post(init_message(), headers={"Authorization": "Bearer " + "a" * 32}).status == 200


# -- tokens checked elsewhere first (OAuth: keys to fetch, introspection) --------


class SlowAuthenticator:
    """Answers each token check later, when the test says (as an OAuth
    validator does while it fetches the provider's keys)."""

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred[Any]] = []

    def authenticate(self, authorization: str | None) -> defer.Deferred[Any]:
        self.waiting.append(defer.Deferred())
        return self.waiting[-1]


def test_a_request_waits_for_a_token_check_that_answers_later():
    app, _ = http_app()
    auth = SlowAuthenticator()
    server = Served(app, auth=auth)
    wire = server.request("POST", init_message(), headers={"Authorization": "Bearer later"})
    assert wire.replies() == [] and len(auth.waiting) == 1  # nothing yet
    auth.waiting[0].callback("alice")
    assert wire.reply.status == 200 and wire.reply.complete
    session = wire.reply.header("mcp-session-id")
    assert server.http_session(session).identity == "alice"
    # The session's next request is checked again, and answered when that check is.
    wire = server.request("POST", call(1, "echo", {"text": "hi"}), session=session)
    auth.waiting[1].callback("alice")
    assert wire.reply.json["result"]["content"][0]["text"] == "hi"


def test_a_token_check_that_fails_later_answers_with_its_refusal_or_500():
    app, _ = http_app()
    auth = SlowAuthenticator()
    metrics = Metrics()
    server = Served(app, auth=auth, metrics=metrics)
    refused = server.request("POST", init_message())
    auth.waiting[0].errback(Refusal(401, "auth", "Unauthorized", [("WWW-Authenticate", 'Bearer error="x"')]))
    assert refused.reply.status == 401 and refused.reply.header("www-authenticate") == 'Bearer error="x"'
    assert metrics.registry.get_sample_value("mcp_handshake_refusals_total", {"reason": "auth"}) == 1
    broken = server.request("POST", init_message())
    auth.waiting[1].errback(ValueError("a bug in the check"))
    assert broken.reply.status == 500
    # A client that left while its token was checked is not written to.
    gone = server.request("POST", init_message())
    gone.drop()
    auth.waiting[2].callback("alice")
    assert server.resource.sessions == {}


def test_a_trusted_proxy_names_the_client_in_the_logs_and_others_do_not(events):
    app, _ = http_app()
    trusting = Served(app, HTTPSettings(trusted_proxies=TrustedProxies(["127.0.0.1"])))
    session = trusting.initialize(headers={"X-Forwarded-For": "198.51.100.9, 203.0.113.7"})
    assert trusting.http_session(session).session.attributes["peer"] == "203.0.113.7"
    assert find(events, "Opened HTTP session", peer="203.0.113.7")
    app, _ = http_app()
    wary = Served(app)  # no trusted proxy: the header is the client's word only
    session = wary.initialize(headers={"X-Forwarded-For": "203.0.113.7"})
    assert wary.http_session(session).session.attributes["peer"].startswith("IPv4Address:127.0.0.1:")


# -- CORS: browser pages on admitted origins --------------------------------------

PAGE = "https://inspector.example"


def test_a_preflight_from_an_allowed_origin_names_the_methods_and_mcp_headers_without_a_token():
    app, _ = http_app()
    server = Served(app, allowed_origins=[PAGE], auth=TokenAuthenticator({"alice": "a" * 32}))
    asked = "content-type, authorization, mcp-session-id, mcp-param-region, x-custom"
    reply = server.request("OPTIONS", headers={
        "Origin": PAGE, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": asked,
        "Content-Type": None, "Accept": None}).reply
    assert reply.status == 204 and reply.complete
    assert reply.header("access-control-allow-origin") == PAGE
    assert reply.header("access-control-allow-methods") == "GET, POST, DELETE"
    allowed = {h.strip() for h in reply.header("access-control-allow-headers").split(",")}
    assert {"authorization", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id",
            "mcp-param-region"} <= allowed
    assert "x-custom" not in allowed  # only what MCP clients send
    assert reply.header("vary") == "Origin"


def test_cors_answers_carry_the_origin_and_expose_the_session_id():
    app, _ = http_app()
    server = Served(app, allowed_origins=[PAGE], auth=TokenAuthenticator({"alice": "a" * 32}))
    reply = server.post(init_message(), headers={"Origin": PAGE, "Authorization": "Bearer " + "a" * 32})
    assert reply.status == 200
    assert reply.header("access-control-allow-origin") == PAGE
    assert "Mcp-Session-Id" in reply.header("access-control-expose-headers")
    # Without its token the page may still read the 401 and WWW-Authenticate.
    refused = server.post(init_message(), headers={"Origin": PAGE})
    assert refused.status == 401 and refused.header("access-control-allow-origin") == PAGE
    assert "WWW-Authenticate" in refused.header("access-control-expose-headers")
    # Requests without an Origin (non-browser clients) get no CORS headers.
    assert server.post(init_message(), headers={"Authorization": "Bearer " + "a" * 32}).header(
        "access-control-allow-origin") is None


def test_a_preflight_from_a_foreign_origin_is_refused_and_allows_nothing(served):
    server, _ = served
    reply = server.request("OPTIONS", headers={"Origin": "https://evil.example",
                                                "Access-Control-Request-Method": "POST"}).reply
    assert reply.status == 403 and reply.header("access-control-allow-origin") is None
    plain = server.request("OPTIONS").reply  # no Origin: just the methods
    assert plain.status == 204 and plain.header("allow") == "GET, POST, DELETE, OPTIONS"
    assert plain.header("access-control-allow-methods") is None


@pytest.mark.parametrize("framing", ["declared", "chunked", "expect-100-continue"])
def test_a_body_over_the_limit_gets_413_before_it_is_read(framing):
    app, _ = http_app()
    server = Served(app, max_message_size=1024)
    session = server.initialize()
    wire = server.open()
    head = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "Mcp-Session-Id": session}
    if framing == "chunked":
        wire.send(raw_request("POST", headers={**head, "Transfer-Encoding": "chunked"}))
        for _ in range(3):
            wire.send(b"200\r\n" + b" " * 512 + b"\r\n")
    else:
        extra = {"Expect": "100-continue"} if framing == "expect-100-continue" else {}
        wire.send(raw_request("POST", headers={**head, **extra, "Content-Length": str(10 << 20)}))
    replies = wire.replies()
    assert [r.status for r in replies] == [413]  # and no "100 Continue" before or after it
    assert wire.transport.disconnecting
    if framing == "chunked":
        sent_before = len(wire.transport.value())
        wire.send(b"200\r\n" + b" " * 512 + b"\r\n")  # more of it is not read
        assert len(wire.transport.value()) == sent_before
    fits = server.post(call(1, "echo", {"text": "x" * 900}), session)
    assert fits.status == 200


def test_metrics_count_http_sessions_requests_and_refusals_under_transport_http():
    app, state = http_app()
    metrics = Metrics()
    server = Served(app, metrics=metrics)

    def sample(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    session = server.initialize()
    server.post(call(1, "echo", {"text": "a"}), session)
    server.post(call(2, "boom"), session)
    waiting = server.request("POST", call(3, "hang"), session=session)
    assert server.post(init_message(), headers={"Origin": "https://evil.example"}).status == 403
    failed = init_message()
    failed["params"]["capabilities"] = "not an object"  # refused initialize: no session, not counted
    assert server.post(failed).status == 200 and server.post(failed).json["error"]["code"] == -32602
    assert sample("mcp_connections_accepted_total", transport="http") == 1
    assert sample("mcp_sessions_open", transport="http") == 1
    assert sample("mcp_requests_in_flight") == 1
    assert sample("mcp_requests_total", method="tools/call", outcome="ok", transport="http") == 1
    assert sample("mcp_requests_total", method="tools/call", outcome="tool_error", transport="http") == 1
    assert sample("mcp_handshake_refusals_total", reason="origin") == 1
    state["gates"][0].callback("x")
    assert waiting.reply.complete
    server.request("DELETE", session=session)
    assert sample("mcp_sessions_open", transport="http") == 0
    assert sample("mcp_requests_total", method="tools/call", outcome="ok", transport="http") == 2



# -- over sockets on 127.0.0.1 ------------------------------------------------------


_ports: list[Any] = []  # what ``listening`` serves now


@pytest_twisted.async_yield_fixture
async def listening():
    """``await listening(app, settings, **factory_options)``: an app served on
    127.0.0.1 by ``MCPSite``; returns (factory, resource, base URL)."""
    ports = []

    async def start(app: MCPServer, settings: HTTPSettings | None = None, **options: Any) -> Any:
        factory, resource, port = await serve(app, settings, **options)
        ports.append((port, resource))
        _ports[:] = ports
        return factory, resource, f"http://127.0.0.1:{port.getHost().port}/mcp"

    yield start
    for port, resource in ports:
        resource.close_all()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_sse_events_cross_the_socket_as_they_are_sent(listening):
    app, state = http_app()
    _, resource, url = await listening(app)
    client = HTTPClient(url)
    await client.initialize()
    _, standalone = await client.open("GET")
    response, stream = await client.open("POST", call(1, "steps", {"n": 2}, _meta={"progressToken": "p"}))
    assert response.code == 200 and response.headers.getRawHeaders("content-type") == ["text/event-stream"]
    progress = await stream.until_events(2)  # while the handler still waits for its gate
    assert [e.message["params"]["progress"] for e in progress] == [1, 2] and not stream.done.called
    app.add_tool(lambda: "x", "late")
    (changed,) = await standalone.until_events(1)
    assert changed.message["method"] == "notifications/tools/list_changed"
    state["gates"][0].callback("end")
    body = await stream.done.addTimeout(5, reactor)
    assert json.loads(body.split(b"data: ")[-1])["result"]["content"][0]["text"] == "end"
    response, _ = await client.open("DELETE")
    assert response.code == 204
    await standalone.done.addTimeout(5, reactor)  # the session's stream ended with it
    assert resource.sessions == {}


@pytest_twisted.ensureDeferred
async def test_websocket_and_http_share_the_port_and_the_path(listening):
    app, _ = http_app()
    factory, _, url = await listening(app)
    port = int(url.split(":")[2].split("/")[0])
    ws = await connect(port)
    await ws.initialize()
    client = HTTPClient(url)
    await client.initialize()
    ws_reply = await ws.request(1, "tools/call", {"name": "echo", "arguments": {"text": "ws"}})
    http_reply = await client.call(call(1, "echo", {"text": "http"}))
    assert ws_reply["result"]["content"][0]["text"] == "ws"
    assert http_reply["result"]["content"][0]["text"] == "http"
    assert sorted(factory.host.sessions.values()) == ["http", "websocket"]
    # HTTP connections are counted against the connection cap; an upgraded
    # one is a WebSocket session then, under the session cap instead.
    (site,) = {port.factory for port, _ in _ports}
    await until(lambda: len(site.connections) == 0)  # the upgraded one is not counted; Agent closed its own
    ws.sendClose(1000)
    await ws.closed


@implementer(IPolicyForHTTPS)
class ClientCertificatePolicy:
    """Agent TLS that trusts ``ca`` and presents ``certificate``."""

    def __init__(self, ca: Any, certificate: Any) -> None:
        self.ca = ssl.Certificate.loadPEM(ca.cert_pem.bytes())
        self.certificate = ssl.PrivateCertificate.loadPEM(certificate.private_key_and_cert_chain_pem.bytes())

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.optionsForClientTLS(hostname.decode(), trustRoot=self.ca,
                                       clientCertificate=self.certificate)


@pytest_twisted.ensureDeferred
async def test_a_client_certificate_is_the_identity_over_http(pki, listening):
    from twisted.internet import endpoints

    endpoint = endpoints.serverFromString(
        reactor, f"mtls:0:privateKey={pki['server.key']}:certKey={pki['server.pem']}"
                 f":caCerts={pki['client_ca.pem']}")
    app, _ = http_app()
    _, _, url = await listening(app, endpoint=endpoint)
    client = HTTPClient(url.replace("http://127.0.0.1", "https://localhost"),
                        agent=Agent(reactor, ClientCertificatePolicy(pki["ca"], pki["alice"])))
    await client.initialize()
    reply = await client.call(call(1, "whoami"))
    assert "CN=alice" in reply["result"]["content"][0]["text"]
    policy = ClientCertificatePolicy(pki["ca"], pki["stranger"])
    stranger = HTTPClient(client.url, agent=Agent(reactor, policy))
    with pytest.raises(Exception):  # noqa: B017 - refused in the TLS handshake, before any HTTP
        await stranger.initialize()


@pytest_twisted.ensureDeferred
async def test_stopping_the_service_answers_running_requests_at_the_end_of_the_drain():
    from twisted.internet.task import Clock

    app, state = http_app()
    clock = Clock()
    factory = MCPServerFactory(app, clock=clock, ping_interval=0)
    resource = MCPHTTPResource(factory.host, HTTPSettings(keepalive_interval=0))
    listener = RecordingEndpoint()
    service = MCPService(factory, [listener], http=resource, drain_timeout=0.3, close_timeout=1)
    service.startService()
    client = HTTPClient(f"http://127.0.0.1:{listener.port}/mcp")
    await client.initialize()
    _, standalone = await client.open("GET")
    waiting = defer.ensureDeferred(client.post(call(1, "hang")))  # JSON: nothing arrives until the answer
    _, streaming = await client.open("POST", call(2, "steps", {"n": 1}, _meta={"progressToken": 1}))
    await until(lambda: len(state["gates"]) == 2)
    stopping = defer.ensureDeferred(service.stopService())
    await until(lambda: all(session.draining for session in factory.host.sessions))
    clock.advance(0.29)
    assert not waiting.called and not streaming.done.called
    clock.advance(0.01)  # the drain timeout: what still runs is answered, then the streams end
    _, body = await waiting
    assert json.loads(body)["error"]["code"] == SERVER_SHUTTING_DOWN
    body = await streaming.done.addTimeout(5, reactor)
    assert json.loads(body.split(b"data: ")[-1])["error"]["code"] == SERVER_SHUTTING_DOWN
    await standalone.done.addTimeout(5, reactor)
    await stopping
    assert resource.sessions == {} and factory.host.sessions == {}
