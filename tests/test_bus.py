"""The event bus in memory: two instances of one app on a ``LocalBus``, each
with its own clients (``Peer``s). Redis itself is in test_bus_redis.py."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_twisted import MCPServer
from mcp_twisted.bus import AppChannel, LocalBus, redis_bus
from mcp_twisted.testing import Peer

URI = "scale://counter"


def instance(bus: LocalBus, name: str = "shared") -> MCPServer:
    server = MCPServer(name)  # declares every kind, so its clients may hear of every list change
    server.add_resource(lambda: "0", uri=URI, name="counter")
    server.add_tool(lambda: "pong", name="ping")
    server.add_prompt(lambda: "hello", name="hello")
    server.use_bus(bus)
    return server


def subscribed(server: MCPServer) -> Peer:
    peer = Peer(server)
    peer.initialize()
    peer.result("resources/subscribe", {"uri": URI})
    peer.take()
    return peer


def methods(peer: Peer) -> list[tuple[str, Any]]:
    return [(m["method"], m.get("params")) for m in peer.take() if "method" in m]


def test_resource_updated_on_one_instance_reaches_subscribers_of_every_instance_once():
    bus = LocalBus()
    a, b, other_app = instance(bus), instance(bus), instance(bus, "another-app")
    on_a, on_b, elsewhere = subscribed(a), subscribed(b), subscribed(other_app)
    a.notify_resource_updated(URI)
    expected = [("notifications/resources/updated", {"uri": URI})]
    assert methods(on_a) == expected and methods(on_b) == expected
    assert methods(elsewhere) == []  # one channel per server name


def test_list_changes_reach_every_instance():
    bus = LocalBus()
    a, b = instance(bus), instance(bus)
    on_b = Peer(b)
    on_b.initialize()
    a.add_tool(lambda: "x", name="new")
    a.remove_resource(URI)
    a.add_prompt(lambda: "p", name="greet")
    assert methods(on_b) == [("notifications/tools/list_changed", None),
                             ("notifications/resources/list_changed", None),
                             ("notifications/prompts/list_changed", None)]


def test_a_resync_tells_every_local_session_to_fetch_again():
    server = instance(LocalBus())
    peer = subscribed(server)
    server.resync()
    assert sorted(method for method, _ in methods(peer)) == [
        "notifications/prompts/list_changed", "notifications/resources/list_changed",
        "notifications/resources/updated", "notifications/tools/list_changed"]


def test_the_channel_ignores_its_own_events_and_garbage():
    bus = LocalBus()
    delivered: list[dict[str, Any]] = []
    channel = AppChannel(bus, "app", delivered.append, lambda: None)
    channel.publish({"method": "x"})
    bus.publish("mcp:app", "{not json")
    bus.publish("mcp:app", "[1, 2]")
    bus.publish("mcp:app", '{"method": "y", "origin": "elsewhere"}')
    assert delivered == [{"method": "y", "origin": "elsewhere"}]


def test_bus_events_from_a_buggy_publisher_are_ignored():
    bus = LocalBus()
    server = instance(bus)
    peer = subscribed(server)
    other = instance(bus)  # the same app in another process: it subscribed after this one
    on_other = subscribed(other)
    for message in ('{"method": "notifications/resources/updated", "uri": 5}',
                    '{"method": "tools/call"}', '{"method": ["x"]}', '{"method": {"a": 1}}'):
        assert bus.publish("mcp:shared", message).called  # nothing raised out of delivery
    assert methods(peer) == [] and methods(on_other) == []
    server.notify_resource_updated(URI)  # and the bus still delivers
    assert methods(on_other) == [("notifications/resources/updated", {"uri": URI})]


def test_a_subscriber_that_fails_does_not_stop_the_others(events):
    bus = LocalBus()
    delivered: list[dict[str, Any]] = []

    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("an app's bug")

    AppChannel(bus, "app", broken, lambda: None)
    AppChannel(bus, "app", delivered.append, lambda: None)
    bus.publish("mcp:app", '{"method": "y", "origin": "elsewhere"}')
    assert delivered == [{"method": "y", "origin": "elsewhere"}]
    failed = [e for e in events if (e.get("log_format") or "").startswith("Event bus {bus}: handling")]
    assert len(failed) == 1


def test_a_server_uses_one_bus():
    server = instance(LocalBus())
    with pytest.raises(ValueError, match="server 'shared' already uses the bus local"):
        server.use_bus(LocalBus())


def test_both_buses_provide_the_interface_and_a_service_lifecycle():
    from zope.interface.verify import verifyObject

    from mcp_twisted.bus import IEventBus

    for bus in (LocalBus(), redis_bus("redis://127.0.0.1:6390")):
        assert verifyObject(IEventBus, bus)


def test_redis_bus_urls():
    bus = redis_bus("redis://:secret@cache.internal:6390/3")
    assert (bus.host, bus.port, bus.dbid, bus.password) == ("cache.internal", 6390, 3, "secret")
    assert redis_bus("redis://127.0.0.1").port == 6379
    with pytest.raises(ValueError, match="expected redis://"):
        redis_bus("rediss://127.0.0.1")


def test_listen_streams_of_every_instance_hear_events_from_the_bus():
    """2026-07-28: subscriptions/listen on one instance, the change on another."""
    from mcp_twisted.eras import META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION

    bus = LocalBus()
    a, b = instance(bus), instance(bus)
    peer = Peer(b)
    peer.request("subscriptions/listen", {
        "_meta": {META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: {}},
        "notifications": {"toolsListChanged": True, "resourceSubscriptions": [URI]}})
    peer.take()  # the acknowledgement
    a.add_tool(lambda: "x", name="new")
    a.notify_resource_updated(URI)
    assert [method for method, _ in methods(peer)] == [
        "notifications/tools/list_changed", "notifications/resources/updated"]
