"""The MCP client: backoff and the reconnecting service (on ``task.Clock``), reconnection
over real sockets, the client API against the demo app, and TLS (trustme)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import itertools
import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import trustme
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import defer, endpoints, protocol, reactor, ssl, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.test import iosim
from zope.interface import implementer

from mcp_twisted import Context, MCPServer
from mcp_twisted.client import (
    ConnectionFailed,
    ConnectionLost,
    ConnectionState,
    MCPClient,
    MCPClientProtocol,
    MCPClientService,
    NotConnected,
    RequestTimedOut,
    backoff_policy,
)
from mcp_twisted.client._service import MIN_UPTIME
from mcp_twisted.demo import server as demo_app
from mcp_twisted.jsonrpc import RPCError
from mcp_twisted.session import Session, State
from mcp_twisted.testing import collect_into
from mcp_twisted.websocket import MCPServerFactory
from tests.support import RecordingFactory, stop

EXAMPLES = Path(__file__).parent.parent / "examples"


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# ---------------------------------------------------------------------------
# Helpers: a server that records upgrades and closes, and a harness that
# tears down every service and listener a test started.


def fast_backoff() -> Any:
    return backoff_policy(initial_delay=0.05, max_delay=0.2, jitter=False)


class Harness:
    def __init__(self) -> None:
        self.listeners: list[tuple[Any, Any]] = []
        self.services: list[MCPClientService] = []

    async def serve(self, factory: Any, port: int = 0, endpoint: Any = None) -> int:
        if endpoint is None:
            endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
        listening = await endpoint.listen(factory)
        self.listeners.append((listening, factory))
        return listening.getHost().port

    async def stop_serving(self, factory: Any) -> None:
        for entry in [e for e in self.listeners if e[1] is factory]:
            self.listeners.remove(entry)
            await stop(entry[0], factory if isinstance(factory, MCPServerFactory) else None)

    def service(self, url: str, **options: Any) -> MCPClientService:
        options.setdefault("ping_interval", 0)
        options.setdefault("ping_timeout", 0)
        options.setdefault("backoff", fast_backoff())
        options.setdefault("request_timeout", 10.0)
        options.setdefault("era", "legacy")  # these tests are about the handshake era
        service = MCPClientService(reactor, url, **options)
        self.services.append(service)
        service.startService()
        return service

    async def client(self, url: str, **options: Any) -> MCPClient:
        return await self.service(url, **options).when_ready().addTimeout(5, reactor)

    async def close(self) -> None:
        for service in self.services:
            await service.stopService()
        for listening, factory in self.listeners:
            await stop(listening, factory if isinstance(factory, MCPServerFactory) else None)


@pytest_twisted.async_yield_fixture
async def harness():
    h = Harness()
    yield h
    await h.close()


@pytest.fixture
def logged_errors() -> Any:
    """Errors logged during the test, as text: an exception raised in a
    ``connectionLost`` (such as automat's ``NoTransition``) is one."""
    errors: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is not None or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            errors.append(f"{formatEvent(event)} {failure.getTraceback() if failure else ''}")

    globalLogPublisher.addObserver(observe)
    yield errors
    globalLogPublisher.removeObserver(observe)


class SilentServer(WebSocketServerProtocol):
    """Accepts the upgrade, then never answers: the client stays INITIALIZING."""

    def onConnect(self, request: ConnectionRequest) -> str:
        return "mcp"


    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not self.factory.first_message.called:
            self.factory.first_message.callback(payload)


def silent_server() -> WebSocketServerFactory:
    factory = WebSocketServerFactory()
    factory.protocol = SilentServer
    factory.first_message = Deferred()
    return factory


class OldServer(MCPServer):
    """Answers ``initialize`` with a revision no client knows."""

    def describe(self, session: Session) -> dict[str, Any]:
        return {**super().describe(session), "protocolVersion": "1999-01-01"}


# ---------------------------------------------------------------------------
# 1. Backoff: the policy, and the service's schedule on a task.Clock.


def test_backoff_grows_exponentially_then_caps():
    policy = backoff_policy(initial_delay=0.5, max_delay=5.0, factor=2.0, jitter=False)
    assert [policy(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert policy(10_000) == 5.0  # no OverflowError however long the outage
    assert backoff_policy(1.0, 100.0, factor=3.0, jitter=False)(4) == 27.0


def test_backoff_full_jitter_draws_from_zero_to_capped():
    fractions = iter([0.0, 0.5, 0.999999, 0.25])
    policy = backoff_policy(initial_delay=1.0, max_delay=3.0, factor=2.0,
                            random_fraction=lambda: next(fractions))
    assert policy(2) == 0.0
    assert policy(2) == 1.0
    assert policy(5) == pytest.approx(2.999997)  # capped at 3 before the jitter
    assert policy(1) == 0.25

    rng = random.Random(7)
    policy = backoff_policy(initial_delay=0.5, max_delay=4.0, random_fraction=rng.random)
    for attempt, capped in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        draws = [policy(attempt) for _ in range(300)]
        assert all(0.0 <= d < capped for d in draws)
        assert max(draws) > 0.8 * capped and min(draws) < 0.2 * capped  # spread over the range


def test_default_backoff_is_jittered_and_capped_at_30s():
    policy = backoff_policy()
    assert all(0.0 <= policy(1) < 0.5 for _ in range(100))
    assert all(0.0 <= policy(50) < 30.0 for _ in range(100))
    assert len({policy(3) for _ in range(20)}) > 1


@implementer(IStreamClientEndpoint)
class ScriptedEndpoint:
    """Refuses every connection, or (with ``server`` set) connects it in memory
    (``twisted.test.iosim``) to a real ``MCPServerFactory``."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.attempts: list[float] = []
        self.server: MCPServerFactory | None = None
        self.pumps: list[iosim.IOPump] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts.append(self.clock.seconds())
        if self.server is None:
            return fail(ConnectionRefusedError("111: Connection refused"))
        server_address = IPv4Address("TCP", "10.0.0.1", 80)
        client_address = IPv4Address("TCP", "10.0.0.2", 40000)
        server = self.server.buildProtocol(client_address)
        client = factory.buildProtocol(server_address)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True, server_address, client_address),
            client, iosim.FakeTransport(client, False, client_address, server_address),
            greet=False, clock=self.clock,
        )
        self.pumps.append(pump)
        return succeed(client)

    def gaps(self, start: int = 0) -> list[float]:
        times = self.attempts[start:]
        return [b - a for a, b in itertools.pairwise(times)]


def run_attempts(clock: task.Clock, endpoint: ScriptedEndpoint, count: int, flush: bool = False) -> None:
    """Advance the clock, one scheduled call at a time, until ``count`` attempts were made
    (with ``flush``, the connections' bytes are moved before and after every step)."""

    def move_bytes() -> None:
        for pump in endpoint.pumps if flush else ():
            pump.flush()

    move_bytes()
    while len(endpoint.attempts) < count:
        calls = clock.getDelayedCalls()
        assert calls, f"nothing scheduled after {len(endpoint.attempts)} attempts"
        clock.advance(min(call.getTime() for call in calls) - clock.seconds())
        move_bytes()


def clocked_service(clock: task.Clock, endpoint: ScriptedEndpoint, **options: Any) -> MCPClientService:
    options.setdefault("backoff", backoff_policy(initial_delay=1.0, max_delay=8.0, factor=2.0, jitter=False))
    return MCPClientService(
        MemoryReactorClock(), "ws://127.0.0.1:9/mcp", clock=clock, endpoint=endpoint,
        ping_interval=0, ping_timeout=0, era="legacy", **options,
    )


def test_service_delays_grow_cap_and_reset_after_a_session():
    clock = task.Clock()
    endpoint = ScriptedEndpoint(clock)
    service = clocked_service(clock, endpoint)
    ready = service.when_ready()
    service.startService()
    run_attempts(clock, endpoint, 7)
    assert endpoint.attempts[0] == 0.0
    assert endpoint.gaps() == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert service.failures == 7
    assert not ready.called

    # The server comes back: the next attempt gets a session and the count resets.
    app = MCPServer("clocked", "1.0")
    app.tool()(lambda text: text)
    endpoint.server = MCPServerFactory(app, clock=clock, ping_interval=0, ping_timeout=0)
    run_attempts(clock, endpoint, 8)
    assert endpoint.gaps(6) == [8.0]
    endpoint.pumps[-1].flush()  # WebSocket upgrade and MCP handshake, in memory
    assert ready.called and ready.result is service.client
    assert service.failures == 0 and service.client.server_info["name"] == "clocked"
    answer = service.client.ping()
    endpoint.pumps[-1].flush()
    assert answer.result == {}

    # The session drops after MIN_UPTIME: delays start again from the initial delay.
    clock.advance(MIN_UPTIME)
    endpoint.server = None
    dropped_at = clock.seconds()
    endpoint.pumps[-1].serverIO.loseConnection()
    endpoint.pumps[-1].flush()
    assert not service.client.connected
    run_attempts(clock, endpoint, 11)
    assert [t - dropped_at for t in endpoint.attempts[8:]] == [1.0, 3.0, 7.0]
    stopped = service.stopService()
    assert stopped.called
    clock.advance(100)
    assert len(endpoint.attempts) == 11


def test_service_gives_up_after_max_attempts_naming_the_last_error():
    clock = task.Clock()
    endpoint = ScriptedEndpoint(clock)
    service = clocked_service(clock, endpoint, max_attempts=3, wait_for_connection=True)
    ready = service.when_ready()
    waiting = service.client.call_tool("echo", {"text": "hi"})
    service.startService()
    run_attempts(clock, endpoint, 3)
    assert endpoint.gaps() == [1.0, 2.0]
    clock.advance(0)
    assert not service.running
    for d in (ready, waiting):
        error = d.result.value  # fired at the give-up, not at the request timeout
        d.addErrback(lambda f: None)
        assert isinstance(error, ConnectionFailed)
        assert "after 3 failed attempts" in str(error)
        assert "Connection refused" in str(error), str(error)
    clock.advance(3600)
    assert len(endpoint.attempts) == 3  # no more attempts once given up


def test_after_giving_up_new_requests_fail_at_once_and_restart_retries_afresh():
    clock = task.Clock()
    endpoint = ScriptedEndpoint(clock)
    service = clocked_service(clock, endpoint, max_attempts=2)
    service.startService()
    run_attempts(clock, endpoint, 2)
    clock.advance(0)
    assert not service.running
    # Asked after the give-up: must not wait for a session that will never come.
    for d in (service.when_ready(), service.client.ping()):
        assert d.called, "waits forever (or until the request timeout) after the service gave up"
        assert isinstance(d.result.value, ConnectionFailed)
        d.addErrback(lambda f: None)

    service.startService()  # a restart starts a fresh series of attempts
    run_attempts(clock, endpoint, 3)
    assert service.running and service.failures == 1
    run_attempts(clock, endpoint, 4)
    assert endpoint.gaps(2) == [1.0]
    clock.advance(0)
    assert not service.running


def clocked_app(clock: task.Clock, app: MCPServer | None = None, **options: Any) -> MCPServerFactory:
    if app is None:
        app = MCPServer("clocked", "1.0")
        app.tool()(lambda text: text)
    return MCPServerFactory(app, clock=clock, ping_interval=0, ping_timeout=0, **options)


def failure_of(d: Deferred[Any]) -> BaseException:
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures, "the Deferred has not failed"
    return failures[0].value


@pytest.mark.parametrize(("server", "reason"), [
    (lambda clock: clocked_app(clock, path="/elsewhere"), "404"),
    (lambda clock: clocked_app(clock, OldServer("old", "1.0")),
     "initialize failed: Server chose unsupported revision '1999-01-01'"),
], ids=["refused-upgrade", "rejected-initialize"])
def test_failed_upgrades_and_handshakes_grow_the_backoff_then_give_up(logged_errors, server, reason):
    clock = task.Clock()
    endpoint = ScriptedEndpoint(clock)
    endpoint.server = server(clock)  # TCP connects every time
    service = clocked_service(clock, endpoint, max_attempts=4)
    ready = service.when_ready()
    service.startService()
    run_attempts(clock, endpoint, 4, flush=True)
    assert endpoint.gaps() == [1.0, 2.0, 4.0]  # ClientService alone: 1.0 each time
    clock.advance(0)
    assert not service.running
    error = failure_of(ready)
    assert isinstance(error, ConnectionFailed)
    assert str(error).startswith("Gave up on ws://127.0.0.1:9/mcp after 4 failed attempts: "), str(error)
    assert reason in str(error), str(error)
    clock.advance(100)
    assert len(endpoint.attempts) == 4
    assert logged_errors == []  # no automat NoTransition when the refused connections close


def test_after_a_session_the_attempts_before_giving_up_are_counted_afresh():
    clock = task.Clock()
    endpoint = ScriptedEndpoint(clock)
    endpoint.server = clocked_app(clock)
    service = clocked_service(clock, endpoint, max_attempts=2)
    service.startService()
    endpoint.pumps[-1].flush()
    assert service.client.connected
    endpoint.server = None
    endpoint.pumps[-1].serverIO.loseConnection()
    endpoint.pumps[-1].flush()
    run_attempts(clock, endpoint, 2)
    clock.advance(0)
    assert service.running  # the lost session is not a failed attempt: one failure so far
    run_attempts(clock, endpoint, 3)
    clock.advance(0)
    assert not service.running
    assert "after 2 failed attempts: Connection was refused" in str(failure_of(service.when_ready()))


def test_when_connected_fires_with_the_protocol_once_its_session_is_up():
    clock = task.Clock()
    endpoint = ScriptedEndpoint(clock)
    endpoint.server = clocked_app(clock)
    service = clocked_service(clock, endpoint)
    connected = service.whenConnected()
    service.startService()
    assert not connected.called  # TCP is up, the WebSocket and MCP handshakes are not
    endpoint.pumps[-1].flush()
    protocol = connected.result
    assert isinstance(protocol, MCPClientProtocol) and protocol.connection_state is ConnectionState.READY
    assert service.whenConnected().result is protocol


def test_stopping_while_initializing_closes_with_1000_and_counts_no_failure(logged_errors):
    clock = task.Clock()
    endpoint = ScriptedEndpoint(clock)
    endpoint.server = silent_server()
    service = clocked_service(clock, endpoint)
    service.startService()
    pump = endpoint.pumps[-1]
    pump.flush()
    assert service.factory.current.connection_state is ConnectionState.INITIALIZING
    stopped = service.stopService()
    pump.flush()
    assert stopped.called and not service.running
    assert pump.server.remoteCloseCode == 1000
    assert service.factory.current is None
    assert service.failures == 0 and service.last_error is None
    clock.advance(100)
    assert len(endpoint.attempts) == 1
    assert logged_errors == []


# A server that answers the upgrade with 101 but selects a subprotocol the client did not offer.
class WrongSubprotocol(protocol.Protocol):
    def connectionMade(self) -> None:
        self.buffer = b""
        self.factory.upgrades.append(reactor.seconds())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head = self.buffer.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        magic = headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        accept = base64.b64encode(hashlib.sha1(magic.encode()).digest()).decode()
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: chat\r\n\r\n".encode()
        )


def refusing_server(kind: str) -> Any:
    if kind == "401":
        example = load_example("token_auth")

        class Counting(example.TokenProtocol):
            def onConnect(self, request: ConnectionRequest) -> str | None:
                self.factory.upgrades.append(reactor.seconds())
                return super().onConnect(request)

        factory = example.make_factory()
        factory.protocol = Counting
        factory.upgrades = []
        factory.setProtocolOptions(autoPingInterval=0, autoPingTimeout=0)
        return factory
    if kind == "404":
        return RecordingFactory(demo_app, path="/elsewhere")
    factory = protocol.Factory.forProtocol(WrongSubprotocol)
    factory.upgrades = []
    return factory


@pytest.mark.parametrize(("kind", "expected"), [
    ("401", "401"), ("404", "404"), ("wrong-subprotocol", "subprotocol"),
])
@pytest_twisted.ensureDeferred
async def test_refused_upgrade_counts_as_a_failed_attempt(harness, logged_errors, kind, expected):
    factory = refusing_server(kind)
    port = await harness.serve(factory)
    asked: list[int] = []
    policy = backoff_policy(initial_delay=0.05, max_delay=1.0, factor=2.0, jitter=False)

    def backoff(attempt: int) -> float:
        asked.append(attempt)
        return policy(attempt)

    service = harness.service(f"ws://127.0.0.1:{port}/mcp", backoff=backoff, max_attempts=4)
    with pytest.raises(ConnectionFailed) as failed:
        await service.when_ready().addTimeout(5, reactor)
    # ClientService alone would reset its count at each TCP connect and ask for attempt 1 each time.
    # It asks for the 4th delay before it tells whenConnected() that 4 attempts failed; the give-up
    # cancels that retry (4 upgrades, below).
    assert asked == [1, 2, 3, 4]
    assert len(factory.upgrades) == 4
    gaps = [b - a for a, b in itertools.pairwise(factory.upgrades)]
    assert all(gap >= want - 0.01 for gap, want in zip(gaps, [0.05, 0.1, 0.2], strict=True)), gaps
    assert "after 4 failed attempts" in str(failed.value)
    assert expected in str(failed.value), str(failed.value)
    assert not service.client.connected
    assert logged_errors == []  # the refused connections' ends reach no state machine that refuses them


@pytest_twisted.ensureDeferred
async def test_a_rejected_initialize_and_a_stop_while_initializing_log_no_error(harness, logged_errors):
    old = RecordingFactory(OldServer("old", "1.0"))
    port = await harness.serve(old)
    service = harness.service(f"ws://127.0.0.1:{port}/mcp", max_attempts=2)
    with pytest.raises(ConnectionFailed, match="unsupported revision"):
        await service.when_ready().addTimeout(5, reactor)

    silent = silent_server()
    port = await harness.serve(silent)
    service = harness.service(f"ws://127.0.0.1:{port}/mcp")
    await silent.first_message.addTimeout(5, reactor)  # initialize sent, never answered
    protocol = service.factory.current
    await service.stopService()
    assert protocol.connection_state is ConnectionState.CLOSED
    assert protocol.localCloseCode == 1000
    assert logged_errors == []


@pytest_twisted.ensureDeferred
async def test_logged_errors_sees_an_exception_raised_in_connection_lost(logged_errors):
    """The check above is able to fail: the reactor logs what a connectionLost raises."""
    lost: Deferred[None] = Deferred()

    class Raising(protocol.Protocol):
        def connectionLost(self, reason: Any) -> None:
            reactor.callLater(0, lost.callback, None)
            raise RuntimeError("no transition for _clientDisconnected")

    closing = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Closing))
    try:
        client = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", closing.getHost().port)
        await client.connect(protocol.Factory.forProtocol(Raising))
        await lost.addTimeout(5, reactor)
    finally:
        await closing.stopListening()
    assert any("no transition for _clientDisconnected" in error for error in logged_errors), logged_errors


class Closing(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


# ---------------------------------------------------------------------------
# 2. Reconnection over real sockets.


@pytest_twisted.ensureDeferred
async def test_reconnects_reinitializes_and_restores_subscriptions(harness):
    factory = RecordingFactory(demo_app)
    port = await harness.serve(factory)
    url = f"ws://127.0.0.1:{port}/mcp"
    service = harness.service(url, request_timeout=30.0)
    client = await service.when_ready()
    first_session = client.session
    updates: list[str] = []
    update_seen: Deferred[None] = Deferred()

    def on_updated(uri: str) -> None:
        updates.append(uri)
        if not update_seen.called:
            update_seen.callback(None)

    await client.subscribe("demo://readme", on_updated)
    in_flight = client.call_tool("slow_count", {"count": 1, "delay": 30})
    await client.ping()  # the slow call has reached the server

    await harness.stop_serving(factory)  # drops the connection and stops listening
    with pytest.raises(ConnectionLost):
        await in_flight.addTimeout(2, reactor)  # at once, not after the 30 s request timeout
    assert not client.connected

    # While disconnected: by default a request waits for the next session...
    waiting = client.call_tool("echo", {"text": "sent after the restart"})
    # ...or fails at once when the client may not wait.
    client.wait_for_connection = False
    with pytest.raises(NotConnected):
        await client.ping()
    client.wait_for_connection = True
    assert not waiting.called

    restarted = RecordingFactory(demo_app)
    assert await harness.serve(restarted, port=port) == port
    result = await waiting.addTimeout(5, reactor)
    assert result["content"][0]["text"] == "sent after the restart"
    assert client.session is not first_session and client.session.state is State.READY
    assert restarted.only_session().state is State.READY  # a new MCP handshake on the new server
    assert service.failures == 0

    demo_app.notify_resource_updated("demo://readme")  # reaches only subscribed sessions
    await update_seen.addTimeout(5, reactor)
    assert updates == ["demo://readme"]
    assert (await client.call_tool("echo", {"text": "again"}))["content"][0]["text"] == "again"


@pytest_twisted.ensureDeferred
async def test_request_made_as_the_connection_drops_waits_for_the_next_session(harness):
    factory = RecordingFactory(demo_app)
    port = await harness.serve(factory)
    client = await harness.client(f"ws://127.0.0.1:{port}/mcp")
    retried: list[Deferred[Any]] = []

    def retry(failure: Any) -> None:
        failure.trap(ConnectionLost)
        # A natural pattern: retry from the errback. The session that just
        # closed must not be used (it would fail with "The session is closed").
        assert not client.connected
        retried.append(client.call_tool("echo", {"text": "retried"}))

    lost = client.call_tool("slow_count", {"count": 1, "delay": 30}).addErrback(retry)
    await client.ping()
    await harness.stop_serving(factory)
    await lost
    await harness.serve(RecordingFactory(demo_app), port=port)
    result = await retried[0].addTimeout(5, reactor)
    assert result["content"][0]["text"] == "retried"


def hanging_app() -> tuple[MCPServer, dict[str, Any]]:
    app = MCPServer("hang-test", "1.0")
    seen: dict[str, Any] = {"started": Deferred(), "cancelled": Deferred()}

    @app.tool()
    async def hang(ctx: Context) -> str:
        seen["started"].callback(ctx.request_id)
        try:
            return await Deferred()
        except defer.CancelledError:
            seen["cancelled"].callback(ctx.request_id)
            raise

    return app, seen


@pytest_twisted.ensureDeferred
async def test_request_timeout_raises_and_cancels_the_server_handler(harness):
    app, seen = hanging_app()
    port = await harness.serve(RecordingFactory(app))
    client = await harness.client(f"ws://127.0.0.1:{port}/mcp")
    with pytest.raises(RequestTimedOut) as timed_out:
        await client.call_tool("hang", timeout=0.3)
    assert timed_out.value.method == "tools/call"
    started = await seen["started"]
    # notifications/cancelled reached the server, which cancelled the handler.
    assert await seen["cancelled"].addTimeout(5, reactor) == started
    assert (await client.ping()) == {}  # the session survives


@pytest_twisted.ensureDeferred
async def test_stop_service_closes_with_1000_and_does_not_reconnect(harness):
    factory = RecordingFactory(demo_app)
    port = await harness.serve(factory)
    service = harness.service(f"ws://127.0.0.1:{port}/mcp", backoff=backoff_policy(0.02, 0.02, jitter=False))
    client = await service.when_ready()
    closed = factory.next_close()
    pending = client.call_tool("slow_count", {"count": 1, "delay": 30})
    await service.stopService()
    assert await closed == 1000
    with pytest.raises(ConnectionLost):
        await pending
    assert not service.running and not client.connected
    await task.deferLater(reactor, 0.3)  # 15 retry delays: any reconnect would have happened
    assert len(factory.upgrades) == 1 and factory.connections == set()
    assert service.last_error is None  # a session that worked and closed cleanly is no failure
    # Nobody waits for a session that will not come.
    with pytest.raises(ConnectionFailed, match="was stopped"):
        await service.when_ready()
    with pytest.raises(ConnectionFailed, match="was stopped"):
        await client.ping()


# ---------------------------------------------------------------------------
# 3. The client API against the demo app.


def sampling(params: dict[str, Any]) -> dict[str, Any]:
    text = params["messages"][0]["content"]["text"]
    return {"role": "assistant", "content": {"type": "text", "text": f"sampled:{text}"}, "model": "test-llm"}


async def answer_elicitation(params: dict[str, Any]) -> dict[str, Any]:
    await task.deferLater(reactor, 0)  # handlers may be coroutines
    return {"action": "accept", "content": {"name": "Ada"}}


@pytest_twisted.async_yield_fixture
async def demo(harness):
    factory = RecordingFactory(demo_app)
    port = await harness.serve(factory)
    events: dict[str, list[Any]] = {"logs": [], "sampling": [], "elicitation": []}

    def record_sampling(params: dict[str, Any]) -> dict[str, Any]:
        events["sampling"].append(params)
        return sampling(params)

    def record_elicitation(params: dict[str, Any]) -> Any:
        events["elicitation"].append(params)
        return answer_elicitation(params)

    client = await harness.client(
        f"ws://127.0.0.1:{port}/mcp",
        sampling=record_sampling,
        roots=lambda: [{"uri": "file:///tmp/x", "name": "x"}],
        elicitation=record_elicitation,
        on_log=events["logs"].append,
    )
    yield client, factory, events


def text(result: dict[str, Any]) -> str:
    return "".join(block["text"] for block in result["content"] if block["type"] == "text")


@pytest_twisted.ensureDeferred
async def test_ping_and_server_description(demo):
    client, _, _ = demo
    assert await client.ping() == {}
    assert client.server_info == {"name": "mcp-twisted-demo", "version": "1.0.0"}
    assert set(client.server_capabilities) >= {"tools", "resources", "prompts", "logging", "completions"}


@pytest_twisted.ensureDeferred
async def test_list_tools_pages_and_iter_tools_follows_cursors(demo, monkeypatch):
    client, _, _ = demo
    all_names = {"echo", "slow_count", "sample_llm", "list_client_roots", "ask_user", "log_demo", "fail_tool"}
    page = await client.list_tools()
    assert {tool["name"] for tool in page["tools"]} == all_names and "nextCursor" not in page

    monkeypatch.setattr(demo_app, "page_size", 2)
    first = await client.list_tools()
    assert len(first["tools"]) == 2 and first["nextCursor"]
    second = await client.list_tools(first["nextCursor"])
    assert {t["name"] for t in second["tools"]}.isdisjoint(t["name"] for t in first["tools"])
    names = [tool["name"] async for tool in client.iter_tools()]
    assert len(names) == 7 and set(names) == all_names  # four pages, each once
    assert [p["name"] async for p in client.iter_prompts()] == ["greet"]
    assert [r["uri"] async for r in client.iter_resources()] == ["demo://readme"]


@pytest_twisted.ensureDeferred
async def test_call_tool_with_progress_and_tool_errors(demo):
    client, _, _ = demo
    assert text(await client.call_tool("echo", {"text": "hi"})) == "hi"
    progress: list[tuple[Any, Any, Any]] = []
    result = await client.call_tool("slow_count", {"count": 3, "delay": 0.01},
                                    on_progress=lambda *p: progress.append(p))
    assert text(result) == "Counted to 3"
    assert progress == [(1, 3, "step 1 of 3"), (2, 3, "step 2 of 3"), (3, 3, "step 3 of 3")]
    failed = await client.call_tool("fail_tool")
    assert failed["isError"] is True and text(failed) == "This tool always fails"


@pytest_twisted.ensureDeferred
async def test_server_errors_raise_rpc_error_with_code_message_and_data(demo):
    client, _, _ = demo
    with pytest.raises(RPCError) as unknown:
        await client.call_tool("no_such_tool")
    assert unknown.value.code == -32602 and "no_such_tool" in unknown.value.message
    with pytest.raises(RPCError) as missing:
        await client.read_resource("demo://items/9")
    assert missing.value.code == -32002
    assert missing.value.message == "Resource not found: demo://items/9"
    assert missing.value.data == {"uri": "demo://items/9"}
    with pytest.raises(RPCError) as no_method:
        await client.request("no/such/method")
    assert no_method.value.code == -32601
    assert await client.ping() == {}  # errors leave the session usable


@pytest_twisted.ensureDeferred
async def test_resources_templates_read_and_subscriptions(demo):
    client, _, _ = demo
    resources = await client.list_resources()
    assert [(r["uri"], r["mimeType"]) for r in resources["resources"]] == [("demo://readme", "text/plain")]
    templates = await client.list_resource_templates()
    assert [t["uriTemplate"] for t in templates["resourceTemplates"]] == ["demo://items/{item_id}"]
    readme = await client.read_resource("demo://readme")
    assert readme["contents"][0]["text"].startswith("mcp-twisted demo server")
    item = await client.read_resource("demo://items/2")
    assert item["contents"] == [{"uri": "demo://items/2", "mimeType": "text/plain", "text": "banana"}]

    updated: list[str] = []
    got: Deferred[None] = Deferred()
    subscribed = await client.subscribe("demo://readme", lambda u: (updated.append(u), got.callback(None)))
    assert subscribed == {}
    demo_app.notify_resource_updated("demo://items/1")  # not subscribed
    demo_app.notify_resource_updated("demo://readme")
    await got.addTimeout(5, reactor)
    assert updated == ["demo://readme"]
    await client.unsubscribe("demo://readme")
    demo_app.notify_resource_updated("demo://readme")
    await client.ping()  # an update sent before this answer would have arrived first
    assert updated == ["demo://readme"]


@pytest_twisted.ensureDeferred
async def test_prompts_and_completion(demo):
    client, _, _ = demo
    prompts = await client.list_prompts()
    listed = [(p["name"], [a["name"] for a in p["arguments"]]) for p in prompts["prompts"]]
    assert listed == [("greet", ["name"])]
    prompt = await client.get_prompt("greet", {"name": "Ada"})
    assert prompt["messages"] == [{"role": "user", "content": {
        "type": "text", "text": "Please write a short, warm greeting for Ada."}}]
    completion = await client.complete({"type": "ref/prompt", "name": "greet"}, "name", "al")
    assert completion["values"] == ["Alan", "Alonzo"]
    with pytest.raises(RPCError) as unknown:
        await client.get_prompt("nope")
    assert unknown.value.code == -32602


@pytest_twisted.ensureDeferred
async def test_logging_level_filters_what_on_log_receives(demo):
    client, _, events = demo
    assert await client.set_logging_level("warning") == {}
    await client.call_tool("log_demo", {"message": "quiet", "level": "info"})
    await client.call_tool("log_demo", {"message": "loud", "level": "error"})
    assert events["logs"] == [{"level": "error", "logger": "demo", "data": "loud"}]
    with pytest.raises(RPCError) as bad_level:  # checked here, before anything is sent
        await client.set_logging_level("verbose")
    assert bad_level.value.code == -32602


@pytest_twisted.ensureDeferred
async def test_sampling_roots_and_elicitation_handlers_answer_the_server(demo):
    client, factory, events = demo
    assert text(await client.call_tool("sample_llm", {"prompt": "2+2?"})) == "sampled:2+2?"
    assert events["sampling"][0]["maxTokens"] == 200
    assert text(await client.call_tool("list_client_roots")) == "file:///tmp/x"
    assert text(await client.call_tool("ask_user", {"question": "Your name?"})) == "Ada"
    assert events["elicitation"][0]["requestedSchema"]["required"] == ["name"]
    assert factory.only_session().peer_capabilities == {
        "sampling": {}, "roots": {"listChanged": True}, "elicitation": {"form": {}, "url": {}},
    }


@pytest.mark.parametrize(("handlers", "declared"), [
    ({}, {}),
    ({"sampling": sampling}, {"sampling": {}}),
    ({"roots": list}, {"roots": {"listChanged": True}}),
    ({"elicitation": answer_elicitation}, {"elicitation": {"form": {}, "url": {}}}),
])
@pytest_twisted.ensureDeferred
async def test_capabilities_declared_only_for_handlers_given(harness, handlers, declared):
    factory = RecordingFactory(demo_app)
    port = await harness.serve(factory)
    client = await harness.client(f"ws://127.0.0.1:{port}/mcp", **handlers)
    assert client.capabilities == declared
    assert factory.only_session().peer_capabilities == declared
    if "sampling" not in handlers:
        refused = await client.call_tool("sample_llm", {"prompt": "x"})
        assert refused["isError"] is True and "sampling" in text(refused)


@pytest_twisted.ensureDeferred
async def test_on_list_changed_when_the_server_adds_a_tool(harness):
    app = MCPServer("changing", "1.0")
    app.tool()(lambda text: text)
    port = await harness.serve(RecordingFactory(app))
    changes: list[str] = []
    changed: Deferred[None] = Deferred()

    def on_list_changed(kind: str) -> None:
        changes.append(kind)
        if not changed.called:
            changed.callback(None)

    client = await harness.client(f"ws://127.0.0.1:{port}/mcp", on_list_changed=on_list_changed)
    # when_ready() fires once the client sent notifications/initialized; the server
    # notifies only sessions it has seen initialized, so let one round trip pass.
    await client.ping()

    def shout(text: str) -> str:
        return text.upper()

    app.add_tool(shout)
    await changed.addTimeout(5, reactor)
    assert changes == ["tools"]
    assert "shout" in {tool["name"] async for tool in client.iter_tools()}
    assert text(await client.call_tool("shout", {"text": "hi"})) == "HI"


# ---------------------------------------------------------------------------
# 4. TLS (trustme).


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    files: dict[str, Any] = {"ca": ca, "dir": base}
    for name, authority in (("ca", ca), ("other_ca", other_ca)):
        authority.cert_pem.write_to_path(str(base / f"{name}.pem"))
        files[f"{name}.pem"] = str(base / f"{name}.pem")
    files["server"] = ca.issue_cert("localhost", "127.0.0.1")
    files["localhost_only"] = ca.issue_cert("localhost")
    client = ca.issue_cert("client@example.org")
    client.cert_chain_pems[0].write_to_path(str(base / "client.pem"))
    client.private_key_pem.write_to_path(str(base / "client.key"))
    files["client.pem"], files["client.key"] = str(base / "client.pem"), str(base / "client.key")
    bundle = base / "bundle.pem"  # an unrelated CA first: every CA in the file must be trusted
    bundle.write_bytes(other_ca.cert_pem.bytes() + ca.cert_pem.bytes())
    files["bundle.pem"] = str(bundle)
    return files


def tls_options(cert: trustme.LeafCert, client_ca: trustme.CA | None = None) -> Any:
    private = ssl.PrivateCertificate.loadPEM(cert.private_key_and_cert_chain_pem.bytes())
    if client_ca is None:
        return private.options()
    return private.options(ssl.Certificate.loadPEM(client_ca.cert_pem.bytes()))  # requires a client cert


async def serve_tls(harness: Harness, options: Any) -> tuple[RecordingFactory, int]:
    factory = RecordingFactory(demo_app)
    endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1")
    return factory, await harness.serve(factory, endpoint=endpoint)


@pytest.mark.parametrize("cafile", ["ca.pem", "bundle.pem"])
@pytest_twisted.ensureDeferred
async def test_wss_with_custom_ca(harness, pki, cafile):
    _, port = await serve_tls(harness, tls_options(pki["server"]))
    client = await harness.client(f"wss://localhost:{port}/mcp", tls_ca=pki[cafile], max_attempts=1)
    assert text(await client.call_tool("echo", {"text": "secure"})) == "secure"


@pytest.mark.parametrize(("host", "cert", "cafile", "detail"), [
    ("127.0.0.1", "localhost_only", "ca.pem", "the server's certificate is not valid for '127.0.0.1'"),
    ("localhost", "server", "other_ca.pem", "certificate verify failed (is the server's certificate issued"),
])
@pytest_twisted.ensureDeferred
async def test_wss_refuses_wrong_hostname_and_unknown_ca(harness, pki, host, cert, cafile, detail):
    factory, port = await serve_tls(harness, tls_options(pki[cert]))
    service = harness.service(f"wss://{host}:{port}/mcp", tls_ca=pki[cafile], max_attempts=1)
    with pytest.raises(ConnectionFailed) as failed:
        await service.when_ready().addTimeout(5, reactor)
    message = str(failed.value)
    assert "after 1 failed attempts: TLS verification failed" in message, message
    assert detail in message, message
    assert factory.upgrades == []  # no HTTP reached the server


@pytest_twisted.ensureDeferred
async def test_mutual_tls_client_certificate(harness, pki):
    options = tls_options(pki["server"], client_ca=pki["ca"])
    factory, port = await serve_tls(harness, options)
    url = f"wss://localhost:{port}/mcp"
    client = await harness.client(url, tls_ca=pki["ca.pem"], tls_client_cert=pki["client.pem"],
                                  tls_client_key=pki["client.key"])
    assert text(await client.call_tool("echo", {"text": "mutual"})) == "mutual"
    anonymous = harness.service(url, tls_ca=pki["ca.pem"], max_attempts=1)
    with pytest.raises(ConnectionFailed) as failed:
        await anonymous.when_ready().addTimeout(5, reactor)
    message = str(failed.value)
    # TLS 1.3 names the alert; TLS 1.2 would call it a handshake failure.
    assert "TLS handshake failed" in message, message
    assert "certificate required" in message or "handshake failure" in message, message
    assert len(factory.upgrades) == 1


def test_a_refused_subscription_is_not_restored_on_reconnect():
    """Sans-IO: a client session wired to a server session that refuses subscribe."""
    from twisted.internet.task import Clock

    from mcp_twisted.session import Role, Session

    class Refusing(MCPServer):
        def handle_request(self, request):
            if request.method == "resources/subscribe":
                raise RPCError(-32602, "no subscriptions here")
            return super().handle_request(request)

    clock = Clock()
    client = MCPClient(clock)
    server_app = Refusing("refuses")
    to_server: list[bytes] = []
    to_client: list[bytes] = []
    server = Session(collect_into(to_client), role=Role.SERVER, handler=server_app, clock=clock)
    session = Session(collect_into(to_server), role=Role.CLIENT, handler=client, clock=clock)

    def pump() -> None:
        while to_server or to_client:
            while to_server:
                server.receive(to_server.pop(0))
            while to_client:
                session.receive(to_client.pop(0))

    ready = client.start_session(session)
    pump()
    assert ready.called
    refused = client.subscribe("demo://x", lambda uri: None)
    pump()
    failures = []
    refused.addErrback(failures.append)
    assert failures and failures[0].value.code == -32602
    assert client._subscriptions == {}


@pytest_twisted.ensureDeferred
async def test_a_client_certificate_file_with_its_chain_sends_the_intermediates(harness, pki):
    intermediate = pki["ca"].create_child_ca()
    leaf = intermediate.issue_cert("chained@example.org")
    chained = pki["dir"] / "chained.pem"  # the leaf, then the intermediate
    chained.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key = pki["dir"] / "chained.key"
    leaf.private_key_pem.write_to_path(str(key))
    options = tls_options(pki["server"], client_ca=pki["ca"])  # the server trusts only the root
    _, port = await serve_tls(harness, options)
    client = await harness.client(f"wss://localhost:{port}/mcp", tls_ca=pki["ca.pem"],
                                  tls_client_cert=str(chained), tls_client_key=str(key))
    assert text(await client.call_tool("echo", {"text": "chained"})) == "chained"
