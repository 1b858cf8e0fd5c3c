"""What both SDK servers need for Streamable HTTP: an event store, so that
their SSE answers start with a priming event and can be resumed, as
mcp-twisted's do (the SDK primes a stream only when it has a store), and the
settings they share."""

from __future__ import annotations

from collections import OrderedDict

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import JSONRPCMessage

RETRY_MS = 1000  # the SSE retry: in priming events, mcp-twisted's default
MAX_EVENTS = 1000  # events kept, as mcp-twisted keeps per session

# What FastMCP turns on by itself when it listens on 127.0.0.1; mcp-twisted checks Host and Origin too.
LOOPBACK_ONLY = TransportSecuritySettings(
    enable_dns_rebinding_protection=True,
    allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
    allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
)


class MemoryEventStore(EventStore):
    """The most recent ``MAX_EVENTS`` events in memory, in order."""

    def __init__(self) -> None:
        self._events: OrderedDict[EventId, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()
        self._sequence = 0

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        self._sequence += 1
        event_id = str(self._sequence)
        self._events[event_id] = (stream_id, message)
        if len(self._events) > MAX_EVENTS:
            self._events.popitem(last=False)
        return event_id

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        if last_event_id not in self._events:
            return None
        stream_id, after = self._events[last_event_id][0], False
        for event_id, (stream, message) in list(self._events.items()):
            if after and stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream_id
