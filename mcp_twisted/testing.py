"""Test an MCP server in memory: no sockets, and time is a ``task.Clock``.

As treq's ``StubTreq`` does for HTTP, these helpers run the real code (the
real ``Session`` in both roles, the real ``MCPServer``, the real
``MCPClient``) and replace only the transport, by lists in memory. A test is
then synchronous and deterministic: what a handler answers at once has
arrived when the call returns, and timeouts fire when the test moves the
clock.

- ``MemoryClient(server)`` is an ``MCPClient`` connected to ``server``: call
  ``list_tools``, ``call_tool``, ``read_resource``, ``subscribe``... as with
  the WebSocket client. ``send_raw`` sends any JSON-RPC message (or text) and
  returns what the server sent back, for tests of protocol errors.
- ``Peer(handler)`` is the other end of a single ``Session``, written by
  hand: send requests and notifications as JSON, see every message the
  session sent. It tests a server without any client logic in between
  (``initialize`` included), or a session in the client role.
- ``result_of(d)`` and ``failure_of(d)`` read a Deferred that has fired;
  ``collect_into(texts)`` is a ``send`` for a bare ``Session`` that keeps
  only the texts it writes.

Example (pytest)::

    from mcp_twisted import Context, MCPServer
    from mcp_twisted.testing import MemoryClient, Peer, failure_of, result_of
    from mcp_twisted.session import RequestTimedOut

    server = MCPServer("weather")

    @server.tool()
    async def forecast(city: str, ctx: Context) -> str:
        await ctx.report_progress(1, 2)
        return f"Sunny in {city}"

    def test_forecast():
        client = MemoryClient(server)
        assert [tool["name"] for tool in result_of(client.list_tools())["tools"]] == ["forecast"]
        steps = []
        d = client.call_tool("forecast", {"city": "Oslo"}, on_progress=lambda *step: steps.append(step))
        assert result_of(d)["content"] == [{"type": "text", "text": "Sunny in Oslo"}]
        assert steps == [(1, 2, None)]

    def test_an_unanswered_request_times_out():
        client = MemoryClient(server, deliver_later=True, request_timeout=5)
        d = client.call_tool("forecast", {"city": "Oslo"})   # queued until client.flush()
        client.clock.advance(5)
        failure_of(d, RequestTimedOut)

    def test_protocol_errors():
        (reply,) = MemoryClient(server).send_raw(b"{not json")
        assert reply["error"]["code"] == -32700

    def test_tools_need_initialize():
        peer = Peer(server)
        assert peer.error("tools/list")["code"] == -32600
        peer.initialize()
        assert peer.result("tools/list")["tools"][0]["name"] == "forecast"
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mcp_twisted import jsonrpc
from mcp_twisted.client._api import MCPClient
from mcp_twisted.jsonrpc import RequestId
from mcp_twisted.protocol import LATEST_PROTOCOL_VERSION, Method, Notify
from mcp_twisted.session import Role, Session, SessionHandler

__all__ = ["MemoryClient", "Peer", "collect_into", "failure_of", "result_of"]

T = TypeVar("T")


def collect_into(texts: list[bytes]) -> Callable[[bytes, RequestId | None, bool], None]:
    """A ``send`` for a ``Session`` that appends each text it writes to
    ``texts`` (which request it belongs to is ignored)."""
    return lambda data, related, answer: texts.append(data)


def result_of(d: Deferred[T] | Coroutine[Any, Any, T]) -> T:
    """The result of a Deferred (or coroutine) that has already succeeded.

    Raises ``AssertionError`` if it has not fired yet or has failed: in memory
    an answer arrives during the call, so "not yet" is a finding, not a race.
    """
    results: list[T | Failure] = []
    ensureDeferred(d).addBoth(results.append)
    assert results, f"{d!r} has not fired"
    if isinstance(results[0], Failure):
        raise AssertionError(f"{d!r} failed: {results[0].getTraceback()}")
    return results[0]


def failure_of(d: Deferred[Any] | Coroutine[Any, Any, Any], *errors: type[BaseException]) -> Failure:
    """The ``Failure`` of a Deferred (or coroutine) that has already failed,
    with one of ``errors`` if any are named; ``AssertionError`` otherwise."""
    results: list[Any] = []
    ensureDeferred(d).addBoth(results.append)
    assert results, f"{d!r} has not fired"
    failure = results[0]
    assert isinstance(failure, Failure), f"{d!r} succeeded with {failure!r}"
    if errors and not failure.check(*errors):
        assert failure.type is not None  # a Failure always holds its exception
        raise AssertionError(f"{d!r} failed with {failure.type.__name__}, not one of "
                             f"{[e.__name__ for e in errors]}: {failure.getTraceback()}")
    return failure


def _encode(message: Any) -> bytes:
    """Bytes and text go out as they are (any text, valid or not); the rest as JSON."""
    if isinstance(message, bytes):
        return message
    if isinstance(message, str):
        return message.encode()
    return json.dumps(message).encode()


def _decode(text: bytes) -> Any:
    return json.loads(text)


class _Wire:
    """Carries texts between two sessions, in order.

    At once by default, but never inside another delivery: a message sent
    while one is being received waits until that one is done, so no session
    is re-entered. ``deliver_later`` queues everything until ``flush``.
    """

    def __init__(self, deliver_later: bool) -> None:
        self.deliver_later = deliver_later
        self.queue: deque[tuple[Callable[[bytes], object], bytes]] = deque()
        self._busy = False

    def sender(self, receive: Callable[[bytes], object]) -> Callable[[bytes], None]:
        def send(text: bytes) -> None:
            self.queue.append((receive, text))
            if not self.deliver_later:
                self.flush()

        return send

    def flush(self) -> int:
        """Deliver until nothing is queued; how many texts were delivered."""
        if self._busy:
            return 0  # the delivery in progress goes on to the new ones
        delivered = 0
        self._busy = True
        try:
            while self.queue:
                receive, text = self.queue.popleft()
                receive(text)
                delivered += 1
        finally:
            self._busy = False
        return delivered

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Queue what is sent inside the block; deliver it (unless delivering later) after."""
        if self._busy:
            yield
            return
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
        if not self.deliver_later:
            self.flush()


