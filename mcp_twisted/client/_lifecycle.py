"""The lifecycle of one client connection, as one table: (state, event) -> state.

Every client connection (a WebSocket, a Streamable HTTP conversation, a
child process on stdio: see ``_connection.SessionConnection``) keeps its
``connection_state`` with ``advance``, so an event in the wrong state (a
second ``initialize`` result, a close before the upgrade, anything after the
end) fails in this one place, with both names.

::

    CONNECTING --opened--> INITIALIZING --initialized--> READY
                               |  rejected, close           | close
                               v                            v
                            CLOSING <-----------------------+
    any state but CLOSED --lost--> CLOSED

The MCP session inside has its own table (``mcp_twisted.session.TRANSITIONS``);
this one is about the connection around it. "Opened" is the WebSocket
upgrade, the child process started, or at once for HTTP; "initialized" is
the session opened in its era (``initialize`` or ``server/discover``).
"""

from __future__ import annotations

import enum

from mcp_twisted.jsonrpc import LocalProtocolError

__all__ = ["TRANSITIONS", "ConnectionEvent", "ConnectionState", "advance"]


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"  # TCP (and TLS) up, the WebSocket upgrade asked for; or the child starting
    INITIALIZING = "initializing"  # open; the era is being found, initialize or server/discover sent
    READY = "ready"  # initialized: the session is in use
    CLOSING = "closing"  # this side sent a close frame
    CLOSED = "closed"  # the connection is gone


class ConnectionEvent(enum.Enum):
    OPENED = "opened"  # the server accepted the upgrade (the child started; HTTP: at once)
    INITIALIZED = "initialized"  # initialize answered and accepted; notifications/initialized sent
    REJECTED = "rejected"  # initialize failed: an error answer, no answer in time, an unknown revision
    CLOSE = "close"  # this side closes (the service stops)
    LOST = "lost"  # the connection is gone, whoever closed it


_S, _E = ConnectionState, ConnectionEvent

TRANSITIONS: dict[tuple[ConnectionState, ConnectionEvent], ConnectionState] = {
    (_S.CONNECTING, _E.OPENED): _S.INITIALIZING,
    (_S.INITIALIZING, _E.INITIALIZED): _S.READY,
    (_S.INITIALIZING, _E.REJECTED): _S.CLOSING,
    (_S.INITIALIZING, _E.CLOSE): _S.CLOSING,
    (_S.READY, _E.CLOSE): _S.CLOSING,
    **{(state, _E.LOST): _S.CLOSED for state in (_S.CONNECTING, _S.INITIALIZING, _S.READY, _S.CLOSING)},
}


def advance(state: ConnectionState, event: ConnectionEvent) -> ConnectionState:
    """The state ``event`` leads to from ``state``; ``LocalProtocolError`` if none."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise LocalProtocolError(
            f"Client connection: {event.value!r} is not possible in state {state.value!r}"
        ) from None
