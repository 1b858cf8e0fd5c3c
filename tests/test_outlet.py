"""What a session tells its transport about each message it sends: which
request it belongs to, and whether it is that request's answer. Streamable
HTTP routes by it; here it is checked for every kind of message."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mcp_twisted.server import Context, MCPServer
from mcp_twisted.session import Role, Session

Sent = list[tuple[Any, Any, bool]]


def recording_session(app: MCPServer, version: str = "2025-11-25") -> tuple[Session, Sent]:
    sent: Sent = []
    session = Session(lambda data, related, answer: sent.append((json.loads(data), related, answer)),
                      role=Role.SERVER, handler=app, clock=Clock())
    session.receive(json.dumps({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": {
        "protocolVersion": version, "clientInfo": {"name": "c", "version": "0"},
        "capabilities": {"sampling": {}}}}))
    session.receive(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    return session, sent


def call(session: Session, request_id: Any, name: str) -> None:
    session.receive(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                                "params": {"name": name, "_meta": {"progressToken": "p"}}}))


def test_every_message_a_handler_causes_names_its_request():
    app = MCPServer("outlet")
    sampled: list[Deferred[Any]] = []

    @app.tool()
    async def busy(ctx: Context) -> str:
        await ctx.report_progress(1, 2)
        await ctx.log("info", "working")
        sampled.append(ctx.sample("hello"))
        await sampled[-1]
        return "done"

    session, sent = recording_session(app)
    assert sent[0][1:] == ("init", True)
    session.receive(json.dumps({"jsonrpc": "2.0", "id": "lvl", "method": "logging/setLevel",
                                "params": {"level": "info"}}))
    sent.clear()
    call(session, 7, "busy")
    methods = [(m.get("method"), related, answer) for m, related, answer in sent]
    assert methods == [("notifications/progress", 7, False), ("notifications/message", 7, False),
                       ("sampling/createMessage", 7, False)]
    sample_id = sent[-1][0]["id"]
    sent.clear()
    session.receive(json.dumps({"jsonrpc": "2.0", "id": sample_id, "result": {
        "role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m"}}))
    ((answer, related, is_answer),) = sent
    assert answer["id"] == 7 and (related, is_answer) == (7, True)


def test_messages_no_request_owns_have_no_relation():
    app = MCPServer("outlet")

    @app.tool()
    def t() -> str:
        return "t"

    _, sent = recording_session(app)
    sent.clear()
    app.remove_tool("t")
    ((message, related, answer),) = sent
    assert message["method"] == "notifications/tools/list_changed" and (related, answer) == (None, False)


def test_refusals_and_batches_are_answers_filed_under_their_request():
    app = MCPServer("outlet")
    session, sent = recording_session(app, "2025-03-26")
    sent.clear()
    session.receive(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "no/such/method"}))
    session.receive(json.dumps([{"jsonrpc": "2.0", "method": "notifications/x"},
                                {"jsonrpc": "2.0", "id": "a", "method": "ping"},
                                {"jsonrpc": "2.0", "id": "b", "method": "ping"}]))
    (refusal, batch) = sent
    assert refusal[0]["error"]["code"] == -32601 and refusal[1:] == (3, True)
    assert [r["id"] for r in batch[0]] == ["a", "b"] and batch[1:] == ("a", True)
