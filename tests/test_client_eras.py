"""Era detection and the 2026-07-28 client rules, without sockets: a client
``Session`` whose output is a list, answered by hand."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import task

from mcp_twisted.client import MCPClient
from mcp_twisted.client._api import LISTEN_RESTART_DELAY, PROBE_TIMEOUT
from mcp_twisted.eras import META_PROTOCOL_VERSION
from mcp_twisted.jsonrpc import RPCError
from mcp_twisted.session import Role, Session

DISCOVER_RESULT = {"resultType": "complete", "supportedVersions": ["2026-07-28"],
                   "capabilities": {"tools": {}}, "ttlMs": 0, "cacheScope": "public",
                   "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "modern", "version": "1"}}}
INITIALIZE_RESULT = {"protocolVersion": "2025-11-25", "capabilities": {},
                     "serverInfo": {"name": "old", "version": "1"}}


class Wire:
    """A client session and what it sent."""

    def __init__(self, client: MCPClient | None = None, **options: Any) -> None:
        self.clock = task.Clock()
        self.client = client or MCPClient(self.clock, era_cache={}, **options)
        self.sent: list[dict[str, Any]] = []
        self.session = Session(lambda data, related, answer: self.sent.append(json.loads(data)),
                               role=Role.CLIENT, handler=self.client, clock=self.clock)

    def last(self) -> dict[str, Any]:
        return self.sent[-1]

    def answer(self, result: Any = None, error: Any = None) -> None:
        message = {"jsonrpc": "2.0", "id": self.last()["id"]}
        message.update({"error": error} if error is not None else {"result": result})
        self.session.receive(json.dumps(message))

    def open(self) -> Any:
        opened = self.client.open_session(self.session, "http://server:80")
        opened.addCallback(lambda result: self.client.attach(self.session) or result)
        return opened


def test_auto_takes_a_discover_result_and_caches_the_revision():
    wire = Wire()
    opened = wire.open()
    assert wire.last()["method"] == "server/discover"
    assert wire.last()["params"]["_meta"][META_PROTOCOL_VERSION] == "2026-07-28"
    wire.answer(DISCOVER_RESULT)
    assert opened.called and wire.client.modern
    assert wire.client.server_info == {"name": "modern", "version": "1"}
    assert wire.client.era_cache == {"http://server:80": "2026-07-28"}


def test_auto_falls_back_to_initialize_on_any_other_answer():
    for answer in ({"error": {"code": -32601, "message": "Method not found"}}, {"result": {}},
                   {"error": {"code": -32022, "message": "no", "data": {"supported": ["2099-01-01"]}}}):
        wire = Wire()
        opened = wire.open()
        wire.answer(**answer)
        assert wire.last()["method"] == "initialize", answer
        wire.answer(INITIALIZE_RESULT)
        assert opened.called and not wire.client.modern
        assert wire.client.era_cache == {"http://server:80": "legacy"}


def test_auto_falls_back_when_the_server_stays_silent():
    wire = Wire()
    opened = wire.open()
    wire.clock.advance(PROBE_TIMEOUT)
    assert [message.get("method") for message in wire.sent] == [
        "server/discover", "notifications/cancelled", "initialize"]
    wire.answer(INITIALIZE_RESULT)
    assert opened.called and not wire.client.modern


def test_unsupported_version_is_retried_with_one_the_server_names():
    wire = Wire(era="2026-07-28")
    opened = wire.open()
    wire.answer(error={"code": -32022, "message": "Unsupported", "data": {"supported": ["2026-07-28"]}})
    first, retry = wire.sent
    assert retry["method"] == "server/discover" and retry["id"] != first["id"]
    wire.answer(DISCOVER_RESULT)
    assert opened.called and wire.client.modern


def test_a_cached_handshake_era_skips_the_probe():
    wire = Wire()
    wire.client.era_cache["http://server:80"] = "legacy"
    wire.open()
    assert wire.last()["method"] == "initialize"


def test_input_required_is_answered_by_the_callbacks_and_retried_with_the_state_byte_exact():
    asked: list[dict[str, Any]] = []

    def elicitation(params: dict[str, Any]) -> dict[str, Any]:
        asked.append(params)
        return {"action": "accept", "content": {}}

    wire = Wire(era="2026-07-28", elicitation=elicitation, roots=lambda: [{"uri": "file:///r"}])
    wire.open()
    wire.answer(DISCOVER_RESULT)
    result = wire.client.read_resource("x://a")
    first = wire.last()
    state = ' {"b": 1,  "a": "\\u00e9"}\u2028 '  # echoed as given: never parsed, never re-encoded
    schema = {"type": "object", "properties": {"n": {"type": "integer", "default": 3}}}
    wire.answer({"resultType": "input_required", "requestState": state, "inputRequests": {
        "form": {"method": "elicitation/create", "params": {"message": "n?", "requestedSchema": schema}},
        "where": {"method": "roots/list", "params": {}}}})
    retry = wire.last()
    assert retry["id"] != first["id"] and retry["method"] == "resources/read"
    assert retry["params"]["requestState"] == state and retry["params"]["uri"] == "x://a"
    assert retry["params"]["inputResponses"] == {
        "form": {"action": "accept", "content": {"n": 3}},  # the schema's default filled in
        "where": {"roots": [{"uri": "file:///r"}]}}
    assert META_PROTOCOL_VERSION in retry["params"]["_meta"] and asked[0]["message"] == "n?"
    wire.answer({"resultType": "input_required", "inputRequests": {}})  # no state: none sent back
    assert "requestState" not in wire.last()["params"]
    wire.answer({"resultType": "complete", "contents": []})
    assert result.result == {"resultType": "complete", "contents": []}


def test_subscriptions_on_2026_07_28_are_one_listen_request():
    wire = Wire(era="2026-07-28")
    wire.open()
    wire.answer(DISCOVER_RESULT)
    updates: list[str] = []
    acked = wire.client.subscribe("x://a", updates.append)
    listen = wire.last()
    assert listen["method"] == "subscriptions/listen"
    assert listen["params"]["notifications"]["resourceSubscriptions"] == ["x://a"]
    meta = {"io.modelcontextprotocol/subscriptionId": listen["id"]}
    wire.session.receive(json.dumps({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                                     "params": {"notifications": {"resourceSubscriptions": ["x://a"]},
                                                "_meta": meta}}))
    assert acked.called
    wire.session.receive(json.dumps({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                                     "params": {"uri": "x://a", "_meta": meta}}))
    assert updates == ["x://a"]
    wire.client.unsubscribe("x://a")
    assert wire.last() == {"jsonrpc": "2.0", "method": "notifications/cancelled",
                           "params": {"requestId": listen["id"], "reason": "cancelled"}}


def acknowledge(wire: Wire, listen: dict[str, Any]) -> None:
    wire.session.receive(json.dumps({
        "jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
        "params": {"notifications": listen["params"]["notifications"],
                   "_meta": {"io.modelcontextprotocol/subscriptionId": listen["id"]}}}))


def test_a_second_subscription_replaces_the_listen_request_and_both_wait_for_its_acknowledgement():
    wire = Wire(era="2026-07-28")
    wire.open()
    wire.answer(DISCOVER_RESULT)
    first = wire.client.subscribe("x://a", lambda uri: None)
    second = wire.client.subscribe("x://b", lambda uri: None)
    listen = wire.last()
    assert listen["params"]["notifications"]["resourceSubscriptions"] == ["x://a", "x://b"]
    assert not first.called and not second.called
    acknowledge(wire, listen)
    assert first.called and second.called


def test_a_listen_request_the_server_ends_is_opened_again():
    wire = Wire(era="2026-07-28", on_list_changed=lambda kind: None)
    wire.open()
    wire.answer(DISCOVER_RESULT)
    listen = wire.last()
    assert listen["method"] == "subscriptions/listen"
    acknowledge(wire, listen)
    wire.answer({"resultType": "complete"})  # the server ends it
    assert wire.last()["id"] == listen["id"]  # nothing sent yet: it waits a moment
    wire.clock.advance(LISTEN_RESTART_DELAY)
    again = wire.last()
    assert again["method"] == "subscriptions/listen" and again["id"] != listen["id"]


def test_subscriptions_are_listened_for_again_on_the_next_session():
    wire = Wire(era="2026-07-28")
    wire.open()
    wire.answer(DISCOVER_RESULT)
    wire.client.subscribe("x://a", lambda uri: None)
    acknowledge(wire, wire.last())
    wire.session.close("lost")
    later = Wire(wire.client)  # the next connection's session, for the same client
    later.open()
    later.answer(DISCOVER_RESULT)
    assert later.last()["method"] == "subscriptions/listen"
    assert later.last()["params"]["notifications"]["resourceSubscriptions"] == ["x://a"]


def test_a_cached_era_the_server_no_longer_speaks_is_forgotten():
    wire = Wire()
    wire.client.era_cache["http://server:80"] = "legacy"
    opened = wire.open()
    wire.answer(error={"code": -32022, "message": "Unsupported", "data": {"supported": ["2026-07-28"]}})
    assert opened.called and opened.result.check(RPCError)
    opened.addErrback(lambda failure: None)
    assert wire.client.era_cache == {}  # the next attempt probes again
