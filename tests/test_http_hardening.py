"""Attacks one client can make on the Streamable HTTP transport, over real
sockets on 127.0.0.1, each with the bound it must hit and a well-behaved
client that keeps being served meanwhile (as ``test_hardening.py`` does for
WebSocket).

Each attack is made small enough to run in a second or two; timeouts run on
the factory's ``task.Clock``: the sockets are real, the waiting is not.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor, task
from twisted.web.client import Agent, HTTPConnectionPool

from mcp_twisted import Context, MCPServer
from mcp_twisted.http import HTTPSettings
from mcp_twisted.metrics import Metrics
from tests.http_support import Collect, HTTPClient, call, init_message, parse_responses, raw_request, serve
from tests.support import find, until

KIB = 1024
HEAD = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def flood_app() -> tuple[MCPServer, dict[str, Any]]:
    app = MCPServer("http-flood")
    state: dict[str, Any] = {"gates": [], "done": []}

    @app.tool()
    def echo(text: str) -> str:
        return text

    @app.tool()
    async def spray(n: int, ctx: Context) -> int:
        """Reports progress n times without waiting for the client, then
        waits for its gate (its stream stays open)."""
        for i in range(1, n + 1):
            ctx.report_progress(i, n, "x" * 64)
        gate: defer.Deferred[int] = defer.Deferred()
        state["gates"].append(gate)
        return await gate

    @app.tool()
    async def count(n: int, size: int, ctx: Context) -> int:
        """Reports progress n times, waiting for room each time."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, "c" * size)
        state["done"].append(n)
        return n

    @app.tool()
    async def shout(size: int, ctx: Context) -> str:
        """One large log message, then waits for its gate."""
        await ctx.log("info", "s" * size)
        gate: defer.Deferred[str] = defer.Deferred()
        state["gates"].append(gate)
        return await gate

    return app, state


@pytest_twisted.async_yield_fixture
async def attacked():
    """``await attacked(settings, **factory_options)``: the flood app served on
    127.0.0.1 with a Clock; returns (factory, resource, url, state, clock)."""
    ports = []

    async def start(settings: HTTPSettings | None = None, **options: Any) -> Any:
        app, state = flood_app()
        clock = task.Clock()
        factory, resource, port = await serve(app, settings, clock=clock, **options)
        _sites[factory] = port.factory
        # Accepted sockets inherit it: a client that stops reading backs up
        # into the server's own buffer after kilobytes, not megabytes.
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * KIB)
        ports.append((port, resource))
        return factory, resource, f"http://127.0.0.1:{port.getHost().port}/mcp", state, clock

    yield start
    for port, resource in ports:
        resource.close_all()
        await port.stopListening()


async def polite_call(url: str, client: HTTPClient | None = None) -> None:
    """A well-behaved client (a new one unless given) is answered."""
    if client is None:
        client = HTTPClient(url)
        await client.initialize()
    reply = await client.call(call("polite", "echo", {"text": "hi"}))
    assert reply["result"]["content"][0]["text"] == "hi"


def replies(client: Collect) -> list[Any]:
    """The HTTP responses a raw client has read."""
    return parse_responses(client.body, client.done.called)


_raw_clients: list[Collect] = []
_sites: dict[Any, Any] = {}


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Any:
    """Abort what a test left connected (a client that never reads never closes)."""
    yield
    while _raw_clients:
        client = _raw_clients.pop()
        if not client.done.called:
            client.transport.abortConnection()


async def raw_client(url: str, receive_buffer: int | None = None) -> Collect:
    port = int(url.split(":")[2].split("/")[0])
    client = await endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collect())
    _raw_clients.append(client)
    if receive_buffer is not None:
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    return client


def host_of(url: str) -> str:
    return url.split("/")[2]


def site_of(factory: Any) -> Any:
    """The ``MCPSite`` a test is served by (its connection count)."""
    return _sites[factory]


# 1. Bodies over the limit are refused before they are read.


@pytest.mark.parametrize("framing", ["declared", "expect-100-continue", "declared-and-sent", "chunked"])
@pytest_twisted.ensureDeferred
async def test_an_oversize_body_gets_413_without_being_read(attacked, framing):
    _, _, url, _, _ = await attacked(max_message_size=64 * KIB)
    polite = HTTPClient(url)
    await polite.initialize()
    attacker = await raw_client(url)
    headers = {**HEAD, "Mcp-Session-Id": polite.session}
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(64 << 20)
        if framing == "expect-100-continue":
            headers["Expect"] = "100-continue"
    attacker.transport.write(raw_request("POST", headers=headers, host=host_of(url)))
    sent = 0
    if framing in ("declared-and-sent", "chunked"):
        # The body keeps coming, as from a client that does not wait to be told.
        chunk = b" " * (16 * KIB)
        while not attacker.done.called and sent < 8 << 20:
            attacker.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if framing == "chunked" else chunk)
            sent += len(chunk)
            await task.deferLater(reactor, 0)
    await attacker.done.addTimeout(5, reactor)
    assert [reply.status for reply in replies(attacker)] == [413]  # no "100 Continue" either side of it
    assert sent < 4 << 20  # refused at the limit, not read to the end
    await polite_call(url, polite)


