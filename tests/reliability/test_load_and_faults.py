"""Many concurrent connections, some aborted mid-request, over real sockets.

200 WebSocket clients (Autobahn's) talk to one in-process server at once;
each makes 50 tool calls with four in flight, and a seeded fifth of them abort
their TCP connection (RST) at a random call while the server still runs one of
their requests. Every answer is checked per connection (no id missing, none
twice, the right result), and afterwards the server must be back where it
started: serving, with no connection, session, running handler or memory left
behind, its protocol and session objects garbage collected.

Ping is off (``ping_interval=0``): Autobahn's ping timers round to whole
seconds and are not what this test is about.
"""

from __future__ import annotations

import contextlib
import gc
import json
import random
import tracemalloc
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, globalLogPublisher

from mcp_twisted import MCPServer
from mcp_twisted.session import State
from mcp_twisted.websocket import MCPServerFactory, MCPServerProtocol
from tests.support import make_app, until

CONNECTIONS = 200
CALLS = 50
WINDOW = 4  # requests in flight per connection
ABORTED_SHARE = 0.2
SEED = 20240611
# Memory allocated during the storm that may still be allocated after it and a
# gc.collect() (tracemalloc). What legitimately survives is small and does not
# grow with the load: the reactor's grown fd tables, the log events Twisted
# buffers until logging begins (a bounded ring), the test's own weakrefs;
# measured ~0.3 MiB, against a peak of ~17 MiB with the 200 connections open.
# 2 MiB is ~7x that, yet below what keeping 200 B of each of the 10 000
# requests or a tenth of each connection's state would cost.
MEMORY_GROWTH_LIMIT = 2 * 1024 * 1024


class ConnectionClosed(Exception):
    """The client's connection ended while a request waited for its answer."""


def load_app() -> tuple[MCPServer, dict[str, int]]:
    """The shared test app (``echo``...) plus ``slow``, which counts the calls
    running and cancelled."""
    app, _ = make_app("load")
    running = {"slow": 0, "cancelled": 0}

    @app.tool()
    async def slow(n: int, delay_ms: int) -> str:
        running["slow"] += 1
        try:
            await task.deferLater(reactor, delay_ms / 1000)
            return f"slow:{n * 2}"
        except defer.CancelledError:
            running["cancelled"] += 1
            raise
        finally:
            running["slow"] -= 1

    return app, running


class TrackedProtocol(MCPServerProtocol):
    """The real server protocol; it only records itself for the assertions."""

    tracker: Tracker

    def onOpen(self) -> None:
        super().onOpen()
        self.tracker.protocols.append(weakref.ref(self))
        self.tracker.sessions.append(weakref.ref(self.session))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session = self.session
        if session is not None:
            self.tracker.in_flight_at_close.append(session.in_flight)
        super().onClose(wasClean, code, reason)
        if session is not None:
            self.tracker.left_after_close.append((session.state, session.in_flight, session.waiting))


@dataclass
class Tracker:
    protocols: list[weakref.ref[Any]] = field(default_factory=list)
    sessions: list[weakref.ref[Any]] = field(default_factory=list)
    in_flight_at_close: list[int] = field(default_factory=list)
    left_after_close: list[tuple[State, int, int]] = field(default_factory=list)