class _WiredSession(Session):
    """A ``Session`` on a ``_Wire``.

    ``request`` holds the wire while it runs: ``Session.request`` starts the
    timeout after sending, so an answer delivered inside the send would leave
    a dead timer on the clock.
    """

    def __init__(self, send: Callable[[bytes], object], *, wire: _Wire, **options: Any) -> None:
        super().__init__(lambda data, related, answer: send(data), **options)
        self.wire = wire

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        with self.wire.holding():
            return super().request(*args, **kwargs)


class MemoryClient(MCPClient):
    """An ``MCPClient`` connected to ``server`` in memory, already initialized.

    A client-role and a server-role ``Session`` are wired back to back; both,
    and the client, run on ``clock`` (a new ``task.Clock`` unless given), so
    ``client.clock.advance(seconds)`` drives every timeout. Every call of
    ``MCPClient`` works and returns a Deferred: a handler that answers at once
    has answered when the call returns (read it with ``result_of``).

    :param capabilities: what the client declares at ``initialize``, instead
        of what its handlers imply (declare one without a handler to see how
        the server copes with a refusal).
    :param protocol_version: the revision the client offers.
    :param identity: what ``ctx.identity`` returns, as if the transport had
        authenticated the client.
    :param deliver_later: queue every message until ``flush()`` (the
        handshake is flushed for you), so a test can act between a request
        and its answer, or let a request time out unanswered.
    :param session_options: keyword arguments for the server's ``Session``
        (``max_in_flight``, ``handler_timeout``, ``max_message_size``...).
    :param client_options: the ``MCPClient`` options (``sampling``, ``roots``,
        ``elicitation``, ``on_log``, ``on_list_changed``, ``request_timeout``,
        ``client_info``).

    ``sent`` and ``received`` hold every message each way, decoded, for
    assertions on notifications.
    """

    def __init__(
        self,
        server: SessionHandler,
        *,
        clock: IReactorTime | None = None,
        capabilities: dict[str, Any] | None = None,
        protocol_version: str = LATEST_PROTOCOL_VERSION,
        identity: Any = None,
        deliver_later: bool = False,
        session_options: dict[str, Any] | None = None,
        **client_options: Any,
    ) -> None:
        super().__init__(clock if clock is not None else Clock(), **client_options)
        self.server = server
        self.protocol_version = protocol_version
        self.identity = identity
        self.session_options = dict(session_options or {})
        self.sent: list[Any] = []
        self.received: list[Any] = []
        self.client_session: Session | None = None
        self.server_session: Session | None = None
        self._declared = capabilities
        self._wire = _Wire(deliver_later)
        self._wire_to_server: Callable[[bytes], None] = self._wire.sender(lambda text: None)
        self._raw_ids: list[Any] = []
        failures: list[Failure] = []
        self.connect().addErrback(failures.append)
        if failures:
            failures[0].raiseException()

    @property
    def capabilities(self) -> dict[str, Any]:
        return self._declared if self._declared is not None else super().capabilities

    def connect(self) -> Deferred[dict[str, Any]]:
        """Open a new connection (a new pair of sessions) and run the handshake.

        The constructor does it; do it again after ``disconnect()`` to see what
        a reconnection does (subscriptions are restored, as by the WebSocket
        client). Fires with the ``initialize`` result.
        """
        self.disconnect("reconnecting")
        wire = self._wire
        server_session = _WiredSession(
            wire.sender(self._from_server), wire=wire, role=Role.SERVER, handler=self.server,
            clock=self.clock, **self.session_options)
        server_session.attributes["identity"] = self.identity
        self.server_session = server_session
        self._wire_to_server = wire.sender(server_session.receive)
        self.client_session = _WiredSession(
            self._to_server, wire=wire, role=Role.CLIENT, handler=self, clock=self.clock,
            request_timeout=self.request_timeout)
        handshake = self.start_session(self.client_session)
        wire.flush()  # the handshake is delivered even when the rest waits for flush()
        return handshake

    def handshake(self, session: Session) -> Deferred[dict[str, Any]]:
        """``initialize``, offering ``protocol_version`` (``MCPClient`` offers the latest)."""
        return session.initialize(self.client_info, self.capabilities, self.protocol_version)

    def disconnect(self, reason: str = "connection lost") -> None:
        """Close both sessions, as a dropped connection would: the client's
        waiting requests fail with ``ConnectionLost``, the server's handlers
        are cancelled. Queued messages are dropped."""
        self._wire.queue.clear()
        for session in (self.client_session, self.server_session):
            if session is not None:
                session.close(reason)

    def flush(self) -> int:
        """Deliver every queued message, and those they cause; how many there were."""
        return self._wire.flush()

    @property
    def pending(self) -> int:
        """Messages queued (with ``deliver_later``) and not delivered yet."""
        return len(self._wire.queue)

    def send_raw(self, message: Any) -> list[Any]:
        """Send one message to the server past the client session; returns
        every message the server sent meanwhile, decoded (with
        ``deliver_later``: nothing until ``flush``, then see ``received``).

        ``message`` is any JSON value (a request, a batch, garbage), or text
        or bytes sent as they are. Answers to its ids, and answers without an
        id, are kept from the client session. Give it ids the client does not
        use (strings, say): the client numbers its own requests 0, 1, 2...
        """
        items = message if isinstance(message, list) else [message]
        self._raw_ids.extend(item["id"] for item in items if isinstance(item, dict) and "id" in item)
        before = len(self.received)
        self._to_server(_encode(message))
        return self.received[before:]

    def _to_server(self, text: bytes) -> None:
        try:
            self.sent.append(_decode(text))
        except ValueError:
            self.sent.append(text)  # raw garbage, kept as it was sent
        self._wire_to_server(text)

    def _from_server(self, text: bytes) -> None:
        message = _decode(text)
        self.received.append(message)
        if not self._is_raw_answer(message) and self.client_session is not None:
            self.client_session.receive(text)

    def _is_raw_answer(self, message: Any) -> bool:
        if isinstance(message, list):
            return True  # the client session never sends a batch
        if not isinstance(message, dict) or "method" in message:
            return False
        return message.get("id") is None or message.get("id") in self._raw_ids


