"""The 2026-07-28 server path against hostile input: every request still gets
exactly one answer, with the error the revision specifies (routing headers
that differ from the body, answers that cannot be sealed into
``requestState``, a handler that asks again after its round ended)."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_twisted.eras import HEADER_MISMATCH
from mcp_twisted.server import Context
from mcp_twisted.testing import Peer
from tests.http_support import Served
from tests.test_http_hostile import modern_app, modern_post
from tests.test_stateless import SCHEMA, app, envelope, round_trip


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_input_responses_too_deep_to_seal_are_refused_not_left_unanswered():
    # Deep enough to pass a check of the responses alone, one level too deep
    # once wrapped in the sealed payload: the round once ended in a timer
    # that raised, and the request never got its answer.
    peer = Peer(app())
    for depth in (252, 253, 300):
        answer = round_trip(peer, "greet", inputResponses={"x": nested(depth)})
        outcome = answer["result"]["resultType"] if "result" in answer else answer["error"]["code"]
        assert outcome == ("input_required" if depth == 252 else -32602), depth


@pytest.mark.parametrize("raw", ["\u00a0other", "other\u2003", "other\x1c", "\x0bother"])
def test_a_routing_header_padded_with_non_http_whitespace_is_a_mismatch(raw):
    # str.strip() once dropped these, so bytes an intermediary routes on
    # ("\u00a0other") passed as the body's "other".
    server = Served(modern_app())
    wire = server.open()
    wire.send(modern_post("other", {}, [("Mcp-Method", "tools/call"), ("Mcp-Name", "NAME")])
              .replace(b"NAME", raw.encode()))
    assert wire.reply.status == 400 and wire.reply.json["error"]["code"] == HEADER_MISMATCH


def test_answers_too_large_to_seal_are_invalid_params_not_an_internal_error():
    # 4000 bytes of answers seal to about 5400 characters: over the limit,
    # the round once ended in "Result too large" (-32603).
    peer = Peer(app(), max_message_size=5000)
    small = round_trip(peer, "greet", inputResponses={"junk": "x" * 2000})
    assert small["result"]["resultType"] == "input_required"
    error = round_trip(peer, "greet", inputResponses={"junk": "x" * 4000})["error"]
    assert error["code"] == -32602 and error["data"]["limit"] == 5000


def test_a_last_round_with_large_answers_is_answered_as_nothing_is_sealed():
    # Answers that complete the handler are never sealed: only a round that
    # ends with them is bounded by what a state can carry.
    peer = Peer(app(), max_message_size=5000)
    name = "n" * 4000
    accepted = {"action": "accept", "content": {"name": name}}
    answer = round_trip(peer, "greet", inputResponses={"who": accepted})
    assert answer["result"]["content"][0]["text"] == f"Hello {name}"


def test_a_handler_that_catches_the_round_ending_and_asks_again_still_answers():
    # The round ends by cancelling the handler; one that took that for a
    # failed question and asked another way waited forever, unanswered.
    server = app()

    @server.tool()
    async def fallback(ctx: Context) -> str:
        try:
            answer = await ctx.elicit("Name?", SCHEMA, key="who")
        except Exception:
            answer = await ctx.elicit("Nickname?", SCHEMA, key="nick")
        return str(answer["content"]["name"])

    result = round_trip(Peer(server), "fallback")["result"]
    assert result["resultType"] == "input_required" and list(result["inputRequests"]) == ["who"]


def test_a_listen_stream_outlives_the_handler_timeout():
    # --handler-timeout bounds handlers that compute an answer; a listen
    # stream has none to compute: it runs until the client or the drain ends it.
    server = app()
    peer = Peer(server, handler_timeout=30)
    listen_id = peer.request("subscriptions/listen",
                             {"_meta": envelope(), "notifications": {"toolsListChanged": True}})
    peer.take()  # the acknowledgement
    peer.clock.advance(31)
    assert peer.take() == []
    server.add_tool(lambda: "x", name="later")
    (changed,) = peer.take()
    assert changed["method"] == "notifications/tools/list_changed"
    assert peer.session.running(listen_id)
