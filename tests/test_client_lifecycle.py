"""The client connection's lifecycle table, and the paths a connection takes
through it (in memory: ``twisted.test.iosim`` and a ``task.Clock``)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.test import iosim

from mcp_twisted import MCPServer
from mcp_twisted.client import (
    ConnectionFailed,
    ConnectionState,
    MCPClient,
    MCPClientFactory,
    MCPClientProtocol,
)
from mcp_twisted.client._lifecycle import TRANSITIONS, ConnectionEvent, advance
from mcp_twisted.jsonrpc import LocalProtocolError
from mcp_twisted.session import ConnectionLost
from tests.test_client import OldServer, clocked_app, failure_of, silent_server

S, E = ConnectionState, ConnectionEvent

# ---------------------------------------------------------------------------
# The table.


def test_each_transition():
    assert advance(S.CONNECTING, E.OPENED) is S.INITIALIZING
    assert advance(S.INITIALIZING, E.INITIALIZED) is S.READY
    assert advance(S.INITIALIZING, E.REJECTED) is S.CLOSING
    assert advance(S.INITIALIZING, E.CLOSE) is S.CLOSING
    assert advance(S.READY, E.CLOSE) is S.CLOSING
    for state in (S.CONNECTING, S.INITIALIZING, S.READY, S.CLOSING):
        assert advance(state, E.LOST) is S.CLOSED
    assert len(TRANSITIONS) == 9  # nothing else is allowed


REFUSED = [pair for pair in itertools.product(S, E) if pair not in TRANSITIONS]


@pytest.mark.parametrize(("state", "event"), REFUSED, ids=[f"{s.value}-{e.value}" for s, e in REFUSED])
def test_an_event_in_the_wrong_state_is_refused_naming_both(state, event):
    with pytest.raises(LocalProtocolError) as refused:
        advance(state, event)
    assert str(refused.value) == (
        f"Client connection: {event.value!r} is not possible in state {state.value!r}")


def test_closed_is_final_and_every_other_state_can_be_lost():
    assert [event for event in E if (S.CLOSED, event) in TRANSITIONS] == []
    assert {state for state in S if (state, E.LOST) in TRANSITIONS} == set(S) - {S.CLOSED}


def test_only_an_upgraded_connection_that_is_not_closing_can_be_closed():
    assert {state for state in S if (state, E.CLOSE) in TRANSITIONS} == {S.INITIALIZING, S.READY}


# ---------------------------------------------------------------------------
# A connection's path through the table.


class RecordingClientProtocol(MCPClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.path: list[ConnectionState] = []

    def _advance(self, event: ConnectionEvent) -> None:
        super()._advance(event)
        self.path.append(self.connection_state)


def app(cls: type[MCPServer] = MCPServer) -> MCPServer:
    server = cls("lifecycle", "1.0")
    server.tool()(lambda text: text)
    return server


def server_factory(server: MCPServer | None = None, **options: Any) -> Any:
    """Serves ``server``, or (``None``) accepts the upgrade and never answers."""
    if server is None:
        return silent_server()
    return clocked_app(task.Clock(), server, **options)


def connect(server: Any) -> tuple[RecordingClientProtocol, Any, iosim.IOPump]:
    """A client connection to ``server``, in memory; nothing has moved yet."""
    clock = task.Clock()
    factory = MCPClientFactory(MCPClient(clock, era="legacy"), "ws://10.0.0.1/mcp", ping_interval=0,
                               ping_timeout=0)
    factory.protocol = RecordingClientProtocol
    server_address = IPv4Address("TCP", "10.0.0.1", 80)
    client_address = IPv4Address("TCP", "10.0.0.2", 40000)
    server_protocol = server.buildProtocol(client_address)
    client_protocol = factory.buildProtocol(server_address)
    pump = iosim.connect(
        server_protocol, iosim.FakeTransport(server_protocol, True, server_address, client_address),
        client_protocol, iosim.FakeTransport(client_protocol, False, client_address, server_address),
        greet=False, clock=clock,
    )
    return client_protocol, server_protocol, pump


def test_a_session_then_a_close():
    client, server, pump = connect(server_factory(app()))
    assert client.connection_state is S.CONNECTING and not client.closable
    pump.flush()
    assert client.path == [S.INITIALIZING, S.READY]
    assert client.initialized.result is client
    assert client.factory.current is client and client.factory.client.connected
    pending = client.factory.client.call_tool("echo", {"text": "x"})  # not sent before the close

    closed = client.close()
    assert isinstance(failure_of(pending), ConnectionLost)  # at once, not when the socket closes
    pump.flush()
    assert client.path == [S.INITIALIZING, S.READY, S.CLOSING, S.CLOSED]
    assert closed.called and server.remoteCloseCode == 1000
    assert client.factory.current is None and not client.factory.client.connected


def test_a_refused_upgrade_goes_straight_to_closed():
    client, _, pump = connect(server_factory(app(), path="/elsewhere"))
    pump.flush()
    assert client.path == [S.CLOSED]
    error = failure_of(client.initialized)
    assert isinstance(error, ConnectionFailed) and "404" in str(error)


def test_a_rejected_initialize_closes_with_1000():
    client, server, pump = connect(server_factory(app(OldServer)))
    pump.flush()
    assert client.path == [S.INITIALIZING, S.CLOSING, S.CLOSED]
    error = failure_of(client.initialized)
    assert str(error) == "initialize failed: Server chose unsupported revision '1999-01-01'"
    assert server.remoteCloseCode == 1000
    assert not client.factory.client.connected


def test_close_before_the_upgrade_is_refused_by_the_table():
    client, _, _ = connect(server_factory(app()))
    with pytest.raises(LocalProtocolError, match="'close' is not possible in state 'connecting'"):
        client.close()


def test_giving_up_the_attempt_while_connecting_drops_the_connection():
    client, _, pump = connect(server_factory(app()))
    client.initialized.cancel()
    assert isinstance(failure_of(client.initialized), CancelledError)
    pump.flush()
    assert client.path == [S.CLOSED]
    assert client.lost_reason is not None and client.when_closed().called


def test_giving_up_the_attempt_while_initializing_closes_with_1000():
    client, server, pump = connect(server_factory())
    pump.flush()
    assert client.path == [S.INITIALIZING]  # the server never answers initialize
    client.initialized.cancel()
    assert isinstance(failure_of(client.initialized), CancelledError)
    pump.flush()
    assert client.path == [S.INITIALIZING, S.CLOSING, S.CLOSED]
    assert server.remoteCloseCode == 1000
