"""WebSocket pieces both roles share: the subprotocol, close codes, a faster
Autobahn read/write path, a leaner way to give connections their options,
and a check of timer settings.

They live apart from ``mcp_twisted.websocket`` (the server transport) so that
the client does not import the server, its app and pydantic.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

from autobahn.websocket.protocol import WebSocketProtocol

if TYPE_CHECKING:
    from autobahn.twisted.websocket import WebSocketAdapterProtocol, WebSocketServerFactory
    from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport

    class IWebSocketTransport(ITCPTransport, IConsumer, IPushProducer):
        """For annotations only (no transport declares it), like Twisted's own
        ``portforward._MakeTypesHappy``: what the TCP or TLS transport under a
        WebSocket connection provides, and what our protocols use of it."""

    class _TwistedWebSocketProtocol(WebSocketAdapterProtocol, WebSocketProtocol):  # type: ignore[misc]  # Autobahn's two bases define peer and _transport_details differently
        """What ``FastPathMixin`` is mixed into: Autobahn's protocol on Twisted."""

        transport: IWebSocketTransport  # set by makeConnection, before any of our code runs

    _ServerFactory = WebSocketServerFactory
else:
    _TwistedWebSocketProtocol = _ServerFactory = object

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_UNSUPPORTED_DATA",
    "SUBPROTOCOL",
    "FastFactoryMixin",
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
    """Skips work Autobahn does for every read, write and message that
    nobody uses.

    ``dataReceived`` and ``sendData`` build their debug messages' arguments
    (``hltype``/``hlval``, about 8 us each) before the logger discards them at
    the default level: about a tenth of the server's CPU per call. These
    overrides do what Autobahn does minus that; anything unusual (chopping,
    synchronous sends, a queue) still goes through Autobahn's own code.
    ``onMessageEnd`` leaves out the "message" event when it has no listener.
    """

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)

    def onMessageEnd(self) -> None:
        # After onMessage, Autobahn fires its "message" event for listeners
        # added with .on("message", ...): a Deferred, a gather and a callback
        # for every message, listeners or not. With none, deliver only.
        if self._listeners is not None or self.trackedTimings:
            super().onMessageEnd()
            return
        if not self.failedByMe:
            self._onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if sync or chopsize or self.send_queue or self.logOctets:  # type: ignore[attr-defined]  # Autobahn copies logOctets from the factory in _connectionMade
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        else:
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)


class FastFactoryMixin(_ServerFactory):
    """Gives each connection its Autobahn options through its class.

    Autobahn copies each of its ~30 options from the factory onto every new
    connection whose class lacks it, and formats the list with ``pformat``
    for a debug line that is then discarded: about a fifth of the CPU of a
    new session, and ~30 entries in every connection's attribute table.
    Here the options are class attributes of one subclass of ``protocol``
    per set of options (``CONFIG_ATTRS`` empty, so there is nothing to copy
    or format): an idle connection keeps its attribute table in the next
    smaller size (about 1.7 KiB less). Changing the options later makes a
    new subclass, so a connection keeps the options it started with, as
    with Autobahn's copy.
    """

    _configured: type[Any] | None = None

    def buildProtocol(self, addr: Any) -> Any:
        configured = self._configured
        if configured is None or configured.__bases__[0] is not self.protocol:
            base = self.protocol
            # A function (perMessageCompressionAccept) would be bound as a method.
            options = {name: staticmethod(value) if isinstance(value, types.FunctionType) else value
                       for name in base.CONFIG_ATTRS for value in (getattr(self, name),)}
            configured = self._configured = type(base.__name__, (base,), {
                **options, "CONFIG_ATTRS": (), "__module__": base.__module__,
                "__qualname__": base.__qualname__})
        protocol = configured()
        protocol.factory = self
        return protocol

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        super().setProtocolOptions(*args, **kwargs)  # type: ignore[no-untyped-call]  # Autobahn's, unannotated
        self._configured = None

    def resetProtocolOptions(self) -> None:
        super().resetProtocolOptions()  # type: ignore[no-untyped-call]  # Autobahn's, unannotated
        self._configured = None