@pytest_twisted.ensureDeferred
async def test_endless_headers_are_cut_off_and_others_are_served(attacked):
    _, _, url, _, _ = await attacked()
    attackers = [await raw_client(url) for _ in range(16)]
    for attacker in attackers:
        attacker.transport.write(b"POST /mcp HTTP/1.1\r\nHost: " + host_of(url).encode() + b"\r\n")
    for _ in range(60):  # 30 KiB of header lines each, a line at a time
        for attacker in attackers:
            if not attacker.done.called:
                attacker.transport.write(b"X-Pad: " + b"a" * 500 + b"\r\n")
        await task.deferLater(reactor, 0)
    await polite_call(url)
    await defer.DeferredList([a.done for a in attackers]).addTimeout(5, reactor)
    for attacker in attackers:
        assert attacker.body.startswith(b"HTTP/1.1 400 ")  # twisted.web's 16 KiB head limit


# 2. Sessions are capped, and idle ones end.


@pytest_twisted.ensureDeferred
async def test_many_sessions_hit_the_cap_then_idle_ones_expire(attacked):
    _, resource, url, _, clock = await attacked(HTTPSettings(session_idle_timeout=60), max_connections=20)
    polite = HTTPClient(url)
    await polite.initialize()
    statuses = []
    for _ in range(40):
        response, _ = await HTTPClient(url).post(init_message())
        statuses.append(response.code)
    assert statuses.count(200) == 19 and statuses.count(503) == 21
    assert len(resource.sessions) == 20
    await polite_call(url, polite)  # a live session is still served at the cap
    clock.advance(60)  # the flood's sessions never came back; the polite one was just used
    assert len(resource.sessions) == 0
    await polite_call(url)


# 3. A client that does not read its stream is bounded.


async def slow_reader(url: str, session: str, message: dict[str, Any],
                      resource: Any) -> tuple[Collect, Any]:
    """POSTs ``message`` and stops reading; returns the client and the server's
    stream, once the handler has sent something.

    Both kernel buffers are shrunk (the server's by ``attacked``), so unread
    output backs up into the server's own buffer after kilobytes instead of
    megabytes.
    """
    reader = await raw_client(url, receive_buffer=16 * KIB)
    reader.transport.pauseProducing()
    body = json.dumps(message).encode()
    reader.transport.write(raw_request("POST", headers={**HEAD, "Mcp-Session-Id": session}, body=body,
                                       host=host_of(url)))
    http_session = resource.sessions[session]
    await until(lambda: http_session.streams)
    (stream,) = http_session.streams
    return reader, stream


@pytest_twisted.ensureDeferred
async def test_a_handler_that_waits_for_room_runs_at_the_pace_of_a_slow_reader(attacked):
    _, resource, url, state, _ = await attacked(HTTPSettings(max_output_buffer=256 * KIB))
    owner = HTTPClient(url)
    await owner.initialize()
    reader, stream = await slow_reader(url, owner.session, call(1, "count", {"n": 1000, "size": 100},
                                                                _meta={"progressToken": 1}), resource)
    await until(lambda: stream.paused)
    peak = 0
    for _ in range(30):
        peak = max(peak, stream.buffered())
        await task.deferLater(reactor, 0.01)
    assert peak < 128 * KIB  # near Twisted's 64 KiB high-water mark, far below 1000 * 170 bytes
    assert state["done"] == []  # the handler is waiting, not buffering
    await polite_call(url)
    await polite_call(url, owner)  # the same session: other requests are answered meanwhile
    reader.transport.resumeProducing()  # reading again: the rest arrives, in order
    await until(lambda: b"\r\n0\r\n\r\n" in reader.body, timeout=10)
    (reply,) = replies(reader)
    steps = [m["params"]["progress"] for m in (e.message for e in reply.events if e.data) if "method" in m]
    assert steps == list(range(1, 1001))  # nothing dropped, in order


