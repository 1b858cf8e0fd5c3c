"""Sealed requestState: what one round hands the next, and every way a
client could try to misuse it."""

from __future__ import annotations

import pytest

from mcp_twisted.jsonrpc import RPCError
from mcp_twisted.sealing import StateSealer, binding, load_key

PARAMS = {"name": "book", "arguments": {"city": "Oslo"}}


def test_a_state_opens_to_its_answers_for_the_same_request():
    sealer = StateSealer()
    bound = binding("tools/call", PARAMS, "alice")
    state = sealer.seal({"elicit1": {"action": "accept"}}, bound, now=100.0)
    # Per-round parameters do not change what the state is bound to.
    again = binding("tools/call", {**PARAMS, "_meta": {"x": 1}, "requestState": state,
                                   "inputResponses": {"elicit1": {}}}, "alice")
    assert again == bound
    assert sealer.open(state, again, now=101.0) == {"elicit1": {"action": "accept"}}


def test_instances_sharing_a_key_accept_each_others_states(tmp_path):
    (tmp_path / "key").write_bytes(b"k" * 40 + b"\n")
    key = load_key(tmp_path / "key")
    bound = binding("prompts/get", {"name": "p"}, None)
    state = StateSealer(key).seal({}, bound, 0.0)
    assert StateSealer(key).open(state, bound, 1.0) == {}


def test_a_short_key_file_is_refused(tmp_path):
    (tmp_path / "key").write_bytes(b"short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        load_key(tmp_path / "key")


@pytest.mark.parametrize("tamper", [
    lambda s: s[:-2] + ("AA" if s[-2:] != "AA" else "BB"),  # another MAC
    lambda s: "x" + s,  # another payload
    lambda s: "not a state",
    lambda s: 42,
    lambda s: s.replace(".", ""),
])
def test_tampered_states_are_refused(tamper):
    sealer = StateSealer()
    bound = binding("tools/call", PARAMS, "alice")
    with pytest.raises(RPCError) as refused:
        sealer.open(tamper(sealer.seal({"k": 1}, bound, 0.0)), bound, 1.0)
    assert refused.value.code == -32602


@pytest.mark.parametrize(("method", "params", "identity"), [
    ("tools/call", {**PARAMS, "arguments": {"city": "Bergen"}}, "alice"),  # other arguments
    ("prompts/get", PARAMS, "alice"),  # other method
    ("tools/call", PARAMS, "mallory"),  # other caller
])
def test_a_state_for_another_request_or_caller_is_refused(method, params, identity):
    sealer = StateSealer()
    state = sealer.seal({}, binding("tools/call", PARAMS, "alice"), 0.0)
    with pytest.raises(RPCError, match="another request or another caller"):
        sealer.open(state, binding(method, params, identity), 1.0)


def test_an_expired_state_is_refused_and_a_foreign_key_too():
    sealer = StateSealer(ttl=10)
    bound = binding("tools/call", PARAMS, None)
    state = sealer.seal({}, bound, 0.0)
    with pytest.raises(RPCError, match="expired"):
        sealer.open(state, bound, 11.0)
    with pytest.raises(RPCError, match="altered or issued by another server"):
        StateSealer().open(state, bound, 1.0)