class Peer:
    """The other end of one ``Session``, written by hand.

    The session (``peer.session``) runs on ``peer.clock`` (a ``task.Clock``
    unless given) and writes into ``peer.received``; the peer sends it JSON
    with ``send``, ``request`` and ``notify``. With an ``MCPServer`` as the
    handler this is a raw MCP client, handshake included::

        peer = Peer(server)
        peer.initialize("2025-06-18", {"roots": {}})
        request_id = peer.request("tools/call", {"name": "slow"})
        assert peer.answer(request_id) is None       # still running
        peer.notify("notifications/cancelled", {"requestId": request_id})

    ``role=Role.CLIENT`` puts the session in the client role: the peer is
    then the server, and answers ``peer.session.request(...)`` with ``send``.
    ``session_options`` go to ``Session`` (``max_in_flight``,
    ``handler_timeout``, ``request_timeout``...).
    """

    def __init__(self, handler: SessionHandler, *, role: Role = Role.SERVER,
                 clock: IReactorTime | None = None, **session_options: Any) -> None:
        self.handler = handler
        self.clock = clock if clock is not None else Clock()
        self.received: list[Any] = []
        self.initialize_result: dict[str, Any] | None = None
        self.session = Session(self._receive, role=role, handler=handler, clock=self.clock,
                               **session_options)
        self._ids = itertools.count(1)
        self._taken = 0

    def _receive(self, text: bytes, related: RequestId | None = None, answer: bool = False) -> None:
        self.received.append(_decode(text))

    # -- sending ------------------------------------------------------------

    def send(self, message: Any) -> None:
        """Send any JSON value (a message, a batch, anything), or text or bytes as they are."""
        self.session.receive(_encode(message))

    def request(self, method: str, params: Any = None, *, id: RequestId | None = None) -> Any:
        """Send a request; returns its id (the next integer unless ``id`` is given)."""
        request_id = next(self._ids) if id is None else id
        self.send(jsonrpc.request(request_id, method, params))
        return request_id

    def notify(self, method: str, params: Any = None) -> None:
        self.send(jsonrpc.notification(method, params))

    def initialize(
        self,
        version: str = LATEST_PROTOCOL_VERSION,
        capabilities: dict[str, Any] | None = None,
        *,
        client_info: dict[str, Any] | None = None,
        ready: bool = True,
    ) -> dict[str, Any]:
        """Run the handshake as a client would (``ready=False`` stops before
        ``notifications/initialized``); returns the ``initialize`` result.

        Everything the session sent so far is taken: ``take()`` returns only
        what comes after.
        """
        result: dict[str, Any] = self.result(Method.INITIALIZE, {
            "protocolVersion": version, "capabilities": capabilities or {},
            "clientInfo": client_info or {"name": "mcp-twisted-testing", "version": "0"},
        }, id="initialize")
        if ready:
            self.notify(Notify.INITIALIZED)
        self.initialize_result = result
        self.take()
        return result

    # -- reading ------------------------------------------------------------

    def take(self) -> list[Any]:
        """The messages the session sent since the last ``take``, decoded."""
        new = self.received[self._taken:]
        self._taken = len(self.received)
        return new

    def answer(self, request_id: Any) -> dict[str, Any] | None:
        """The answer to ``request_id`` (outside batches), or None if there is none yet."""
        answers = [m for m in self.received
                   if isinstance(m, dict) and "method" not in m and m.get("id", ...) == request_id]
        assert len(answers) <= 1, f"{len(answers)} answers to id {request_id!r}: {answers}"
        return answers[0] if answers else None

    def call(self, method: str, params: Any = None, *, id: RequestId | None = None) -> dict[str, Any]:
        """Send a request and return its answer, which must have come already."""
        answer = self.answer(self.request(method, params, id=id))
        assert answer is not None, f"no answer to {method} yet"
        return answer

    def result(self, method: str, params: Any = None, *, id: RequestId | None = None) -> Any:
        """``call``, and the result (an error answer fails the assertion)."""
        answer = self.call(method, params, id=id)
        assert "result" in answer, answer
        return answer["result"]

    def error(self, method: str, params: Any = None, *, id: RequestId | None = None) -> dict[str, Any]:
        """``call``, and the error object (a result fails the assertion)."""
        answer = self.call(method, params, id=id)
        assert "error" in answer, answer
        error: dict[str, Any] = answer["error"]
        return error

    def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """The result of ``tools/call`` (a tool's failure is a result with ``isError``)."""
        result: dict[str, Any] = self.result(Method.TOOLS_CALL, {"name": name, "arguments": arguments or {}})
        return result

    def notifications(self, method: str | None = None) -> list[Any]:
        """The params of the notifications received (of ``method`` only, if given), oldest first."""
        return [m.get("params", {}) for m in self.received
                if isinstance(m, dict) and "id" not in m and (method is None or m.get("method") == method)]
