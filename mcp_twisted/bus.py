"""The event bus: notifications from one instance to every instance of an app.

A client is connected to one process, but what it hears about (a resource
it subscribed to changed, the tool list changed) may happen in another. An
``IEventBus`` carries such events between processes and hosts:

- ``publish(channel, message)`` sends text to every subscriber of the channel;
- ``subscribe(channel, receive, resync)`` calls ``receive(message)`` for each
  message and ``resync()`` whenever messages may have been missed (each
  (re)connection to the broker: pub/sub delivers at most once);
- it is a Twisted ``IService``: connect in ``startService``, disconnect in
  ``stopService``.

``LocalBus`` keeps events inside one process (several apps or test
instances); ``RedisBus`` (the ``redis`` extra) uses Redis pub/sub through
txredisapi, which is Twisted-native. ``AppChannel`` is what an
``MCPServer`` uses (``server.use_bus(bus)``): one channel per server name,
events as JSON with the sender's id, so an instance does not deliver its own
events twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, implementer

__all__ = ["AppChannel", "IEventBus", "LocalBus", "RedisBus", "redis_bus"]

log = Logger()

Receive = Callable[[str], None]
Resync = Callable[[], None]

PUBLISH_TIMEOUT = 5.0
"""Seconds a publish may wait for the broker (for instance during a
reconnection) before the event is given up; pub/sub is at most once anyway."""


class IEventBus(IService):
    """Carries text messages on named channels between processes."""

    name: str = Attribute("A short description for logs, e.g. the broker's address.")

    def publish(channel: str, message: str) -> Deferred[None]:
        """Send ``message`` to every subscriber of ``channel`` (this process's too).
        Fires when the broker took it; fails when it could not."""

    def subscribe(channel: str, receive: Receive, resync: Resync) -> None:
        """Call ``receive`` with each message on ``channel``, and ``resync``
        after each (re)connection to the broker."""


@implementer(IEventBus)
class LocalBus(Service):
    """Delivers within this process, at once; never misses a message."""

    name = "local"

    def __init__(self) -> None:
        self.subscribers: dict[str, list[Receive]] = {}

    def publish(self, channel: str, message: str) -> Deferred[None]:
        for receive in list(self.subscribers.get(channel, ())):
            receive(message)
        return succeed(None)

    def subscribe(self, channel: str, receive: Receive, resync: Resync) -> None:
        self.subscribers.setdefault(channel, []).append(receive)


@implementer(IEventBus)
class RedisBus(Service):
    """Redis (or Valkey) pub/sub through txredisapi.

    Two connections, as Redis wants: a subscriber, which resubscribes and
    calls every ``resync`` after each reconnection, and one for ``PUBLISH``.
    Both reconnect with txredisapi's backoff (from ``initial_delay`` up to
    ``max_delay`` seconds).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, *, dbid: int | None = None,
                 password: str | None = None, initial_delay: float = 0.5, max_delay: float = 5.0,
                 clock: IReactorTime | None = None) -> None:
        import txredisapi  # type: ignore[import-untyped]  # the redis extra: a missing one fails here

        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)  # the module stands for the installed reactor
        self.clock: IReactorTime = clock
        self.name = f"redis://{host}:{port}"
        self.host, self.port, self.dbid, self.password = host, port, dbid, password
        self.channels: dict[str, list[tuple[Receive, Resync]]] = {}
        bus = self

        class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]  # txredisapi is untyped
            def connectionMade(self) -> Deferred[None]:
                ready: Deferred[None] = super().connectionMade()
                return ready.addCallback(lambda _: bus._subscribed(self)).addErrback(
                    lambda failure: log.warn("Event bus {bus}: not subscribed: {why}", bus=bus.name,
                                             why=failure.getErrorMessage()))

            def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
                bus._received(channel, message)

        self.subscriber_factory = txredisapi.SubscriberFactory(isLazy=True)
        self.subscriber_factory.protocol = Subscriber
        self.subscriber_factory.password = password
        self.publisher_factory = txredisapi.RedisFactory(self.name, dbid, 1, isLazy=True, password=password)
        for factory in (self.subscriber_factory, self.publisher_factory):
            factory.initialDelay = initial_delay
            factory.maxDelay = max_delay

    def startService(self) -> None:
        from twisted.internet.endpoints import TCP4ClientEndpoint

        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service, unannotated
        for factory in (self.subscriber_factory, self.publisher_factory):
            factory.startConnecting(TCP4ClientEndpoint(self.clock, self.host, self.port, timeout=5))

    def stopService(self) -> Deferred[Any]:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service, unannotated
        from twisted.internet.defer import DeferredList

        return DeferredList([self.subscriber_factory.disconnect(), self.publisher_factory.disconnect()],
                            consumeErrors=True)

    def publish(self, channel: str, message: str) -> Deferred[None]:
        published: Deferred[None] = self.publisher_factory.handler.publish(channel, message)
        return published.addTimeout(PUBLISH_TIMEOUT, self.clock)

    def subscribe(self, channel: str, receive: Receive, resync: Resync) -> None:
        self.channels.setdefault(channel, []).append((receive, resync))

    def _subscribed(self, connection: Any) -> Deferred[None]:
        subscribed: Deferred[None] = connection.subscribe(list(self.channels))

        def resync(_: object) -> None:
            log.info("Event bus {bus}: subscribed to {channels}", bus=self.name,
                     channels=sorted(self.channels))
            for subscribers in self.channels.values():
                for _receive, on_resync in subscribers:
                    on_resync()

        return subscribed.addCallback(resync)

    def _received(self, channel: str, message: str) -> None:
        for receive, _resync in self.channels.get(channel, ()):
            receive(message)


def redis_bus(url: str) -> RedisBus:
    """A ``RedisBus`` for ``redis://[:password@]host[:port][/db]``; ``ValueError``
    for another URL, ``ImportError`` without the redis extra."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError("expected redis://host[:port][/db]")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(f"database {database!r} is not a number")
    try:
        return RedisBus(parts.hostname, parts.port or 6379, dbid=int(database) if database else None,
                        password=parts.password)
    except ImportError:
        raise ImportError("the Redis bus needs txredisapi: pip install 'mcp-twisted[redis]'") from None


class AppChannel:
    """One app's events on a bus: ``publish`` sends an event to the other
    instances; events from them go to ``deliver``; ``resync`` runs when some
    may have been missed."""

    def __init__(self, bus: IEventBus, app_name: str, deliver: Callable[[dict[str, Any]], None],
                 resync: Resync) -> None:
        self.bus = bus
        self.channel = f"mcp:{app_name}"
        self.origin = uuid.uuid4().hex
        self.deliver = deliver
        bus.subscribe(self.channel, self._received, resync)

    def publish(self, event: dict[str, Any]) -> None:
        """Send ``event`` (JSON-able) to the other instances; a failure is logged, not raised."""
        message = json.dumps({**event, "origin": self.origin}, separators=(",", ":"))
        self.bus.publish(self.channel, message).addErrback(
            lambda failure: log.warn("Event bus {bus}: event not published: {why}", bus=self.bus.name,
                                     why=failure.getErrorMessage()))

    def _received(self, message: str) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            log.warn("Event bus {bus}: ignored a message that is not JSON on {channel}",
                     bus=self.bus.name, channel=self.channel)
            return
        if not isinstance(event, dict) or event.get("origin") == self.origin:
            return
        try:
            self.deliver(event)
        except Exception:  # the bus's other subscribers must still get it
            log.failure("Event bus {bus}: handling an event on {channel} failed", bus=self.bus.name,
                        channel=self.channel)
