"""The JSON-RPC 2.0 envelope layer: strict parsing, error codes, encoding."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mcp_twisted import jsonrpc
from mcp_twisted.jsonrpc import (
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorResponse,
    MessageError,
    Notification,
    Request,
    Response,
    RPCError,
)
from mcp_twisted.server import MCPServer
from mcp_twisted.session import Role, Session
from mcp_twisted.testing import collect_into


def parse_error(text: str | bytes) -> MessageError:
    with pytest.raises(MessageError) as info:
        jsonrpc.parse(text)
    return info.value


# -- invalid JSON and non-messages -------------------------------------------


@pytest.mark.parametrize("text", ["", "{", '{"jsonrpc": "2.0",}', "nul", b"\xff\xfe", "[1,", '"\\ud800"'])
def test_invalid_json_is_a_parse_error(text: str | bytes) -> None:
    error = parse_error(text)
    assert error.code == PARSE_ERROR == -32700
    assert error.request_id is None


@pytest.mark.parametrize("value", [
    1, 2.5, "ping", True, None,
    {},
    {"jsonrpc": "2.0"},
    {"jsonrpc": "2.0", "id": 1},
    {"jsonrpc": "2.0", "id": 1, "method": None},
    {"jsonrpc": "2.0", "id": 1, "method": 7},
    {"id": 1, "method": "ping"},
    {"jsonrpc": "1.0", "id": 1, "method": "ping"},
    {"jsonrpc": 2.0, "id": 1, "method": "ping"},
    {"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "x"}},
    {"jsonrpc": "2.0", "result": {}},
    {"jsonrpc": "2.0", "id": None, "result": {}},
    {"jsonrpc": "2.0", "id": 1, "error": {"code": "1", "message": "x"}},
    {"jsonrpc": "2.0", "id": 1, "error": {"code": 1}},
    {"jsonrpc": "2.0", "id": 1, "error": "boom"},
    {"jsonrpc": "2.0", "error": {"code": 1, "message": "x"}},
])
def test_json_that_is_not_a_message_is_an_invalid_request(value: Any) -> None:
    assert parse_error(json.dumps(value)).code == INVALID_REQUEST == -32600


def test_empty_batch_is_an_invalid_request() -> None:
    assert parse_error("[]").code == INVALID_REQUEST


def test_wrong_jsonrpc_version_keeps_a_readable_id_for_the_error() -> None:
    error = parse_error('{"jsonrpc": "1.0", "id": "abc", "method": "ping"}')
    assert error.code == INVALID_REQUEST
    assert error.request_id == "abc"


# -- ids ---------------------------------------------------------------------


@pytest.mark.parametrize("request_id", [0, 1, -5, 2**63 - 1, "", "0", "abc", "ünï"])
def test_request_ids_parse_unchanged(request_id: str | int) -> None:
    message = jsonrpc.parse(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "ping"}))
    assert message == Request(request_id, "ping")
    assert type(message.id) is type(request_id)  # type: ignore[union-attr]


@pytest.mark.parametrize("request_id", [None, True, False, 1.0, 1.5, [1], {"a": 1}])
def test_bad_request_ids_are_refused(request_id: Any) -> None:
    error = parse_error(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "ping"}))
    assert error.code == INVALID_REQUEST
    assert error.request_id is None


@pytest.mark.parametrize("params", [1, "x", True, 1.5])
def test_params_must_be_an_object_or_array(params: Any) -> None:
    error = parse_error(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "m", "params": params}))
    assert error.code == INVALID_REQUEST
    assert error.request_id == 3
    error = parse_error(json.dumps({"jsonrpc": "2.0", "method": "m", "params": params}))
    assert error.code == INVALID_REQUEST


@pytest.mark.parametrize("params", [{}, {"a": [1]}, [], [1, "x"]])
def test_object_and_array_params_are_kept(params: Any) -> None:
    text = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "m", "params": params})
    assert jsonrpc.parse(text) == Request(3, "m", params)


def test_notification_has_no_id() -> None:
    message = jsonrpc.parse('{"jsonrpc": "2.0", "method": "notifications/x", "params": {"a": 1}}')
    assert message == Notification("notifications/x", {"a": 1})


# -- responses -----------------------------------------------------------------


@pytest.mark.parametrize("request_id", [0, 7, "s"])
def test_response_parses(request_id: str | int) -> None:
    message = jsonrpc.parse(json.dumps({"jsonrpc": "2.0", "id": request_id, "result": None}))
    assert message == Response(request_id, None)


def test_error_response_parses_with_data() -> None:
    text = '{"jsonrpc": "2.0", "id": "q", "error": {"code": -32001, "message": "slow", "data": [1]}}'
    message = jsonrpc.parse(text)
    assert type(message) is ErrorResponse
    assert message.id == "q"
    assert (message.error.code, message.error.message, message.error.data) == (-32001, "slow", [1])


def test_error_response_with_null_id_parses() -> None:
    message = jsonrpc.parse('{"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "p"}}')
    assert type(message) is ErrorResponse
    assert message.id is None
    assert message.error.code == -32700


def test_batch_keeps_an_error_in_place_of_each_bad_element() -> None:
    items = jsonrpc.parse(json.dumps([
        {"jsonrpc": "2.0", "id": 1, "method": "a"},
        5,
        {"jsonrpc": "2.0", "method": "n"},
        {"jsonrpc": "2.0", "id": 2, "method": 3},
        {"jsonrpc": "2.0", "id": 9, "result": 1},
    ]))
    assert isinstance(items, list)
    assert items[0] == Request(1, "a")
    assert isinstance(items[1], MessageError) and items[1].code == INVALID_REQUEST
    assert items[2] == Notification("n")
    assert isinstance(items[3], MessageError) and items[3].request_id == 2
    assert items[4] == Response(9, 1)


# -- encoding ----------------------------------------------------------------


@pytest.mark.parametrize("message", [
    jsonrpc.request(0, "tools/call", {"name": "x", "arguments": {"a": [1, 2.5, None]}}),
    jsonrpc.request("id-1", "ping"),
    jsonrpc.notification("notifications/progress", {"progressToken": "t", "progress": 1}),
    jsonrpc.notification("notifications/initialized"),
    jsonrpc.response(0, {"ok": True}),
    jsonrpc.response("z", None),
    jsonrpc.error_response(3, RPCError(-32602, "bad", {"field": "x"})),
    jsonrpc.error_response(None, RPCError(-32700, "Parse error")),
])
def test_encode_round_trips(message: dict[str, Any]) -> None:
    encoded = jsonrpc.encode(message)
    assert isinstance(encoded, bytes)
    assert json.loads(encoded) == message
    parsed = jsonrpc.parse(encoded)
    if "method" in message:
        assert parsed.method == message["method"]  # type: ignore[union-attr]
        assert parsed.params == message.get("params")  # type: ignore[union-attr]
    elif "result" in message:
        assert parsed == Response(message["id"], message["result"])
    else:
        assert type(parsed) is ErrorResponse
        assert parsed.id == message["id"]
        assert parsed.error.to_dict() == message["error"]


def test_optional_members_are_left_out() -> None:
    assert "params" not in jsonrpc.request(1, "ping")
    assert "params" not in jsonrpc.notification("n")
    assert "data" not in RPCError(1, "m").to_dict()


def test_encode_batch() -> None:
    batch = [jsonrpc.response(1, {}), jsonrpc.response(2, [])]
    assert json.loads(jsonrpc.encode(batch)) == batch


def test_encode_refuses_values_json_cannot_carry() -> None:
    with pytest.raises(TypeError):
        jsonrpc.encode(jsonrpc.response(1, {"x": object()}))


# -- through a session ---------------------------------------------------------


def server_session(sent: list[bytes]) -> Session:
    return Session(collect_into(sent), role=Role.SERVER, handler=MCPServer("fuzz"), clock=Clock())


def test_invalid_json_through_a_session_gets_a_null_id_reply() -> None:
    sent: list[bytes] = []
    server_session(sent).receive(b'{"jsonrpc": "2.0", "id": 4, "method": ')
    assert [json.loads(b) for b in sent] == [
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error: invalid JSON"}}
    ]


def test_invalid_request_through_a_session_gets_a_null_id_reply() -> None:
    sent: list[bytes] = []
    server_session(sent).receive('{"jsonrpc": "2.0", "id": null, "method": "ping"}')
    (reply,) = [json.loads(b) for b in sent]
    assert reply["id"] is None
    assert reply["error"]["code"] == INVALID_REQUEST


@pytest.mark.parametrize("request_id", [0, 42, "0", "req-ü"])
def test_ids_come_back_unchanged_through_a_session(request_id: str | int) -> None:
    sent: list[bytes] = []
    server_session(sent).receive(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "ping"}))
    assert [json.loads(b) for b in sent] == [{"jsonrpc": "2.0", "id": request_id, "result": {}}]


# -- property tests ----------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
ids = st.sampled_from([0, 1, 2, -1, "0", "a", "", "slow", None, True, 1.0, [1], {"a": 1}]) | json_values
methods = st.sampled_from([
    "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
    "resources/templates/list", "resources/subscribe", "prompts/list", "prompts/get",
    "completion/complete", "logging/setLevel", "notifications/initialized", "notifications/cancelled",
    "notifications/progress", "notifications/roots/list_changed", "nope", "", 7, None,
])
params = st.fixed_dictionaries({}, optional={
    "requestId": ids, "progressToken": ids, "progress": json_values,
    "protocolVersion": st.sampled_from(["2025-03-26", "2025-11-25", "x", 1]),
    "name": st.sampled_from(["echo", "slow", "hello", "missing", 3]), "arguments": json_values,
    "uri": st.sampled_from(["mem://a", "mem://b", 1]), "cursor": json_values, "level": json_values,
    "capabilities": json_values, "ref": json_values, "argument": json_values,
    "_meta": st.fixed_dictionaries({}, optional={"progressToken": ids}),
}) | json_values
messages = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0")},
    optional={
        "id": ids, "method": methods, "params": params, "result": json_values,
        "error": st.fixed_dictionaries({"code": st.integers(-33000, 0) | json_values,
                                        "message": st.text(max_size=5) | json_values}) | json_values,
    },
)
message_texts = st.one_of(
    st.text(max_size=30), st.binary(max_size=30),
    json_values.map(json.dumps),
    messages.map(json.dumps),
    messages.map(json.dumps),
    st.lists(messages | json_values, max_size=4).map(json.dumps),
)


@settings(max_examples=200, deadline=None)
@given(message_texts)
def test_parse_returns_a_message_or_raises_message_error(text: str | bytes) -> None:
    try:
        result = jsonrpc.parse(text)
    except MessageError as e:
        assert e.code in (PARSE_ERROR, INVALID_REQUEST)
        return
    items = result if isinstance(result, list) else [result]
    assert items
    for item in items:
        assert type(item) in (Request, Notification, Response, ErrorResponse, MessageError)


def assert_valid_jsonrpc_output(sent: list[bytes]) -> None:
    """Every text sent is one JSON-RPC message, or a non-empty batch of them."""
    for text in sent:
        value = orjson.loads(text)
        items = value if isinstance(value, list) else [value]
        assert items
        for item in items:
            assert isinstance(item, dict)
            assert item["jsonrpc"] == "2.0"
            if "method" in item:
                assert isinstance(item["method"], str)
                assert set(item) <= {"jsonrpc", "method", "params", "id"}
                continue
            assert item["id"] is None or type(item["id"]) in (str, int)
            assert ("result" in item) != ("error" in item)
            if "error" in item:
                assert type(item["error"]["code"]) is int
                assert isinstance(item["error"]["message"], str)


def fuzz_server() -> MCPServer:
    server = MCPServer("fuzz")

    @server.tool()
    def echo(text: str = "") -> str:
        return text

    @server.tool()
    def slow() -> Deferred[str]:
        return Deferred()

    @server.resource("mem://a")
    def a() -> str:
        return "a"

    @server.prompt()
    def hello(who: str) -> str:
        return f"hello {who}"

    return server


FUZZ_SERVER = fuzz_server()


@settings(max_examples=250, deadline=None)
@given(
    st.sampled_from(["2024-11-05", "2025-03-26", "2025-11-25", None]),
    st.lists(message_texts, min_size=1, max_size=4),
)
def test_server_session_answers_any_text_with_valid_jsonrpc(version: str | None, texts: list[Any]) -> None:
    """With a request of each direction in flight, no text makes ``receive`` raise."""
    sent: list[bytes] = []
    clock = Clock()
    session = Session(collect_into(sent), role=Role.SERVER, handler=FUZZ_SERVER, clock=clock,
                      handler_timeout=1)
    if version is not None:
        session.receive(json.dumps(jsonrpc.request("init", "initialize", {"protocolVersion": version})))
        session.receive(json.dumps(jsonrpc.notification("notifications/initialized")))
        session.receive(json.dumps(jsonrpc.request("slow", "tools/call", {"name": "slow"})))
        session.request("roots/list", on_progress=lambda *_: None).addErrback(lambda _: None)
    for text in texts:
        session.receive(text)
    clock.advance(2)
    session.close()
    assert_valid_jsonrpc_output(sent)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["notifications/cancelled", "notifications/progress"]), ids, json_values)
def test_cancel_and_progress_with_any_id_raise_nothing(method: str, value: Any, progress: Any) -> None:
    """Ids in notifications are looked up in tables; no value may break the lookup,
    and only the integer 1 itself (not ``true`` or ``1.0``) names request 1."""
    assume(not (type(value) is int and value == 1))
    sent: list[bytes] = []
    session = Session(collect_into(sent), role=Role.SERVER, handler=FUZZ_SERVER, clock=Clock())
    session.receive(json.dumps(jsonrpc.request("init", "initialize", {"protocolVersion": "2025-11-25"})))
    session.receive(json.dumps(jsonrpc.notification("notifications/initialized")))
    session.receive(json.dumps(jsonrpc.request(1, "tools/call", {"name": "slow"})))
    waiting = session.request("roots/list", on_progress=lambda *_: None)
    session.receive(json.dumps(jsonrpc.notification(
        method, {"requestId": value, "progressToken": value, "progress": progress}
    )))
    assert session.in_flight == 1 and session.waiting == 1
    session.close()
    waiting.addErrback(lambda _: None)
    assert_valid_jsonrpc_output(sent)
