"""Streamable HTTP for 2026-07-28 requests: one POST, one request, no session.

``MCPHTTPResource`` hands a POST here when ``eras.classify`` says it is a
2026-07-28 request. The rules of that revision:

- the routing headers must match the body: ``Mcp-Method`` the method,
  ``Mcp-Name`` the tool, prompt or resource, and ``Mcp-Param-{Name}`` each
  argument whose schema carries ``x-mcp-header`` (``=?base64?...?=`` for
  values that are not safe in a header); otherwise ``-32020`` and HTTP 400;
- the answer is JSON, unless the handler sends something first (progress, a
  log message) or the server always streams: then an SSE stream with no event
  ids, since 2026-07-28 has no resumption;
- a client that goes away cancels the handler;
- errors travel with the status of ``eras.ERROR_HTTP_STATUS`` (404 for an
  unknown method, 400 for bad input, 200 otherwise).

Each request gets a session of its own from the host (counted, limited and
drained like any other) that ends with its answer.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Any

from twisted.internet.task import LoopingCall
from twisted.web import server

from mcp_twisted import jsonrpc
from mcp_twisted.eras import HEADER_MISMATCH, http_status
from mcp_twisted.jsonrpc import Request, RequestId, RPCError
from mcp_twisted.protocol import Method

if TYPE_CHECKING:
    from mcp_twisted.http import MCPHTTPResource

__all__ = ["check_routing_headers", "serve_stateless"]

# Requests whose Mcp-Name header names their target, and where the body has it.
_NAMED = {Method.TOOLS_CALL: "name", Method.PROMPTS_GET: "name", Method.RESOURCES_READ: "uri"}
_BASE64_VALUE = re.compile(r"=\?base64\?(.*)\?=\Z", re.DOTALL)
_ERROR_START = b',"error":{"code":'


def _mismatch(message: str) -> RPCError:
    return RPCError(HEADER_MISMATCH, message)


def _header_value(raw: str) -> str:
    """A header value as sent, or decoded from its ``=?base64?...?=`` form."""
    encoded = _BASE64_VALUE.match(raw)
    if encoded is None:
        return raw
    try:
        return base64.b64decode(encoded.group(1), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise _mismatch("A Mcp-Param header is not valid =?base64?...?= text") from None


def check_routing_headers(request: server.Request, message: Request, header_params: dict[str, str]) -> None:
    """Raise ``-32020`` unless the routing headers say what the body says.

    ``header_params`` maps argument names to their header names (the tool's
    ``x-mcp-header`` properties).
    """
    method = request.getHeader("mcp-method")
    if method != message.method:
        raise _mismatch("Mcp-Method header is missing or does not match the request's method")
    params = message.params if isinstance(message.params, dict) else {}
    field = _NAMED.get(message.method)
    if field is not None and request.getHeader("mcp-name") != params.get(field):
        raise _mismatch(f"Mcp-Name header is missing or does not match params.{field}")
    arguments = params.get("arguments")
    arguments = arguments if isinstance(arguments, dict) else {}
    for argument, header in header_params.items():
        raw = request.getHeader(f"mcp-param-{header}")
        value = arguments.get(argument)
        if raw is None and value is None:
            continue
        if raw is None or value is None or not _same(_header_value(raw), value):
            raise _mismatch(f"Mcp-Param-{header} header is missing or does not match {argument!r}")


def _same(header: str, value: object) -> bool:
    if isinstance(value, bool):
        return header == ("true" if value else "false")
    if isinstance(value, int):
        try:
            return int(header) == value
        except ValueError:
            return False
    return header == value


class _Exchange:
    """One stateless POST: where the session's messages for it go."""

    def __init__(self, resource: MCPHTTPResource, request: server.Request, request_id: RequestId) -> None:
        self.resource = resource
        self.request = request
        self.request_id = request_id
        self.streaming = False
        self.finished = False
        self.sync_body: bytes | None = None
        self._keepalive: LoopingCall | None = None

    def route(self, data: bytes, related: RequestId | None, answer: bool) -> None:
        if self.finished or related != self.request_id:
            return  # nothing else can reach this client: no session, no stream of its own
        # An error answer is always JSON, so that it travels with its status.
        if answer and not self.streaming and (
                not self.resource.settings.always_stream or data.find(_ERROR_START, 0, 200) >= 0):
            self._answer_json(data)
            return
        if not self.streaming:
            self._start_stream()
        self.request.write(b"data: " + data + b"\n\n")
        if answer:
            self._end()

    def _answer_json(self, data: bytes) -> None:
        self.finished = True
        request = self.request
        start = data.find(_ERROR_START, 0, 200)
        if start >= 0:
            code = int(re.match(rb"-?\d+", data[start + len(_ERROR_START):]).group())  # type: ignore[union-attr]
            request.setResponseCode(http_status(code))
        request.setHeader("Content-Type", "application/json")
        if getattr(request, "_rendering", False):
            self.sync_body = data
        elif not request._disconnected:
            request.setHeader("Content-Length", str(len(data)))
            request.write(data)
            request.finish()

    def _start_stream(self) -> None:
        self.streaming = True
        request = self.request
        request.setHeader("Content-Type", "text/event-stream")
        request.setHeader("Cache-Control", "no-cache, no-transform")
        request.setHeader("X-Accel-Buffering", "no")
        interval = self.resource.settings.keepalive_interval
        if interval:
            self._keepalive = LoopingCall(request.write, b": keep-alive\n\n")
            self._keepalive.clock = self.resource.host.clock
            self._keepalive.start(interval, now=False)

    def _end(self) -> None:
        self.finished = True
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if not self.request._disconnected:
            self.request.finish()


def serve_stateless(
    resource: MCPHTTPResource, request: server.Request, identity: Any, message: Request, peer: str,
    header_params: dict[str, str],
) -> bytes | int:
    """Answer one 2026-07-28 POST (``message`` was classified already)."""
    try:
        check_routing_headers(request, message, header_params)
    except RPCError as error:
        request.setResponseCode(http_status(error.code))
        request.setHeader("Content-Type", "application/json")
        return jsonrpc.encode(jsonrpc.error_response(message.id, error))
    exchange = _Exchange(resource, request, message.id)
    host = resource.host
    session = host.open_session(exchange.route, transport="http", identity=identity, peer=peer)

    def client_gone(_: object) -> None:
        if not exchange.finished:
            exchange.finished = True  # on 2026-07-28 closing the stream cancels the request
        session.close("HTTP client went away")
        host.session_closed(session)
        if exchange._keepalive is not None and exchange._keepalive.running:
            exchange._keepalive.stop()

    request.notifyFinish().addBoth(client_gone)
    session.dispatch(message)
    if exchange.sync_body is not None:
        return exchange.sync_body
    return server.NOT_DONE_YET
