"""The client's Streamable HTTP transport, on twisted.web's ``Agent``.

Every message the session sends is one POST (a persistent
``HTTPConnectionPool`` keeps the TCP and TLS connections). What comes back
(a JSON body or an SSE stream of messages) is fed to the session, so the
session and ``MCPClient`` are the same as over WebSocket and stdio.

Handshake era: the ``Mcp-Session-Id`` from the ``initialize`` answer is sent
with every later request; a POST's SSE stream that ends before its answer is
resumed with GET + ``Last-Event-ID`` after the stream's ``retry`` delay; a
standalone GET stream carries what the server sends unprompted (a 405 means
the server has none); answers to the server's requests are POSTed; 404 on
the session means the server forgot it: the connection is lost, and the
service re-initializes and restores subscriptions; closing sends DELETE.

2026-07-28: each POST carries ``Mcp-Method``, ``Mcp-Name`` and
``Mcp-Param-*`` beside ``MCP-Protocol-Version``; a request is cancelled by
closing its stream (``notifications/cancelled`` is not posted).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

from mcp_twisted import jsonrpc
from mcp_twisted.client._api import MCPClient
from mcp_twisted.client._body import Collect, Discard
from mcp_twisted.client._connection import (
    Connector,
    SessionConnection,
    describe_tls_failure,
    origin_of,
    tls_options,
)
from mcp_twisted.client._lifecycle import ConnectionState
from mcp_twisted.client._oauth import OAuthClient, OAuthError, Refused, bearer
from mcp_twisted.client._sse import SSEEvent, SSEParser, StreamTooLarge
from mcp_twisted.eras import META_PROTOCOL_VERSION, MODERN_VERSIONS, request_headers
from mcp_twisted.jsonrpc import INTERNAL_ERROR, RemoteError, RequestId
from mcp_twisted.protocol import Method, Notify

__all__ = ["HTTPConnection", "HTTPConnector", "HTTPError"]

log = Logger()

# Milliseconds before a dropped stream is resumed when the server named no ``retry``.
DEFAULT_RETRY_MS = 1000
# The least delay before a stream is resumed or reopened, whatever ``retry`` says:
# a server's ``retry: 0`` would otherwise make a hot loop of GETs.
MIN_RETRY_MS = 100
# Resumptions of one stream in a row that bring no new message before giving up.
MAX_RESUMES = 5
# Standalone GET streams reopened in a row without an event before giving up.
MAX_GET_REOPENS = 5
# Seconds a request's stream may stay open after its answer came, for the
# server to end it (the connection then goes back to the pool) before it is
# aborted (a server that never ends it would pile up sockets).
ANSWERED_STREAM_GRACE = 1.0
# Seconds the server has to answer the standalone GET opened at initialize
# when the client has no ``request_timeout``; the session goes on without it.
GET_STREAM_TIMEOUT = 30.0
ACCEPT_BOTH = "application/json, text/event-stream"


class HTTPError(RemoteError):
    """The server answered a request over HTTP with a failure and no
    JSON-RPC error (or the stream carrying the answer ended without it)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(INTERNAL_ERROR, message, {"status": status} if status is not None else None)
        self.status = status

    def __str__(self) -> str:
        return self.message


@implementer(IPolicyForHTTPS)
class _TLSPolicy:
    """The WebSocket client's TLS options for ``Agent``: the same CA and
    client-certificate settings."""

    def __init__(self, tls_ca: str | None, tls_client_cert: str | None, tls_client_key: str | None) -> None:
        self.settings = (tls_ca, tls_client_cert, tls_client_key)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return tls_options(hostname.decode("idna"), *self.settings)


class _StreamReader(Protocol):
    """Reads one SSE response (a POST's, a resumption's or the standalone GET's)."""

    def __init__(self, connection: HTTPConnection, request_id: RequestId | None, parser: SSEParser,
                 resumable: bool) -> None:
        self.connection = connection
        self.request_id = request_id  # whose answer it carries; None: the standalone GET stream
        self.parser = parser
        self.resumable = resumable
        self.resumed_from = parser.last_event_id
        self.progressed = False  # brought a message with an event id past ``resumed_from``
        self.aborted = False
        self.ended = False

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.parser.feed(data)
        except StreamTooLarge as e:
            self.connection._stream_refused(self, str(e))
            return
        for event in events:
            self.connection._event_received(self, event)

    def abort(self) -> None:
        if self.ended:
            return
        self.aborted = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]  # a response body's transport is a producer

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008  # Twisted's signature
        self.ended = True
        self.connection._stream_ended(self)


