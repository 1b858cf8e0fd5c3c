"""Which protocol era a request belongs to: the handshake era or 2026-07-28.

The 2026-07-28 revision has no ``initialize``: every request carries its
protocol version and the client's capabilities in ``params._meta``. One
server serves both, so each request is classified first, by one pure
function (``classify``), from the message and, over HTTP, the
``MCP-Protocol-Version`` header. WebSocket and stdio connections lock the
era with their first request (``ConnectionEra``).

Plain data and pure functions, like ``protocol.py``; nothing here does I/O.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mcp_twisted.jsonrpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    Request,
    RPCError,
    brief,
    clip,
)
from mcp_twisted.protocol import LOG_LEVEL_RANK, SUPPORTED_PROTOCOL_VERSIONS, Method

__all__ = [
    "ERROR_HTTP_STATUS",
    "HEADER_MISMATCH",
    "META_CLIENT_CAPABILITIES",
    "META_CLIENT_INFO",
    "META_LOG_LEVEL",
    "META_PROTOCOL_VERSION",
    "META_SERVER_INFO",
    "META_SUBSCRIPTION_ID",
    "MISSING_CLIENT_CAPABILITY",
    "MODERN_VERSIONS",
    "REMOVED_IN_STATELESS",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "ConnectionEra",
    "Era",
    "InvalidToolHeaders",
    "Modern",
    "classify",
    "encode_header_value",
    "http_status",
    "request_headers",
    "tool_param_headers",
]

# Revisions of the stateless era this server speaks, oldest first.
MODERN_VERSIONS: tuple[str, ...] = ("2026-07-28",)

# Handshake-era methods that 2026-07-28 requests may not call (-32601).
REMOVED_IN_STATELESS = frozenset({
    Method.INITIALIZE, Method.PING, Method.LOGGING_SET_LEVEL, Method.RESOURCES_SUBSCRIBE,
    Method.RESOURCES_UNSUBSCRIBE,
})

META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"

# 2026-07-28 error codes (the -32020..-32099 range is MCP's).
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022

# The HTTP status a 2026-07-28 error answer travels with; others are 200.
ERROR_HTTP_STATUS: Mapping[int, int] = {
    -32700: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_CLIENT_CAPABILITY: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}


def http_status(code: int) -> int:
    """The HTTP status for a 2026-07-28 error answer with this code."""
    return ERROR_HTTP_STATUS.get(code, 200)


class Era(enum.Enum):
    HANDSHAKE = "handshake"  # initialize, then a session (2024-11-05 .. 2025-11-25)
    STATELESS = "stateless"  # every request describes itself (2026-07-28)


# Module names: an Enum member looked up through its class costs a call on the hot path.
_HANDSHAKE, _STATELESS = Era.HANDSHAKE, Era.STATELESS


@dataclass(frozen=True)
class Modern:
    """What a 2026-07-28 request says about itself."""

    version: str
    capabilities: dict[str, Any]
    client_info: dict[str, Any] = field(default_factory=dict)
    log_level: str | None = None  # no log messages at all without one


def unsupported_version(requested: object) -> RPCError:
    # data.requested echoes the peer's value: a string clipped, a JSON scalar
    # as it is, anything else (a list nested past what JSON encoding allows)
    # as a short text, so the answer is small and can always be sent.
    if isinstance(requested, str):
        echoed: object = clip(requested)
    elif requested is None or isinstance(requested, (bool, int, float)):
        echoed = requested
    else:
        echoed = brief(requested)
    return RPCError(UNSUPPORTED_PROTOCOL_VERSION, f"Unsupported protocol version {brief(requested)}",
                    {"supported": list(MODERN_VERSIONS), "requested": echoed})


def classify(message: Request, header_version: str | None = None) -> Modern | None:
    """The era of one request: ``Modern`` for a 2026-07-28 request, None for
    handshake-era traffic (``initialize`` and what follows it).

    ``header_version`` is HTTP's ``MCP-Protocol-Version``. Raises ``RPCError``:
    ``-32602`` for a partial envelope, ``-32022`` (with ``supported``) for a
    revision this server does not speak, ``-32020`` when the header and the
    body disagree.
    """
    # The envelope decides, also for initialize: one without it is a handshake
    # (even naming 2026-07-28: it gets the newest handshake revision), one
    # with it is a 2026-07-28 request for a method that no longer exists.
    params = message.params if isinstance(message.params, dict) else {}
    meta = params.get("_meta")
    meta = meta if isinstance(meta, dict) else {}
    header_modern = header_version is not None and header_version not in SUPPORTED_PROTOCOL_VERSIONS
    if META_PROTOCOL_VERSION not in meta:
        if META_CLIENT_CAPABILITIES in meta or header_modern:
            raise RPCError(INVALID_PARAMS, f"params._meta needs {META_PROTOCOL_VERSION!r} "
                           f"and {META_CLIENT_CAPABILITIES!r}")
        return None
    version = meta[META_PROTOCOL_VERSION]
    if header_version is not None and header_version != version:
        raise RPCError(HEADER_MISMATCH, "MCP-Protocol-Version header does not match params._meta "
                       f"({brief(header_version)} and {brief(version)})")
    if version not in MODERN_VERSIONS:
        raise unsupported_version(version)
    capabilities = meta.get(META_CLIENT_CAPABILITIES)
    if not isinstance(capabilities, dict):
        raise RPCError(INVALID_PARAMS, f"params._meta needs {META_CLIENT_CAPABILITIES!r} (an object)")
    client_info = meta.get(META_CLIENT_INFO, {})
    if not isinstance(client_info, dict):
        raise RPCError(INVALID_PARAMS, f"params._meta {META_CLIENT_INFO!r} must be an object")
    log_level = meta.get(META_LOG_LEVEL)
    if log_level is not None and (not isinstance(log_level, str) or log_level not in LOG_LEVEL_RANK):
        raise RPCError(INVALID_PARAMS, f"Invalid log level {brief(log_level)}")
    return Modern(version, capabilities, client_info, log_level)


class ConnectionEra:
    """A connection that carries one era (WebSocket, stdio): its first
    request decides, as the official SDK's duplex loop does.

    ``check`` classifies each request and refuses one of the other era:
    ``initialize`` on a stateless connection gets ``-32022`` (with the
    revisions that are spoken), an enveloped request on a handshake one
    ``-32600``.
    """

    def __init__(self) -> None:
        self.era: Era | None = None

    def check(self, message: Request) -> Modern | None:
        params = message.params
        if self.era is _HANDSHAKE and type(params) is dict and "_meta" not in params:
            return None  # the common case, as classify would find it, in one step
        modern = classify(message)
        era = _STATELESS if modern is not None else _HANDSHAKE
        if self.era is None:
            self.era = era
        elif era is not self.era:
            if self.era is _STATELESS:
                raise unsupported_version(_requested(message))
            raise RPCError(INVALID_REQUEST, "This connection is in the handshake era: "
                           "2026-07-28 requests need a connection of their own")
        return modern


def _requested(message: Request) -> object:
    params = message.params if isinstance(message.params, dict) else {}
    return params.get("protocolVersion")



# -- the HTTP headers a 2026-07-28 client sends (SEP-2243) ------------------

# An HTTP field name (RFC 9110 token): what an ``x-mcp-header`` may be.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The types whose values can be mirrored into a header.
_HEADER_TYPES = frozenset({"string", "integer", "boolean"})
_ENCODED = re.compile(r"=\?base64\?.*\?=", re.DOTALL)
# Which parameter names the request: Mcp-Name carries it.
NAME_PARAM: Mapping[str, str] = {
    Method.TOOLS_CALL: "name", Method.PROMPTS_GET: "name", Method.RESOURCES_READ: "uri",
}


class InvalidToolHeaders(ValueError):
    """A tool's ``x-mcp-header`` annotations break SEP-2243's rules: clients
    must leave such a tool out."""


def tool_param_headers(input_schema: object) -> dict[str, str]:
    """Argument name -> header name (without ``Mcp-Param-``) for the
    top-level properties of a tool's input schema marked ``x-mcp-header``.

    Raises ``InvalidToolHeaders`` for an empty name, one that is not an HTTP
    token, a non-primitive property, or a name used twice (case-insensitively).
    """
    properties = input_schema.get("properties") if isinstance(input_schema, dict) else None
    headers: dict[str, str] = {}
    if not isinstance(properties, dict):
        return headers
    seen: set[str] = set()
    for argument, schema in properties.items():
        if not isinstance(schema, dict) or "x-mcp-header" not in schema:
            continue
        name = schema["x-mcp-header"]
        if not isinstance(name, str) or not name:
            raise InvalidToolHeaders(f"{argument!r}: x-mcp-header must be a non-empty string")
        if not _TOKEN.fullmatch(name):
            raise InvalidToolHeaders(f"{argument!r}: x-mcp-header {brief(name)} is not an HTTP header name")
        if schema.get("type") not in _HEADER_TYPES:
            raise InvalidToolHeaders(f"{argument!r}: x-mcp-header needs a string, integer or boolean type")
        if name.lower() in seen:
            raise InvalidToolHeaders(f"x-mcp-header {name!r} is used twice")
        seen.add(name.lower())
        headers[argument] = name
    return headers


def encode_header_value(value: object) -> str | None:
    """A value as an HTTP header carries it; None for a value that is not sent
    (null or absent, an object or array).

    Strings that a header cannot carry as they are (non-ASCII, control
    characters, leading or trailing whitespace, or text that looks encoded)
    travel as ``=?base64?...?=``.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        return None
    plain = all(" " <= ch <= "~" for ch in value) and value == value.strip() and not _ENCODED.fullmatch(value)
    if plain:
        return value
    return "=?base64?" + base64.b64encode(value.encode("utf-8")).decode("ascii") + "?="


def request_headers(
    method: str, params: object, param_headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``Mcp-Method``, ``Mcp-Name`` and ``Mcp-Param-*`` for one message.

    ``param_headers`` is ``tool_param_headers`` of the tool being called.
    """
    headers = {"Mcp-Method": method}
    params = params if isinstance(params, dict) else {}
    name_param = NAME_PARAM.get(method)
    if name_param is not None:
        name = encode_header_value(params.get(name_param))
        if name is not None:
            headers["Mcp-Name"] = name
    arguments = params.get("arguments")
    if param_headers and isinstance(arguments, dict):
        for argument, header in param_headers.items():
            value = encode_header_value(arguments.get(argument))
            if value is not None:
                headers[f"Mcp-Param-{header}"] = value
    return headers
