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
from typing import TYPE_CHECKING, Any, cast

import orjson
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web import server
from zope.interface import implementer

from mcp_twisted import jsonrpc
from mcp_twisted.eras import HEADER_MISMATCH, http_status
from mcp_twisted.hosting import StallLimit, WriteWaiters, unsent_bytes
from mcp_twisted.jsonrpc import Request, RequestId, RPCError
from mcp_twisted.protocol import Method

if TYPE_CHECKING:
    from mcp_twisted.http import MCPHTTPResource

__all__ = ["check_routing_headers", "serve_stateless"]

log = Logger()

# Requests whose Mcp-Name header names their target, and where the body has it.
_NAMED = {Method.TOOLS_CALL: "name", Method.PROMPTS_GET: "name", Method.RESOURCES_READ: "uri"}
_BASE64_VALUE = re.compile(r"=\?base64\?(.*)\?=\Z", re.DOTALL)
# An integer header: no argument holds more than 20 digits (orjson reads
# longer JSON numbers as floats), and int() refuses thousands of them.
_INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,19})\Z")
_CODE = re.compile(rb"-?[0-9]+")


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


def _header(request: server.Request, name: str) -> str | None:
    """A routing header as text: sent once and strict UTF-8 (else
    ``-32020``), and decoded from its ``=?base64?...?=`` form, which may
    carry any value."""
    raw = request.requestHeaders.getRawHeaders(name.encode())
    if not raw:
        return None
    if len(raw) > 1:
        # Intermediaries may route or authorize on another of the values than the one checked here.
        raise _mismatch(f"{name} header is sent more than once")
    try:
        # Only HTTP's own whitespace: str.strip() also drops characters
        # (no-break spaces, separators) that make the bytes an intermediary
        # routes on differ from the value checked here.
        text = raw[0].decode("utf-8").strip(" \t")
    except UnicodeDecodeError:
        raise _mismatch(f"{name} header is not UTF-8 text") from None
    return _header_value(text)


def check_routing_headers(request: server.Request, message: Request, header_params: dict[str, str]) -> None:
    """Raise ``-32020`` unless the routing headers say what the body says.

    ``header_params`` maps argument names to their header names (the tool's
    ``x-mcp-header`` properties).
    """
    if _header(request, "Mcp-Method") != message.method:
        raise _mismatch("Mcp-Method header is missing or does not match the request's method")
    params = message.params if isinstance(message.params, dict) else {}
    field = _NAMED.get(message.method)
    if field is not None and _header(request, "Mcp-Name") != params.get(field):
        raise _mismatch(f"Mcp-Name header is missing or does not match params.{field}")
    arguments = params.get("arguments")
    arguments = arguments if isinstance(arguments, dict) else {}
    for argument, header in header_params.items():
        sent = _header(request, f"Mcp-Param-{header}")
        value = arguments.get(argument)
        if sent is None and value is None:
            continue
        if sent is None or value is None or not _same(sent, value):
            raise _mismatch(f"Mcp-Param-{header} header is missing or does not match {argument!r}")


def _same(header: str, value: object) -> bool:
    """Header and argument agree (the header types are string, integer, boolean)."""
    if isinstance(value, bool):
        return header == ("true" if value else "false")
    if isinstance(value, int):
        return _INTEGER.match(header) is not None and int(header) == value
    return header == value


@implementer(IPushProducer)
class _Exchange:
    """One stateless POST: where the session's messages for it go, and the
    session's output flow (the POST's connection is the only way out)."""

    def __init__(self, resource: MCPHTTPResource, request: server.Request, request_id: RequestId) -> None:
        self.resource = resource
        self.request = request
        self.request_id = request_id
        # What an error answer to this request starts with (the session builds
        # answers as jsonrpc, id, then result or error): nothing a result holds
        # can look like it.
        self._error_start = b'{"jsonrpc":"2.0","id":' + orjson.dumps(request_id) + b',"error":{"code":'
        self.streaming = False
        self.finished = False
        self.paused = False
        self.sync_body: bytes | None = None
        self._keepalive: LoopingCall | None = None
        self._stall: StallLimit | None = None  # made with the stream: most answers are JSON
        self._writers = WriteWaiters()

    def route(self, data: bytes, related: RequestId | None, answer: bool) -> None:
        if self.finished or related != self.request_id:
            return  # nothing else can reach this client: no session, no stream of its own
        error_code = self._error_code(data) if answer else None
        # An error answer is always JSON, so that it travels with its status.
        json_wanted = not self.resource.settings.always_stream or error_code is not None
        if answer and not self.streaming and json_wanted:
            self._answer_json(data, error_code)
            return
        if not self.streaming:
            self._start_stream()
        self._write(b"data: " + data + b"\n\n")
        if answer:
            self._end()

    def _error_code(self, data: bytes) -> int | None:
        if not data.startswith(self._error_start):
            return None
        found = _CODE.match(data, len(self._error_start))
        return int(found.group()) if found is not None else None

    def _answer_json(self, data: bytes, error_code: int | None) -> None:
        self.finished = True
        request = self.request
        if error_code is not None:
            request.setResponseCode(http_status(error_code))
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
        settings = self.resource.settings
        self._stall = StallLimit(self.resource.host.clock, settings.max_output_buffer,
                                 settings.output_stall_timeout, self._unsent, self._drop)
        request.registerProducer(self, True)
        interval = settings.keepalive_interval
        if interval:
            self._keepalive = LoopingCall(self._write, b": keep-alive\n\n")
            self._keepalive.clock = self.resource.host.clock
            self._keepalive.start(interval, now=False)

    def _write(self, data: bytes) -> None:
        self.request.write(data)
        if self.paused and self._stall is not None:
            self._stall.wrote()

    def _unsent(self) -> int:
        return unsent_bytes(self.request.channel.transport)

    def _end(self) -> None:
        self.stop()
        if not self.request._disconnected:
            self.request.unregisterProducer()
            self.request.finish()

    def stop(self) -> None:
        """No more output: the answer went, or the client left."""
        self.finished = True
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self._stall is not None:
            self._stall.stop()
        self._writers.release()

    # OutputFlow, for the session: handlers that await progress or log
    # messages wait while the client is behind; over the limit they are dropped.
    def when_writable(self) -> Deferred[None]:
        return self._writers.wait() if self.paused and not self.finished else succeed(None)

    def congested(self) -> bool:
        limit = self.resource.settings.max_output_buffer
        return self.paused and self._unsent() > limit

    # IPushProducer, driven by the channel's write buffer.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self._stall is not None:
            self._stall.stop()
        self._writers.release()

    def stopProducing(self) -> None:
        self.stop()

    def _drop(self) -> None:
        """The client stayed over the output limit for the whole stall timeout."""
        if not self.finished:
            log.info("Dropping a 2026-07-28 stream: its client stopped reading")
            metrics = self.resource.host.metrics
            if metrics is not None:
                metrics.output_stalls.inc()
            cast(ITCPTransport, self.request.channel.transport).abortConnection()


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
    session = host.open_session(exchange.route, transport="http", identity=identity, peer=peer, flow=exchange)

    def client_gone(_: object) -> None:
        exchange.stop()  # on 2026-07-28 closing the stream cancels the request
        session.close("HTTP client went away")
        host.session_closed(session)

    request.notifyFinish().addBoth(client_gone)
    session.dispatch(message)
    if exchange.sync_body is not None:
        return exchange.sync_body
    return server.NOT_DONE_YET
