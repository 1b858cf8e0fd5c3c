"""JSON-RPC 2.0 envelopes: parse one JSON text into a message, encode messages.

This module knows nothing about MCP, Twisted or sockets. Parsing is strict
(the ``jsonrpc`` member, id types, params shape) because a peer that sends a
malformed envelope deserves a precise error rather than a guess.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard, final

import orjson

__all__ = [
    "BRIEF_LENGTH",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "BatchItem",
    "ErrorResponse",
    "LocalProtocolError",
    "MCPError",
    "Message",
    "MessageError",
    "Notification",
    "RPCError",
    "RemoteError",
    "Request",
    "RequestId",
    "Response",
    "brief",
    "clip",
    "decode",
    "encode",
    "error_response",
    "is_request_id",
    "notification",
    "parse",
    "parse_error",
    "request",
    "response",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

RequestId = str | int

# How many characters of a peer's value an error message or a log line quotes.
BRIEF_LENGTH = 100


def _brief_repr() -> reprlib.Repr:
    # Attributes rather than constructor arguments: those need Python 3.12.
    shortener = reprlib.Repr()
    shortener.maxlevel = 3
    shortener.maxstring = shortener.maxother = 60
    shortener.maxlist = shortener.maxtuple = shortener.maxdict = shortener.maxset = 4
    return shortener


_BRIEF = _brief_repr()


def clip(text: str, length: int = BRIEF_LENGTH) -> str:
    """``text`` cut to at most ``length`` characters, ending in "..." when cut."""
    return text if len(text) <= length else text[: length - 3] + "..."


def brief(value: object, length: int = BRIEF_LENGTH) -> str:
    """A short ``repr`` of a value that came from the peer, for errors and logs.

    A peer controls size and nesting: ``repr()`` of a 1 MiB string is 1 MiB of
    log, and of a list nested 990 deep a ``RecursionError``. ``reprlib`` looks
    only a few levels and items deep, so this costs the same for any value.
    """
    return clip(_BRIEF.repr(value), length)


class MCPError(Exception):
    """Base of every error this package raises about an MCP conversation.

    Its kinds say whose side the problem is on, as h11's errors do:
    ``RPCError`` is an error answer (raise it to answer with one),
    ``RemoteError`` one the peer sent us, ``LocalProtocolError`` a check of
    this side's that failed (and that nobody put on the wire).
    """


class RPCError(MCPError):
    """An error to answer a request with; raise it from any handler."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message, data)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


class RemoteError(RPCError):
    """An error answer the peer sent to one of our requests."""


class LocalProtocolError(MCPError):
    """This side's own protocol check failed: an event in the wrong state,
    or a peer's answer this side cannot accept (e.g. an unsupported revision).
    """


@final
class MessageError(RPCError):
    """A text that is not a valid JSON-RPC message.

    ``request_id`` is the id of the offending request when it could be read,
    so that the error response can still be correlated. ``answers``: the text
    is a malformed response to our request ``request_id``; that request
    fails, and nothing is sent back (a response gets no response).
    """

    def __init__(
        self, code: int, message: str, request_id: RequestId | None = None, *, answers: bool = False
    ) -> None:
        super().__init__(code, message)
        self.request_id = request_id
        self.answers = answers


# The message classes are plain (not frozen) slotted dataclasses: a frozen
# one's __init__ goes through object.__setattr__ for each field, which made
# building a Request about 0.4 us (a tenth of the MCP layer's own work on a
# call). They are values all the same: nothing here changes one once made.
@final
@dataclass(slots=True)
class Request:
    id: RequestId
    method: str
    params: Any = None


@final
@dataclass(slots=True)
class Notification:
    method: str
    params: Any = None


@final
@dataclass(slots=True)
class Response:
    id: RequestId
    result: Any


@dataclass(slots=True)
class ErrorResponse:
    id: RequestId | None
    error: RemoteError


Message = Request | Notification | Response | ErrorResponse
# A batch element is either a message or the error its element deserves.
BatchItem = Message | MessageError