@pytest_twisted.ensureDeferred
async def test_progress_from_a_handler_that_does_not_wait_is_dropped_over_the_limit(attacked, events):
    _, resource, url, state, _ = await attacked(HTTPSettings(max_output_buffer=64 * KIB))
    owner = HTTPClient(url)
    await owner.initialize()
    reader, stream = await slow_reader(url, owner.session, call(1, "spray", {"n": 50_000},
                                                                _meta={"progressToken": 1}), resource)
    await until(lambda: state["gates"])  # all sprayed
    assert find(events, "Dropped {count} progress")
    assert stream.paused and stream.buffered() < 64 * KIB + 1024
    # The Deferreds the handler ignored are not kept while the stream is paused.
    assert len(resource.sessions[owner.session]._writable_waiters) == 0
    await polite_call(url)
    state["gates"][0].callback(50_000)
    reader.transport.resumeProducing()
    await until(lambda: b"\r\n0\r\n\r\n" in reader.body)
    (reply,) = replies(reader)
    messages = [e.message for e in reply.events if e.data]
    assert 100 < len(messages) < 2000  # ~120 bytes each: what fit in the limit, not 6 MB of them
    assert messages[-1]["result"]["content"][0]["text"] == "50000"


@pytest_twisted.ensureDeferred
async def test_a_stream_left_unread_over_the_limit_for_too_long_is_dropped(attacked, events):
    settings = HTTPSettings(max_output_buffer=64 * KIB, output_stall_timeout=0.5)
    metrics = Metrics()
    _, resource, url, state, clock = await attacked(settings, max_message_size=1 << 20, metrics=metrics)
    owner = HTTPClient(url)
    await owner.initialize()
    await owner.call({"jsonrpc": "2.0", "id": 0, "method": "logging/setLevel", "params": {"level": "info"}})
    reader, stream = await slow_reader(url, owner.session, call(1, "shout", {"size": 512 * KIB}), resource)
    await until(lambda: stream.paused and stream.buffered() > 64 * KIB)
    clock.advance(0.4)
    assert not reader.done.called
    clock.advance(0.1)
    assert find(events, "Dropping an SSE stream") and metrics.output_stalls._value.get() == 1
    await until(lambda: not resource.sessions[owner.session].streams)  # the server let go of it
    reader.transport.resumeProducing()  # it never read, so it never noticed
    await reader.done.addTimeout(5, reactor)
    # The handler was not cancelled: its answer waits in the event store.
    await until(lambda: state["gates"])
    state["gates"][0].callback("kept")
    await polite_call(url, owner)


@pytest_twisted.ensureDeferred
async def test_the_stall_clock_starts_when_a_stream_goes_over_the_limit_not_when_it_pauses(attacked):
    # A GET stream that is not read gets what no request owns: it may sit
    # paused below the limit for any time, and is dropped once it stays over.
    settings = HTTPSettings(max_output_buffer=64 * KIB, output_stall_timeout=30, keepalive_interval=0)
    _, resource, url, _, clock = await attacked(settings)
    owner = HTTPClient(url)
    await owner.initialize()
    reader = await raw_client(url, receive_buffer=16 * KIB)
    reader.transport.pauseProducing()
    reader.transport.write(raw_request("GET", headers={"Accept": "text/event-stream",
                                                       "Mcp-Session-Id": owner.session}, host=host_of(url)))
    http_session = resource.sessions[owner.session]
    await until(lambda: http_session.standalone is not None)
    stream = http_session.standalone

    def announce(size: int) -> None:  # not droppable, no key: always written
        http_session.session.notify("notifications/message", {"level": "info", "data": "n" * size})

    while not stream.paused:
        announce(8 * KIB)
        await task.deferLater(reactor, 0.01)
    assert stream.buffered() <= 64 * KIB
    clock.advance(3600)  # paused, under the limit: no reason to drop it
    assert stream.open
    announce(64 * KIB)  # now over it
    clock.advance(29)
    assert stream.open
    clock.advance(1)
    await until(lambda: not stream.open)
    await polite_call(url, owner)


# 4. The replay store is bounded per session.


