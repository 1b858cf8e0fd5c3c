"""The WebSocket transport against hostile or unlucky clients, over real
sockets on 127.0.0.1: malformed Origin headers; upgrades whose token check is
still pending when the client sends more, leaves, or the server shuts down;
a stall clock that outlived the stall; stray continuation frames and pongs;
a backlog that outlived our close frame."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints, protocol, reactor, task
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel

from mcp_twisted.metrics import Metrics
from tests.support import (
    RecordingFactory,
    SilentClient,
    connect,
    find,
    handshake,
    listen,
    make_app,
    raw_response,
    stop,
    until,
)


class Raw(protocol.Protocol):
    """A TCP client that keeps what it receives."""

    def __init__(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data

    @classmethod
    async def open(cls, port: int) -> Raw:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        return await endpoints.connectProtocol(endpoint, cls())


class PendingAuth:
    """A token check that waits for the test (as an OAuth key fetch would)."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def authenticate(self, authorization: str | None) -> Deferred[Any]:
        self.pending.append(Deferred())
        return self.pending[-1]


@pytest.mark.parametrize("origin", ["http://[", "http://a]b", "http://127.0.0.1:99999", "no-host"])
@pytest_twisted.ensureDeferred
async def test_a_malformed_origin_is_refused_403_logged_and_counted_as_a_foreign_one(served, events, origin):
    metrics = Metrics()
    _, port, _ = await served(metrics=metrics)
    assert (await handshake(port, headers={"Origin": origin}))[0] == 403
    assert find(events, "Refused {peer}", reason="origin")
    assert metrics.registry.get_sample_value("mcp_handshake_refusals_total", {"reason": "origin"}) == 1


@pytest_twisted.ensureDeferred
async def test_a_malformed_origin_on_a_wrong_path_is_404_as_over_http(served):
    _, port, _ = await served()
    assert (await handshake(port, path="/other", headers={"Origin": "http://["}))[0] == 404