class HTTPConnection(SessionConnection):
    """One MCP conversation over Streamable HTTP: a session id (handshake
    era) or none (2026-07-28), the streams open for it, and its session."""

    def __init__(self, connector: HTTPConnector) -> None:
        self._init_connection()
        self.connector = connector
        self.client = connector.client
        self.target = connector.url
        self.era_key = connector.origin
        self.session_id: str | None = None
        self._readers: set[_StreamReader] = set()
        self._posts: dict[RequestId, Deferred[IResponse]] = {}  # requests waiting for response headers
        self._unanswered: set[RequestId] = set()  # our requests whose answer has not come on any stream
        self._get_reopens = 0
        self._timers: list[IDelayedCall] = []  # resumptions and GET streams to come

    def start(self) -> None:
        # Nothing to set up before the first POST: open at once.
        self._open_session(self._send)

    @property
    def open(self) -> bool:
        return self.connection_state in (ConnectionState.INITIALIZING, ConnectionState.READY)

    @property
    def modern(self) -> bool:
        return self.session is not None and self.session.protocol_version in MODERN_VERSIONS

    # -- sending ----------------------------------------------------------

    def _send(self, data: bytes, related: object = None, answer: bool = False) -> None:
        message = json.loads(data)
        method = message.get("method")
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        if method == Notify.CANCELLED:
            self._unanswered.discard(params.get("requestId"))
            if self.modern:
                self._abort_request(params.get("requestId"))  # closing its stream is how 2026-07-28 cancels
                return
        request_id = message.get("id") if method is not None else None
        if request_id is not None:
            self._unanswered.add(request_id)
        headers = self._headers()
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
        meta = params.get("_meta")
        version = meta.get(META_PROTOCOL_VERSION) if isinstance(meta, dict) else None
        if version is None and self.session is not None and self.session.initialize_result is not None:
            version = self.session.protocol_version
        if version is not None:
            headers["MCP-Protocol-Version"] = version
        if method is not None:
            tool = self.client.tool_headers.get(str(params.get("name")), {})
            headers.update(request_headers(method, params, tool if method == Method.TOOLS_CALL else {}))
        headers["Content-Type"] = "application/json"
        headers["Accept"] = ACCEPT_BOTH
        posted = self.connector.request(b"POST", headers, data)
        if request_id is not None:
            self._posts[request_id] = posted
            posted.addBoth(self._posted_or_failed, request_id)
        posted.addCallbacks(self._answered, self._failed, callbackArgs=(method, request_id),
                            errbackArgs=(request_id,))

    def _headers(self) -> dict[str, str]:
        return dict(self.connector.headers)

    def _posted_or_failed(self, result: Any, request_id: RequestId) -> Any:
        self._posts.pop(request_id, None)
        return result

    def _answered(self, response: IResponse, method: str | None, request_id: RequestId | None) -> None:
        session_ids = response.headers.getRawHeaders(b"mcp-session-id")
        if method == Method.INITIALIZE and session_ids and response.code < 300:
            self.session_id = session_ids[0].decode("ascii", "replace")
        if response.code == 404 and self.session_id is not None and method != Method.INITIALIZE:
            self._lose("the server ended the session (HTTP 404)", expired=True)
            response.deliverBody(Discard())
            return
        if response.code < 300 and _content_type(response) == "text/event-stream":
            self._read_stream(response, request_id, SSEParser(), resumable=not self.modern)
            return
        body = Collect(self.connector.max_body_size)
        response.deliverBody(body)
        body.done.addCallbacks(self._body_received, self._failed,
                               callbackArgs=(response.code, response.phrase, method, request_id))

    def _body_received(self, body: bytes, status: int, phrase: bytes, method: str | None,
                       request_id: RequestId | None) -> None:
        if self.session is None or (not self.open and request_id is None):
            return
        if body.strip():
            try:
                message = jsonrpc.parse(body)
            except jsonrpc.MessageError:
                message = None
            if isinstance(message, jsonrpc.ErrorResponse) and message.id is None and request_id is not None:
                message = jsonrpc.ErrorResponse(request_id, message.error)  # an error about this POST
            if message is not None and (request_id is None or _answers(message, request_id)):
                self._deliver(message)
                return
        if status >= 300 or request_id is not None:
            text = body[:200].decode("utf-8", "replace").strip()
            error = f"HTTP {status} {phrase.decode('latin-1')}" + (f": {text}" if text else "")
            if request_id is not None:
                self._fail(request_id, error, status)
            else:
                log.warn("{url} refused {what}: {error}", url=self.target, what=method or "an answer",
                         error=error)

    def _fail(self, request_id: RequestId, error: str, status: int | None = None) -> None:
        self._deliver(jsonrpc.ErrorResponse(request_id, HTTPError(error, status)))

    def _deliver(self, message: jsonrpc.Message | list[jsonrpc.BatchItem]) -> None:
        if isinstance(message, jsonrpc.Response | jsonrpc.ErrorResponse):
            self._unanswered.discard(message.id)
        if self.session is not None:
            self.session.dispatch(message)

    def _failed(self, failure: Failure, request_id: RequestId | None = None) -> None:
        """A request that never got (all of) its response: the server is gone
        (unless this side gave the request up). One whose authorization
        failed fails alone: the server is still there."""
        if failure.check(OAuthError) and request_id is not None:
            self._fail(request_id, f"authorization failed: {failure.getErrorMessage()}", 401)
            return
        error: Any = failure.value
        reasons = getattr(error, "reasons", None)  # Agent wraps the cause (ResponseNeverReceived and kin)
        if reasons:
            error = reasons[0].value
        if isinstance(error, CancelledError) or not self.open:
            return
        host = urlsplit(self.target).hostname or ""
        self._lose(describe_tls_failure(error, host) or str(error) or type(error).__name__)

    # -- streams ----------------------------------------------------------

    def _read_stream(self, response: IResponse, request_id: RequestId | None, parser: SSEParser,
                     resumable: bool) -> None:
        reader = _StreamReader(self, request_id, parser, resumable)
        self._readers.add(reader)
        response.deliverBody(reader)

    def _event_received(self, reader: _StreamReader, event: SSEEvent) -> None:
        if self.session is None or not event.data.strip():
            return  # a priming event: only its id and retry matter
        try:
            message = jsonrpc.parse(event.data)
        except jsonrpc.MessageError as e:
            log.warn("Dropped an SSE event from {url}: {error}", url=self.target, error=e.message)
            return
        if reader.request_id is None:
            self._get_reopens = 0
        if event.id is not None and event.id != reader.resumed_from:
            reader.progressed = True
        self._deliver(message)
        if reader.request_id is not None and reader.request_id not in self._unanswered:
            self._later(ANSWERED_STREAM_GRACE, reader.abort)  # answered: see ANSWERED_STREAM_GRACE

    def _stream_refused(self, reader: _StreamReader, error: str) -> None:
        """A stream sent an event over the size limit: it is dropped, and the
        request it carried fails now rather than wait for an answer that will not come."""
        log.warn("Dropped an SSE stream from {url}: {error}", url=self.target, error=error)
        reader.abort()
        if reader.request_id in self._unanswered:
            self._fail(reader.request_id, f"the stream carrying the answer was dropped: {error}")

    def _stream_ended(self, reader: _StreamReader) -> None:
        self._readers.discard(reader)
        if reader.aborted or not self.open:
            return
        retry = reader.parser.retry if reader.parser.retry is not None else DEFAULT_RETRY_MS
        delay = max(retry, MIN_RETRY_MS) / 1000
        if reader.request_id is None:
            self._get_reopens += 1
            if self._get_reopens <= MAX_GET_REOPENS:
                self._later(delay, self._open_get_stream, reader.parser)
            return
        if reader.request_id not in self._unanswered:
            return  # answered, here or on another stream
        resumes = reader.parser.resumes if isinstance(reader.parser, _Resumed) else 0
        if not reader.progressed:
            resumes += 1  # only priming events, or the same id again: no progress on this try
        if reader.resumable and reader.parser.last_event_id is not None and resumes <= MAX_RESUMES:
            resumed = _Resumed(reader.parser, resumes)
            self._later(delay, self._resume, reader.request_id, resumed)
        elif resumes > MAX_RESUMES:
            self._fail(reader.request_id, f"the stream ended before the answer, {MAX_RESUMES} resumptions "
                       "in a row brought nothing new")
        else:
            self._fail(reader.request_id, "the stream ended before the answer")

    def _later(self, delay: float, call: Callable[..., object], *args: object) -> None:
        self._timers = [timer for timer in self._timers if timer.active()]
        self._timers.append(self.client.clock.callLater(delay, call, *args))

    def _stream_request(self, parser: SSEParser) -> Deferred[IResponse]:
        headers = self._headers()
        headers["Accept"] = "text/event-stream"
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
        if self.session is not None:
            headers["MCP-Protocol-Version"] = self.session.protocol_version
        if parser.last_event_id is not None:
            headers["Last-Event-ID"] = parser.last_event_id
        return self.connector.request(b"GET", headers)

    def _resume(self, request_id: RequestId, parser: _Resumed) -> None:
        if not self.open:
            return

        def resumed(response: IResponse) -> None:
            if response.code < 300 and _content_type(response) == "text/event-stream":
                self._read_stream(response, request_id, parser, resumable=True)
            else:
                response.deliverBody(Discard())
                self._fail(request_id, f"resuming the stream failed: HTTP {response.code}", response.code)

        self._stream_request(parser).addCallbacks(resumed, self._failed)

    def _open_get_stream(self, previous: SSEParser | None = None) -> Deferred[None]:
        """The standalone GET stream, for what the server sends unprompted;
        fires once the server has answered it (or failing to)."""
        if not self.open or self.session_id is None:
            return succeed(None)
        parser = SSEParser()
        if previous is not None:
            parser.last_event_id, parser.retry = previous.last_event_id, previous.retry

        def opened(response: IResponse) -> None:
            if response.code < 300 and _content_type(response) == "text/event-stream":
                self._read_stream(response, None, parser, resumable=True)
                return
            response.deliverBody(Discard())
            if response.code == 404:
                self._lose("the server ended the session (HTTP 404)", expired=True)
            elif response.code != 405:  # 405: the server offers no such stream
                log.info("{url} refused the GET stream: HTTP {status}", url=self.target, status=response.code)

        def failed(failure: Failure) -> None:
            # The stream is optional: the session goes on without it.
            if self.open and not failure.check(CancelledError):
                error = "no answer in time" if failure.check(TimeoutError) else failure.getErrorMessage()
                log.info("Going on without a GET stream from {url}: {error}", url=self.target, error=error)

        timeout = self.client.request_timeout
        opening = self._stream_request(parser)
        opening.addTimeout(GET_STREAM_TIMEOUT if timeout is None else timeout, self.client.clock)
        return opening.addCallbacks(opened, failed)

    def _abort_request(self, request_id: object) -> None:
        posted = self._posts.pop(request_id, None) if jsonrpc.is_request_id(request_id) else None
        if posted is not None:
            posted.cancel()
        for reader in list(self._readers):
            if reader.request_id == request_id:
                reader.abort()

    # -- lifecycle ----------------------------------------------------------

    def _initialized(self, result: dict[str, Any]) -> None:
        if self.modern:
            super()._initialized(result)
            return
        # The GET stream goes out on a connection of its own, so a request the
        # application sends at once would overtake it: the session is ready
        # when the server has answered the GET (whatever the answer).
        def ready(_: object) -> None:
            if self.connection_state is ConnectionState.INITIALIZING:  # not lost meanwhile
                SessionConnection._initialized(self, result)

        self._open_get_stream().addBoth(ready)

    def _stop_streams(self) -> None:
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        for posted in list(self._posts.values()):
            posted.cancel()
        for reader in list(self._readers):
            reader.abort()

    def _lose(self, reason: str, expired: bool = False) -> None:
        """The conversation is over from the server's side (gone, or the session expired)."""
        if self.connection_state is ConnectionState.CLOSED:
            return
        if expired:
            self.session_id = None
        self.failure_reason = reason
        self._stop_streams()
        self._connection_gone(Failure(ConnectionDone(reason)))

    def _end_transport(self) -> None:
        self._stop_streams()
        session_id, self.session_id = self.session_id, None
        if session_id is None:
            self._ended(None)
            return
        headers = self._headers()
        headers["Mcp-Session-Id"] = session_id
        if self.session is not None:
            headers["MCP-Protocol-Version"] = self.session.protocol_version
        deleted = self.connector.request(b"DELETE", headers)
        deleted.addCallback(lambda response: response.deliverBody(Discard()))
        deleted.addTimeout(self.connector.close_timeout, self.client.clock)
        deleted.addBoth(self._ended)

    def _ended(self, _: object) -> None:
        self.connector.pool.closeCachedConnections()
        if self.connection_state is not ConnectionState.CLOSED:
            self._connection_gone(Failure(ConnectionDone("closed by the client")))

    def _drop(self) -> None:
        self._lose("abandoned")