class LoadClient(WebSocketClientProtocol):
    """An Autobahn client that keeps several requests in flight, matched by id."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred[LoadClient] = Deferred()
        self.closed: Deferred[tuple[bool, int | None]] = Deferred()
        self.pending: dict[Any, Deferred[dict[str, Any]]] = {}
        self.answers: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        self.aborted = False

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        self.answers[message.get("id")].append(message)
        waiter = self.pending.pop(message.get("id"), None)
        if waiter is not None:
            waiter.callback(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {reason}"))
        pending, self.pending = self.pending, {}
        for waiter in pending.values():
            waiter.errback(ConnectionClosed(reason))
        if not self.closed.called:
            self.closed.callback((wasClean, code))

    def call(self, request_id: Any, method: str, params: dict[str, Any]) -> Deferred[dict[str, Any]]:
        waiter: Deferred[dict[str, Any]] = Deferred()
        self.pending[request_id] = waiter
        self.sendMessage(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method,
                                     "params": params}).encode())
        return waiter


@dataclass
class Plan:
    """What one connection does, drawn from the seeded RNG before anything runs.

    An aborted connection makes one call that would take a minute (``stuck``)
    and aborts when the answer to a later call arrives: TCP and the server
    keep order, so that answer proves the server holds the stuck call, and
    the abort always lands on a server with a request in flight.
    """

    calls: list[tuple[str, dict[str, Any], str]]  # (tool, arguments, expected text)
    stuck: int | None = None
    abort_on: int | None = None


def make_plans(rng: random.Random, count: int, tag: str) -> list[Plan]:
    aborted = set(rng.sample(range(count), round(count * ABORTED_SHARE)))
    plans = []
    for index in range(count):
        calls = []
        for i in range(CALLS):
            if rng.random() < 0.5:
                text = f"{tag}{index}-{i}-" + "x" * rng.randrange(200)
                calls.append(("echo", {"text": text}, text))
            else:
                n = rng.randrange(1_000_000)
                calls.append(("slow", {"n": n, "delay_ms": rng.randint(1, 8)}, f"slow:{n * 2}"))
        plan = Plan(calls)
        if index in aborted:
            plan.stuck = rng.randrange(0, CALLS - WINDOW)
            plan.abort_on = plan.stuck + rng.randint(1, WINDOW - 1)
            calls[plan.stuck] = ("slow", {"n": 0, "delay_ms": 60_000}, "never")
        plans.append(plan)
    return plans


async def run_connection(factory: WebSocketClientFactory, port: int, plan: Plan) -> LoadClient:
    """Connect, initialize, make the plan's calls WINDOW at a time, then close or abort."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
    client = await (await endpoint.connect(factory)).opened
    init = await client.call("init", "initialize", {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "load", "version": "0"},
    })
    assert "result" in init, init
    client.sendMessage(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
    calls = iter(enumerate(plan.calls))

    async def lane() -> None:
        for i, (tool, arguments, _) in calls:
            if client.aborted:
                return
            try:
                await client.call(i, "tools/call", {"name": tool, "arguments": arguments})
            except ConnectionClosed:
                assert client.aborted, "a connection the test did not abort was closed"
                return
            if i == plan.abort_on:
                client.aborted = True
                client.transport.abortConnection()

    await defer.gatherResults([defer.ensureDeferred(lane()) for _ in range(WINDOW)], consumeErrors=True)
    if not client.aborted:
        client.sendClose(1000)
    await client.closed
    return client


def check_answers(client: LoadClient, plan: Plan) -> None:
    """Each id answered at most once, with its own result; all of them unless aborted."""
    answers = dict(client.answers)
    assert len(answers.pop("init", [])) == 1
    for request_id, replies in answers.items():
        assert isinstance(request_id, int) and 0 <= request_id < CALLS, replies
        assert len(replies) == 1, f"id {request_id} answered {len(replies)} times"
        (reply,) = replies
        tool, _, expected = plan.calls[request_id]
        assert reply == {"jsonrpc": "2.0", "id": request_id,
                         "result": {"content": [{"type": "text", "text": expected}]}}, (tool, reply)
    if plan.abort_on is None:
        assert sorted(answers) == list(range(CALLS)), "a request on a surviving connection went unanswered"
    else:
        assert plan.abort_on in answers and plan.stuck not in answers


async def storm(port: int, plans: list[Plan]) -> list[weakref.ref[LoadClient]]:
    """Run one connection per plan, all at once; check every answer."""
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/mcp", protocols=["mcp"])
    factory.protocol = LoadClient
    clients = await defer.gatherResults(
        [defer.ensureDeferred(run_connection(factory, port, plan)) for plan in plans], consumeErrors=True
    )
    for client, plan in zip(clients, plans, strict=True):
        check_answers(client, plan)
        assert client.aborted == (plan.abort_on is not None)
    return [weakref.ref(client) for client in clients]


def all_dead(refs: list[weakref.ref[Any]]) -> bool:
    gc.collect()
    return all(ref() is None for ref in refs)



@pytest_twisted.ensureDeferred
async def test_storm_of_connections_with_aborts_leaves_nothing_behind():
    app, running = load_app()
    tracker = Tracker()
    factory = MCPServerFactory(app, ping_interval=0)
    factory.protocol = type("Tracked", (TrackedProtocol,), {"tracker": tracker})
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, backlog=CONNECTIONS + 50, interface="127.0.0.1")
    port = await endpoint.listen(factory)
    number = port.getHost().port
    errors: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        rng = random.Random(SEED)
        # Warm-up: imports, caches and free lists are paid before measuring.
        clients = await storm(number, make_plans(rng, 20, "w"))
        await until(lambda: not factory.connections and all_dead(clients), 20)
        plans = make_plans(rng, CONNECTIONS, "c")
        factory.protocol.tracker = tracker = Tracker()  # the warm-up's do not count
        running["cancelled"] = 0
        gc.collect()
        tracemalloc.start(1)
        try:
            traced_before = tracemalloc.get_traced_memory()[0]
            snapshot_before = tracemalloc.take_snapshot()
            started = reactor.seconds()
            clients = await storm(number, plans)
            storm_seconds = reactor.seconds() - started

            # Every connection is gone on the server side too, with nothing running.
            await until(lambda: not factory.connections, 20)
            assert app.sessions == []
            assert running["slow"] == 0
            assert len(tracker.sessions) == CONNECTIONS
            assert tracker.left_after_close == [(State.CLOSED, 0, 0)] * CONNECTIONS
            # Each abort hit a session with requests running (at least the
            # stuck one), and each of those handlers was cancelled.
            aborted = sum(plan.abort_on is not None for plan in plans)
            assert sum(1 for n in tracker.in_flight_at_close if n) == aborted
            assert sum(tracker.in_flight_at_close) == running["cancelled"]

            # All of the storm is garbage now: the server's protocols and sessions,
            # and the test's own clients with their answers (Twisted holds a
            # closed client for a few reactor turns).
            with contextlib.suppress(AssertionError):  # what is left is named below
                await until(lambda: all_dead(clients + tracker.protocols + tracker.sessions), 10)
            assert [ref for ref in tracker.protocols if ref() is not None] == []
            assert [ref for ref in tracker.sessions if ref() is not None] == []
            traced_after, peak = tracemalloc.get_traced_memory()
            growth = traced_after - traced_before
            if growth >= MEMORY_GROWTH_LIMIT:
                top = tracemalloc.take_snapshot().compare_to(snapshot_before, "traceback")[:10]
                detail = "\n".join(str(line) + "\n" + "\n".join(line.traceback.format()) for line in top)
                raise AssertionError(f"{growth} bytes still allocated after the storm:\n{detail}")
        finally:
            tracemalloc.stop()
        print(f"storm {storm_seconds:.1f} s; traced growth {growth / 1024:.0f} KiB "
              f"(peak {peak / 1024:.0f} KiB); {aborted} aborts cancelled {running['cancelled']} handlers")

        # The server is still up: a fresh connection gets answers.
        await storm(number, make_plans(random.Random(1), 1, "after"))
        assert errors == []
    finally:
        globalLogPublisher.removeObserver(observe)
        for connection in list(factory.connections):
            connection.dropConnection(abort=True)
        await port.stopListening()
