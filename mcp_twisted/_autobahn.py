"""WebSocket pieces both roles share: the subprotocol, close codes, a faster
Autobahn read/write path and a check of timer settings.

They live apart from ``mcp_twisted.websocket`` (the server transport) so that
the client does not import the server, its app and pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autobahn.websocket.protocol import WebSocketProtocol

if TYPE_CHECKING:
    from autobahn.twisted.websocket import WebSocketAdapterProtocol
    from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport

    class IWebSocketTransport(ITCPTransport, IConsumer, IPushProducer):
        """For annotations only (no transport declares it), like Twisted's own
        ``portforward._MakeTypesHappy``: what the TCP or TLS transport under a
        WebSocket connection provides, and what our protocols use of it."""

    class _TwistedWebSocketProtocol(WebSocketAdapterProtocol, WebSocketProtocol):  # type: ignore[misc]  # Autobahn's two bases define peer and _transport_details differently
        """What ``FastPathMixin`` is mixed into: Autobahn's protocol on Twisted."""

        transport: IWebSocketTransport  # set by makeConnection, before any of our code runs
else:
    _TwistedWebSocketProtocol = object

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_UNSUPPORTED_DATA",
    "SUBPROTOCOL",
    "FastPathMixin",
    "check_timer_settings",
]

SUBPROTOCOL = "mcp"

# RFC 6455 close codes this package sends.
CLOSE_NORMAL = 1000  # the client is done (stopService), or its handshake failed
CLOSE_GOING_AWAY = 1001  # the server shuts down
CLOSE_UNSUPPORTED_DATA = 1003  # a binary frame
CLOSE_POLICY_VIOLATION = 1008  # a limit of the server's (output not read, no initialize in time)
CLOSE_MESSAGE_TOO_BIG = 1009


def check_timer_settings(**seconds: float) -> None:
    """Refuse timer settings Autobahn cannot honour.

    Autobahn schedules pings and handshake timeouts through txaio's batched
    timer, which rounds each deadline down to a whole second: a 0.5 s timeout
    can fire at once and drop a healthy peer.
    """
    for name, value in seconds.items():
        if 0 < value < 1:
            raise ValueError(f"{name.replace('_', ' ')} {value:g} s: use 0 (off) or whole seconds >= 1")


class FastPathMixin(_TwistedWebSocketProtocol):
    """Skips two debug log calls Autobahn makes for every read and write.

    ``dataReceived`` and ``sendData`` build their debug messages' arguments
    (``hltype``/``hlval``, about 8 us each) before the logger discards them at
    the default level: about a tenth of the server's CPU per call. These
    overrides do what Autobahn does minus that; anything unusual (chopping,
    synchronous sends, a queue) still goes through Autobahn's own code.
    """

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if sync or chopsize or self.send_queue or self.logOctets:  # type: ignore[attr-defined]  # Autobahn copies logOctets from the factory in _connectionMade
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        else:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