@pytest_twisted.ensureDeferred
async def test_the_replay_store_keeps_the_newest_events_within_its_bounds(attacked):
    settings = HTTPSettings(max_events=100, max_event_bytes=64 * KIB, event_ttl=60)
    _, resource, url, state, clock = await attacked(settings)
    owner = HTTPClient(url)
    await owner.initialize()
    store = resource.sessions[owner.session].events
    # A client that drops its stream while the handler talks on: 2000 events of ~1 KiB.
    _, stream = await owner.open("POST", call(1, "count", {"n": 2000, "size": 1000},
                                              _meta={"progressToken": 1}))
    (seen, *_) = await stream.until_events(1)
    stream.transport.stopProducing()
    await until(lambda: state["done"])
    assert len(store._events) <= 100 and store._bytes <= 64 * KIB
    await polite_call(url)
    await polite_call(url, owner)
    # What is replayed is the newest, the answer last; the rest is gone.
    _, replay = await owner.open("GET", **{"Last-Event-ID": seen.id})
    await replay.done.addTimeout(5, reactor)
    messages = [e.message for e in replay.events]
    assert 50 <= len(messages) <= 100 and messages[-1]["result"]["content"][0]["text"] == "2000"
    assert [m["params"]["progress"] for m in messages[:-1]] == list(range(2002 - len(messages), 2001))
    clock.advance(61)  # and after event_ttl, nothing
    response, replay = await owner.open("GET", **{"Last-Event-ID": seen.id})
    assert response.code == 200 and await replay.done.addTimeout(5, reactor) == b""
    assert store._bytes == 0


# 5. A flood of GETs.


@pytest_twisted.ensureDeferred
async def test_a_flood_of_gets_gets_one_stream_per_session_and_refusals(attacked):
    _, resource, url, _, _ = await attacked()
    owner = HTTPClient(url)
    await owner.initialize()
    _, stream = await owner.open("GET")
    statuses: dict[int, int] = {}
    for session in [owner.session] * 100 + ["f" * 32] * 50 + [None] * 50:
        flooder = HTTPClient(url, session=session)
        response, body = await flooder.open("GET")
        await body.done.addTimeout(5, reactor)  # each refusal is a complete, short answer
        statuses[response.code] = statuses.get(response.code, 0) + 1
    assert statuses == {409: 100, 404: 50, 400: 50}
    http_session = resource.sessions[owner.session]
    assert len(http_session.streams) == 1 and not stream.done.called
    await polite_call(url)
    await polite_call(url, owner)


# 6. Idle connections do not stay.


@pytest_twisted.ensureDeferred
async def test_idle_connections_are_closed_after_the_site_timeout(attacked):
    _, _, url, _, clock = await attacked()
    idle = [await raw_client(url) for _ in range(40)]
    half = [await raw_client(url) for _ in range(10)]
    for client in half:  # a request head that never ends
        client.transport.write(b"POST /mcp HTTP/1.1\r\nHost: " + host_of(url).encode() + b"\r\n")
    await polite_call(url)
    clock.advance(59)
    assert not any(client.done.called for client in idle + half)
    clock.advance(1)  # MCPSite's idle timeout, on the transport's clock
    await defer.DeferredList([client.done for client in idle + half]).addTimeout(5, reactor)
    await polite_call(url)


# 6. Connections: one listener holds a bounded number, both transports together.


@pytest_twisted.ensureDeferred
async def test_connections_over_the_cap_are_closed_at_once_and_connected_clients_go_on(attacked, events):
    metrics = Metrics()
    factory, _, url, _, _ = await attacked(max_connections=2, metrics=metrics)  # 2 sessions: cap 68
    pool = HTTPConnectionPool(reactor, persistent=True)
    # Connected before the flood, it keeps its connection.
    owner = HTTPClient(url, agent=Agent(reactor, pool=pool))
    await owner.initialize()
    try:
        flood = [await raw_client(url) for _ in range(67)]
        await until(lambda: len(site_of(factory).connections) == 68)
        late = await raw_client(url)
        await late.done.addTimeout(5, reactor)  # closed without a byte
        assert late.body == b""
        assert len(site_of(factory).connections) == 68
        refused = metrics.registry.get_sample_value("mcp_handshake_refusals_total", {"reason": "connections"})
        assert refused >= 1
        assert find(events, "Closed {count} new connection(s): {limit} open already (the connection cap)")
        await polite_call(url, owner)  # the connected client is still served
        flood.pop().transport.loseConnection()
        await until(lambda: len(site_of(factory).connections) == 67)
        newcomer = await raw_client(url)  # room again
        newcomer.transport.write(raw_request("POST", headers=HEAD, body=json.dumps(init_message()).encode(),
                                             host=host_of(url)))
        await until(lambda: replies(newcomer))
        assert replies(newcomer)[0].status == 200
    finally:
        await pool.closeCachedConnections()


def test_the_default_connection_cap_stays_below_the_open_file_limit(monkeypatch):
    import resource

    from mcp_twisted.http import _default_connection_cap

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1_000_000, 1_000_000))
    assert _default_connection_cap(100) == 264  # twice the sessions plus room
    monkeypatch.setattr(resource, "getrlimit", lambda _: (20_000, 20_000))
    assert _default_connection_cap(10_000) == 19_744  # room kept for files and outgoing connections
    assert _default_connection_cap(0) == 0  # no session cap: no connection cap