class _Resumed(SSEParser):
    """The parser of a resumed stream: it goes on from the dropped one's last
    event id and retry, and counts resumptions that brought nothing."""

    def __init__(self, previous: SSEParser, resumes: int) -> None:
        super().__init__(previous.max_event_size)
        self.last_event_id, self.retry = previous.last_event_id, previous.retry
        self.resumes = resumes


class HTTPConnector(Connector):
    """Makes ``HTTPConnection``s to ``url`` for ``MCPClientService``, sharing
    one ``Agent`` and its persistent connection pool."""

    def __init__(
        self,
        reactor: Any,
        client: MCPClient,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        tls_ca: str | None = None,
        tls_client_cert: str | None = None,
        tls_client_key: str | None = None,
        close_timeout: float = 2.0,
        max_body_size: int = 4 * 1024 * 1024,
        auth: OAuthClient | None = None,
    ) -> None:
        """:param auth: gets the access tokens of a server that is an OAuth
        protected resource, and new ones when it refuses them."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Not an http:// or https:// URL: {url!r}")
        self.client = client
        self.url = url
        self.target = url
        self.origin = origin_of(url)
        self.headers = dict(headers or {})
        self.close_timeout = close_timeout
        self.max_body_size = max_body_size
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, contextFactory=_TLSPolicy(tls_ca, tls_client_cert, tls_client_key),
                           pool=self.pool)
        self.auth = auth
        self._url = url.encode("ascii")

    def connect(self) -> Deferred[Any]:
        connection = HTTPConnection(self)
        started = self._track(connection)
        connection.start()
        return started

    def request(self, method: bytes, headers: dict[str, str],
                body: bytes | None = None) -> Deferred[IResponse]:
        """One request to the server; with ``auth``, carrying the access
        token, and sent again when a refusal (401, or 403 for a scope) was
        answered with a new one."""
        if self.auth is None:
            return self._request(method, headers, body)
        return Deferred.fromCoroutine(self.auth.authorized(
            self.url, lambda token: self._request(method, bearer(headers, token), body), _refused,
            lambda response: response.deliverBody(Discard())))

    def _request(self, method: bytes, headers: dict[str, str], body: bytes | None) -> Deferred[IResponse]:
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        return self.agent.request(method, self._url, _headers(headers), producer)



def _headers(values: dict[str, str]) -> Headers:
    return Headers({name: [value] for name, value in values.items()})


def _refused(response: IResponse) -> Refused | None:
    """A 401 or 403 and its challenges, for the OAuth client to answer."""
    if response.code not in (401, 403):
        return None
    return response.code, [value.decode("latin-1") for value in
                           response.headers.getRawHeaders(b"www-authenticate", [])]


def _content_type(response: IResponse) -> str:
    values: list[bytes] = response.headers.getRawHeaders(b"content-type") or [b""]
    return values[0].split(b";")[0].strip().lower().decode("latin-1")


def _answers(message: object, request_id: RequestId) -> bool:
    return isinstance(message, jsonrpc.Response | jsonrpc.ErrorResponse) and message.id == request_id

