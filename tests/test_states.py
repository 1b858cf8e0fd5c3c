"""The session's lifecycle table: every transition, and the one place that
refuses an event in the wrong state."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.task import Clock

from mcp_twisted.jsonrpc import LocalProtocolError
from mcp_twisted.protocol import SERVER_SHUTTING_DOWN
from mcp_twisted.server import MCPServer
from mcp_twisted.session import TRANSITIONS, Event, Role, Session, State
from mcp_twisted.testing import collect_into


def app() -> MCPServer:
    server = MCPServer("states")

    @server.tool()
    def ok() -> str:
        return "ok"

    @server.tool()
    def fails() -> str:
        raise ValueError("the app says no")

    return server


def server_session(**options: Any) -> tuple[Session, list[dict[str, Any]]]:
    sent: list[bytes] = []
    session = Session(collect_into(sent), role=Role.SERVER, handler=app(), clock=Clock(),
                      **options)
    return session, sent  # type: ignore[return-value]


def feed(session: Session, sent: list[Any], message: dict[str, Any]) -> list[dict[str, Any]]:
    sent.clear()
    session.receive(json.dumps({"jsonrpc": "2.0", **message}))
    return [json.loads(m) for m in sent]


INITIALIZE = {"id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}


def test_the_table_covers_the_handshake_drain_and_close():
    assert TRANSITIONS[State.NEW, Event.INITIALIZE] is State.INITIALIZING
    assert TRANSITIONS[State.INITIALIZING, Event.INITIALIZED] is State.READY
    for state in (State.NEW, State.INITIALIZING, State.READY, State.DRAINING):
        assert TRANSITIONS[state, Event.DRAIN] is State.DRAINING
        assert TRANSITIONS[state, Event.CLOSE] is State.CLOSED
    # Nothing leaves CLOSED, and the handshake does not run backwards.
    assert not [key for key in TRANSITIONS if key[0] is State.CLOSED]
    assert (State.READY, Event.INITIALIZE) not in TRANSITIONS


def test_a_server_session_walks_the_table():
    session, sent = server_session()
    assert session.state is State.NEW
    feed(session, sent, INITIALIZE)
    assert session.state is State.INITIALIZING
    feed(session, sent, {"method": "notifications/initialized"})
    assert session.state is State.READY
    session.drain()
    assert session.state is State.DRAINING and session.draining
    session.close()
    assert session.state is State.CLOSED


@pytest.mark.parametrize("state", [State.NEW, State.INITIALIZING, State.READY])
def test_a_draining_session_refuses_every_request_even_initialize(state):
    session, sent = server_session()
    if state is not State.NEW:
        feed(session, sent, INITIALIZE)
    if state is State.READY:
        feed(session, sent, {"method": "notifications/initialized"})
    session.drain()
    (reply,) = feed(session, sent, {"id": 9, "method": "initialize" if state is State.NEW else "tools/list"})
    assert reply["error"]["code"] == SERVER_SHUTTING_DOWN
    assert feed(session, sent, {"id": 10, "method": "ping"})[0]["result"] == {}  # liveness still answered


def test_an_event_in_the_wrong_state_is_a_local_protocol_error():
    sent: list[bytes] = []
    client = Session(collect_into(sent), role=Role.CLIENT, handler=app(), clock=Clock())
    client.initialize({"name": "c", "version": "0"}, {})
    assert client.state is State.INITIALIZING
    failure = []
    client.initialize({"name": "c", "version": "0"}, {}).addErrback(failure.append)
    assert failure[0].check(LocalProtocolError)
    assert "'initialize' is not possible in state 'initializing'" in str(failure[0].value)


def test_a_peer_out_of_order_gets_a_wire_error_not_an_exception():
    session, sent = server_session()
    feed(session, sent, INITIALIZE)
    (again,) = feed(session, sent, {**INITIALIZE, "id": 1})
    assert again["error"]["code"] == -32600 and "already initialized" in again["error"]["message"]
    # notifications/initialized twice is ignored: no exception, no answer, still READY
    feed(session, sent, {"method": "notifications/initialized"})
    assert feed(session, sent, {"method": "notifications/initialized"}) == []
    assert session.state is State.READY


def test_the_app_not_the_session_says_a_tool_result_was_an_error():
    seen: list[tuple[str, str]] = []
    session, sent = server_session(observer=lambda method, outcome, seconds: seen.append((method, outcome)))
    feed(session, sent, INITIALIZE)
    feed(session, sent, {"method": "notifications/initialized"})
    feed(session, sent, {"id": 1, "method": "tools/call", "params": {"name": "ok"}})
    feed(session, sent, {"id": 2, "method": "tools/call", "params": {"name": "fails"}})
    assert seen[-2:] == [("tools/call", "ok"), ("tools/call", "tool_error")]


def test_registration_is_not_describe_and_removal_of_unknown_names_says_so():
    server = app()
    session, _ = server_session()
    server.describe(session)  # describing registers nothing
    assert server.sessions == []
    with pytest.raises(KeyError, match="no tool named 'missing'"):
        server.remove_tool("missing")
    with pytest.raises(KeyError, match="no prompt named 'missing'"):
        server.remove_prompt("missing")
    with pytest.raises(KeyError, match="no resource or template at 'x://missing'"):
        server.remove_resource("x://missing")
