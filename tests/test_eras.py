"""The era of a request, decided by one pure function, and the era a
connection locks with its first request."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_twisted.eras import (
    HEADER_MISMATCH,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_PROTOCOL_VERSION,
    UNSUPPORTED_PROTOCOL_VERSION,
    ConnectionEra,
    Era,
    Modern,
    classify,
    http_status,
)
from mcp_twisted.jsonrpc import INVALID_PARAMS, INVALID_REQUEST, Request, RPCError


def request(method: str = "tools/list", meta: dict[str, Any] | None = None, **params: Any) -> Request:
    if meta is not None:
        params["_meta"] = meta
    return Request(1, method, params)


MODERN_META = {META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: {"elicitation": {}}}


def error_of(message: Request, header: str | None = None) -> RPCError:
    with pytest.raises(RPCError) as raised:
        classify(message, header)
    return raised.value


def test_a_full_envelope_is_modern_with_what_it_says():
    meta = {**MODERN_META, META_CLIENT_INFO: {"name": "c", "version": "1"}, META_LOG_LEVEL: "info"}
    assert classify(request(meta=meta), "2026-07-28") == Modern(
        "2026-07-28", {"elicitation": {}}, {"name": "c", "version": "1"}, "info")


@pytest.mark.parametrize("message", [
    request("initialize", protocolVersion="2025-11-25"),
    request("initialize", protocolVersion="2026-07-28"),  # a handshake all the same
    request("tools/list"),
    request("tools/list", meta={"progressToken": 3}),
])
def test_handshake_traffic_is_not_modern(message):
    assert classify(message) is None
    assert classify(message, "2025-03-26") is None


@pytest.mark.parametrize(("meta", "header", "code"), [
    ({META_CLIENT_CAPABILITIES: {}}, None, INVALID_PARAMS),  # partial envelope
    ({META_PROTOCOL_VERSION: "2026-07-28"}, None, INVALID_PARAMS),  # no capabilities
    ({META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: []}, None, INVALID_PARAMS),
    ({**MODERN_META, META_CLIENT_INFO: "me"}, None, INVALID_PARAMS),
    ({**MODERN_META, META_LOG_LEVEL: "loud"}, None, INVALID_PARAMS),
    ({**MODERN_META, META_LOG_LEVEL: [[[]]]}, None, INVALID_PARAMS),
    ({}, "2026-07-28", INVALID_PARAMS),  # the header says modern, the body says nothing
    ({META_PROTOCOL_VERSION: "2099-01-01", META_CLIENT_CAPABILITIES: {}}, None, UNSUPPORTED_PROTOCOL_VERSION),
    (MODERN_META, "2025-11-25", HEADER_MISMATCH),
    ({META_PROTOCOL_VERSION: "2099-01-01", META_CLIENT_CAPABILITIES: {}}, "2026-07-28", HEADER_MISMATCH),
])
def test_bad_envelopes_are_refused_with_the_right_code(meta, header, code):
    error = error_of(request(meta=meta), header)
    assert error.code == code and len(error.message) < 300
    assert http_status(error.code) == 400


def test_an_unsupported_version_names_the_supported_ones():
    error = error_of(request(meta={META_PROTOCOL_VERSION: "2099-01-01", META_CLIENT_CAPABILITIES: {}}))
    assert error.data == {"supported": ["2026-07-28"], "requested": "2099-01-01"}


def test_status_table():
    assert http_status(-32601) == 404
    assert http_status(-32700) == http_status(-32600) == 400
    assert http_status(-32603) == 200


def test_a_connection_locks_the_era_of_its_first_request():
    modern = ConnectionEra()
    assert modern.check(request(meta=MODERN_META)) is not None and modern.era is Era.STATELESS
    with pytest.raises(RPCError) as raised:
        modern.check(request("initialize", protocolVersion="2025-11-25"))
    assert raised.value.code == UNSUPPORTED_PROTOCOL_VERSION
    assert raised.value.data["supported"] == ["2026-07-28"]

    legacy = ConnectionEra()
    assert legacy.check(request("initialize", protocolVersion="2025-11-25")) is None
    assert legacy.era is Era.HANDSHAKE
    with pytest.raises(RPCError) as raised:
        legacy.check(request(meta=MODERN_META))
    assert raised.value.code == INVALID_REQUEST


@pytest.mark.parametrize("meta", [
    None, {"progressToken": 3}, {"progressToken": "a", "custom/key": [1]}, [], "x", 7,
    {META_CLIENT_CAPABILITIES: {}}, {META_PROTOCOL_VERSION: "2026-07-28"}, MODERN_META,
])
def test_a_handshake_connection_answers_each_request_as_classify_decides(meta):
    # Its one-step check for the common case (no _meta) must agree with
    # classify: handshake traffic passes (a progress token too), any sign of
    # an envelope is refused, with classify's own code where it has one.
    connection = ConnectionEra()
    connection.check(request("initialize", protocolVersion="2025-11-25"))
    message = request("tools/call", name="t") if meta is None else request("tools/call", name="t", meta=meta)
    try:
        expected: int | None = None if classify(message) is None else INVALID_REQUEST
    except RPCError as refused:
        expected = refused.code
    if expected is None:
        assert connection.check(message) is None
    else:
        with pytest.raises(RPCError) as raised:
            connection.check(message)
        assert raised.value.code == expected
    assert connection.era is Era.HANDSHAKE