def is_request_id(value: object) -> TypeGuard[RequestId]:
    """Whether ``value`` may be a request id (also for ids quoted in notifications)."""
    # bool is an int subclass but not a valid id; floats are not allowed by MCP.
    return (type(value) is int) or isinstance(value, str)


def _to_message(obj: object) -> Message:
    if type(obj) is dict:
        # The common case first, a well-formed request, in as few steps as the
        # checks below take for it; anything else goes the long way.
        method, raw_id, params = obj.get("method"), obj.get("id"), obj.get("params")
        if (type(method) is str and (type(raw_id) is int or type(raw_id) is str)
                and (params is None or type(params) is dict or type(params) is list)
                and obj.get("jsonrpc") == "2.0"):
            return Request(raw_id, method, params)
    if not isinstance(obj, dict):
        raise MessageError(INVALID_REQUEST, "Invalid Request: expected a JSON object")
    raw_id = obj.get("id")
    known_id = raw_id if is_request_id(raw_id) else None
    if obj.get("jsonrpc") != "2.0":
        raise MessageError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', known_id)
    method = obj.get("method")
    if method is not None:
        if not isinstance(method, str):
            raise MessageError(INVALID_REQUEST, 'Invalid Request: "method" must be a string', known_id)
        params = obj.get("params")
        if params is not None and not isinstance(params, (dict, list)):
            raise MessageError(
                INVALID_REQUEST, 'Invalid Request: "params" must be an object or array', known_id
            )
        if "id" not in obj:
            return Notification(method, params)
        if known_id is None:
            raise MessageError(
                INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer'
            )
        return Request(known_id, method, params)
    if "result" in obj:
        if known_id is None:
            raise MessageError(INVALID_REQUEST, "Invalid Response: bad id")
        if "error" in obj:
            raise MessageError(INVALID_REQUEST, "Invalid Response: both result and error", known_id,
                               answers=True)
        return Response(known_id, obj["result"])
    error = obj.get("error")
    if isinstance(error, dict) and "id" in obj and (known_id is not None or raw_id is None):
        code, message = error.get("code"), error.get("message")
        if type(code) is int and isinstance(message, str):
            return ErrorResponse(known_id, RemoteError(code, message, error.get("data")))
    if "error" in obj and known_id is not None:
        raise MessageError(INVALID_REQUEST, "Invalid Response: the error is not an object with an integer "
                           "code and a message", known_id, answers=True)
    raise MessageError(INVALID_REQUEST, "Invalid Request: not a request, notification or response")


def parse(text: bytes | str) -> Message | list[BatchItem]:
    """Parse one JSON text into a message, or a batch into a list.

    Raises ``MessageError`` (-32700 or -32600) for text that is not a message;
    a batch is returned with a ``MessageError`` in place of each bad element,
    because each of those still deserves its own error response.
    """
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise parse_error() from None
    return decode(obj)


def parse_error() -> MessageError:
    """The error for a text that is not JSON at all."""
    return MessageError(PARSE_ERROR, "Parse error: invalid JSON")


def decode(obj: object) -> Message | list[BatchItem]:
    """``parse`` of a text already loaded as JSON."""
    if isinstance(obj, list):
        if not obj:
            raise MessageError(INVALID_REQUEST, "Invalid Request: empty batch")
        items: list[BatchItem] = []
        for element in obj:
            try:
                items.append(_to_message(element))
            except MessageError as e:
                items.append(e)
        return items
    return _to_message(obj)


def request(request_id: RequestId, method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def notification(method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def response(request_id: RequestId, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_response(request_id: RequestId | None, error: RPCError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_dict()}


# Encode a message (or a batch) as UTF-8 JSON text. Raises ``TypeError`` (its
# subclass ``orjson.JSONEncodeError``) when the message holds a value JSON
# cannot carry. orjson itself, with no wrapper: it runs once per message.
encode: Callable[[Any], bytes] = orjson.dumps
