"""MCP protocol facts: revisions, negotiation, method names, MCP error codes.

Everything here is plain data and pure functions, shared by the server and
client roles and by every transport.
"""

from __future__ import annotations

from typing import Any

from mcp_twisted.jsonrpc import INVALID_PARAMS, LocalProtocolError, RPCError, brief

__all__ = [
    "BATCHING_VERSIONS",
    "KNOWN_METHODS",
    "LATEST_PROTOCOL_VERSION",
    "LIST_CHANGED_KIND",
    "LOG_LEVELS",
    "LOG_LEVEL_RANK",
    "REQUEST_TIMEOUT",
    "RESOURCE_NOT_FOUND",
    "SERVER_BUSY",
    "SERVER_SHUTTING_DOWN",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "URL_ELICITATION_REQUIRED",
    "CapabilityError",
    "Method",
    "Notify",
    "check_log_level",
    "invalid_params",
    "negotiate_version",
    "version_at_least",
]

# Handshake-era revisions, oldest first. The newest is what we answer with
# when a client asks for a revision we do not speak (including 2026-07-28,
# whose stateless rules are not served yet; a client asking for it through
# ``initialize`` is by definition speaking the handshake era).
SUPPORTED_PROTOCOL_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_PROTOCOL_VERSION = SUPPORTED_PROTOCOL_VERSIONS[-1]

# Only 2025-03-26 has JSON-RPC batching (added then, removed in 2025-06-18).
BATCHING_VERSIONS = frozenset({"2025-03-26"})

# MCP error codes beyond JSON-RPC's own.
RESOURCE_NOT_FOUND = -32002
URL_ELICITATION_REQUIRED = -32042
# Implementation-defined server errors (JSON-RPC reserves -32000..-32099 for them).
SERVER_BUSY = -32000
REQUEST_TIMEOUT = -32001
SERVER_SHUTTING_DOWN = -32003

# RFC 5424 severities, least severe first.
LOG_LEVELS: tuple[str, ...] = (
    "debug", "info", "notice", "warning", "error", "critical", "alert", "emergency",
)
LOG_LEVEL_RANK: dict[str, int] = {level: rank for rank, level in enumerate(LOG_LEVELS)}


class Method:
    """Method names, so a typo is an AttributeError instead of a silent miss."""

    INITIALIZE = "initialize"
    PING = "ping"
    TOOLS_LIST = "tools/list"
    TOOLS_CALL = "tools/call"
    RESOURCES_LIST = "resources/list"
    RESOURCES_TEMPLATES_LIST = "resources/templates/list"
    RESOURCES_READ = "resources/read"
    RESOURCES_SUBSCRIBE = "resources/subscribe"
    RESOURCES_UNSUBSCRIBE = "resources/unsubscribe"
    PROMPTS_LIST = "prompts/list"
    PROMPTS_GET = "prompts/get"
    COMPLETION_COMPLETE = "completion/complete"
    LOGGING_SET_LEVEL = "logging/setLevel"
    SAMPLING_CREATE_MESSAGE = "sampling/createMessage"
    ROOTS_LIST = "roots/list"
    ELICITATION_CREATE = "elicitation/create"
    # 2026-07-28
    SERVER_DISCOVER = "server/discover"
    SUBSCRIPTIONS_LISTEN = "subscriptions/listen"


KNOWN_METHODS = frozenset(value for name, value in vars(Method).items() if name.isupper())


class Notify:
    """Notification method names."""

    INITIALIZED = "notifications/initialized"
    CANCELLED = "notifications/cancelled"
    PROGRESS = "notifications/progress"
    MESSAGE = "notifications/message"
    RESOURCES_UPDATED = "notifications/resources/updated"
    RESOURCES_LIST_CHANGED = "notifications/resources/list_changed"
    TOOLS_LIST_CHANGED = "notifications/tools/list_changed"
    PROMPTS_LIST_CHANGED = "notifications/prompts/list_changed"
    ROOTS_LIST_CHANGED = "notifications/roots/list_changed"
    ELICITATION_COMPLETE = "notifications/elicitation/complete"
    SUBSCRIPTIONS_ACKNOWLEDGED = "notifications/subscriptions/acknowledged"  # 2026-07-28


# Which list each list_changed notification is about (also the capability name).
LIST_CHANGED_KIND: dict[str, str] = {
    Notify.TOOLS_LIST_CHANGED: "tools",
    Notify.RESOURCES_LIST_CHANGED: "resources",
    Notify.PROMPTS_LIST_CHANGED: "prompts",
}


def negotiate_version(requested: object) -> str:
    """The revision a server answers ``initialize`` with.

    Echo the client's revision when we speak it; otherwise offer our newest
    and let the client decide whether it can use it.
    """
    if requested in SUPPORTED_PROTOCOL_VERSIONS:
        return requested
    return LATEST_PROTOCOL_VERSION


def version_at_least(version: str, minimum: str) -> bool:
    """Revisions are ISO dates, so string order is time order."""
    return version >= minimum


def invalid_params(message: str, data: Any = None) -> RPCError:
    return RPCError(INVALID_PARAMS, message, data)


def check_log_level(level: object) -> str:
    if not isinstance(level, str) or level not in LOG_LEVEL_RANK:
        raise invalid_params(f"Invalid log level {brief(level)}; expected one of {', '.join(LOG_LEVELS)}")
    return level


class CapabilityError(LocalProtocolError):
    """The peer did not declare the capability a request needs."""

    def __init__(self, capability: str, detail: str = "") -> None:
        text = f"The client did not declare the {capability!r} capability"
        super().__init__(f"{text}: {detail}" if detail else text)
        self.capability = capability