def _upgrade(port: int) -> bytes:
    return (f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


async def _pending_server() -> tuple[RecordingFactory, Any, int, PendingAuth]:
    auth = PendingAuth()
    factory = RecordingFactory(make_app()[0], auth=auth)
    listening = await listen(factory)
    return factory, listening, listening.getHost().port, auth


@pytest_twisted.ensureDeferred
async def test_what_a_client_sends_before_its_pending_upgrade_is_answered_is_not_a_second_upgrade():
    # Autobahn parsed a second request head in the buffer as another upgrade:
    # two token checks, two 101s on one socket, and memory growing meanwhile.
    factory, listening, port, auth = await _pending_server()
    try:
        client = await Raw.open(port)
        client.transport.write(_upgrade(port) * 2)
        await until(lambda: auth.pending)
        client.transport.write(_upgrade(port) + b"x" * 500_000)
        await task.deferLater(reactor, 0.2)
        (connection,) = factory.handshaking
        assert len(connection.data) < 64 * 1024
        auth.pending[0].callback("alice")
        await until(lambda: factory.connections)
        await task.deferLater(reactor, 0.1)
        assert len(auth.pending) == 1
        assert client.buffer.count(b"HTTP/1.1 101") == 1
    finally:
        await stop(listening, factory)


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_during_its_token_check_leaves_no_session_behind():
    factory, listening, port, auth = await _pending_server()
    try:
        client = await Raw.open(port)
        client.transport.write(_upgrade(port))
        await until(lambda: auth.pending)
        client.transport.loseConnection()
        await until(lambda: not factory.handshaking)
        auth.pending[0].callback("alice")
        await task.deferLater(reactor, 0.1)
        assert not factory.connections
        assert not factory.host.sessions
    finally:
        await stop(listening, factory)


@pytest_twisted.ensureDeferred
async def test_upgrades_waiting_for_their_token_check_get_503_at_shutdown():
    factory, listening, port, auth = await _pending_server()
    try:
        answer = Deferred.fromCoroutine(raw_response(port, _upgrade(port)))
        await until(lambda: auth.pending)
        factory.draining = True
        factory.refuse_pending_upgrades()
        assert (await answer.addTimeout(5, reactor)).startswith(b"HTTP/1.1 503 ")
        auth.pending[0].callback("alice")  # the check ends late: nothing more happens
        await task.deferLater(reactor, 0.1)
        assert not factory.connections and not factory.host.sessions and not factory.admitting
    finally:
        await stop(listening, factory)


@pytest_twisted.ensureDeferred
async def test_the_stall_clock_stops_when_the_client_catches_up(served, events, monkeypatch):
    # A client that drained its buffer (the transport resumed us) and later
    # fell behind again for a moment was closed by the first clock: it had
    # not stayed over the limit for the stall timeout.
    clock = task.Clock()
    factory, port, _ = await served(max_output_buffer=1000, output_stall_timeout=30, init_timeout=0,
                                    clock=clock)
    client = await connect(port)
    (connection,) = factory.connections
    unsent = {"bytes": 5000}
    monkeypatch.setattr(connection, "buffered_bytes", lambda: unsent["bytes"])

    def fall_behind() -> None:
        connection.pauseProducing()  # as the transport does when its buffer fills
        connection._send_message(b'{"jsonrpc": "2.0", "method": "notifications/message"}')

    fall_behind()
    clock.advance(10)
    connection.resumeProducing()  # it read everything
    clock.advance(19)
    fall_behind()
    clock.advance(1)  # 30 s after the first clock started, 1 s after the second
    assert not find(events, "Closing {peer}: {size} bytes of output unread")
    clock.advance(29)
    assert find(events, "Closing {peer}: {size} bytes of output unread")
    client.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_a_continuation_frame_with_no_message_begun_closes_1002_without_a_traceback(served, events):
    # The fragment count read an attribute set only by a message's first
    # frame: AttributeError, a logged traceback, and a dropped TCP connection.
    _, port, _ = await served()
    client = await connect(port)
    mask = b"\x01\x02\x03\x04"
    payload = bytes(b ^ m for b, m in zip(b"ab", mask, strict=False))
    client.transport.write(b"\x80\x82" + mask + payload)  # FIN, continuation, masked "ab"
    assert (await client.closed)[:2] == (True, 1002)
    assert not [e for e in events if e.get("isError") or e.get("log_failure") is not None]


@pytest_twisted.ensureDeferred
async def test_unsolicited_pongs_are_not_a_warning_each_and_the_real_answer_still_counts(served, events):
    # RFC 6455 allows unsolicited pongs; while our ping was pending Autobahn
    # logged a warning for every one, as many as the peer sent.
    clock = task.Clock()
    factory, port, _ = await served(ping_interval=20, ping_timeout=10, init_timeout=0, clock=clock)
    client = await connect(port, client=SilentClient)
    (connection,) = factory.connections
    for _ in range(21):
        clock.advance(1)
    assert connection.autoPingPending is not None
    for i in range(50):
        client.sendPong(b"beat %d" % i)
    client.sendPong(connection.autoPingPending)
    await until(lambda: connection.autoPingPending is None)
    assert not [e for e in events if e.get("log_level") is LogLevel.warn]
    for _ in range(15):
        clock.advance(1)
    assert factory.connections == {connection}


@pytest_twisted.ensureDeferred
async def test_requests_held_by_a_pause_do_not_run_once_the_server_has_closed(served):
    # Messages read before a pause wait in the backlog; when the transport
    # resumed after our close frame (here for a binary frame read in the same
    # read), they were handed to the session and ran, their answers dropped.
    factory, port, state = await served()
    client = await connect(port)
    await client.initialize()
    (connection,) = factory.connections
    connection.paused = True  # as the transport's pauseProducing would
    hang = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "hang"}}'
    connection.onMessage(hang, False)
    connection.onMessage(b"\x00", True)  # closes 1003
    connection.resumeProducing()
    assert (await client.closed)[1] == 1003
    assert state["gates"] == []
