"""The Redis bus between two ``twistd mcpws --bus redis://...`` instances, on a
loopback redis-server started and stopped (by pid) by the test."""

from __future__ import annotations

import pytest_twisted

from tests.scale_support import (  # noqa: F401  (a fixture)
    SCALE_APP,
    Processes,
    call_text,
    needs,
    notifications,
    open_client,
    processes_fixture,
    wait_for_log,
)
from tests.support import ProbeClient, until

URI = "scale://counter"
CLIENTS = 5
EVENTS = 10


@needs("redis-server")
@pytest_twisted.ensureDeferred
async def test_events_published_on_one_instance_reach_every_instance_and_a_reconnect_resyncs(
        processes: Processes):
    redis, redis_port = processes.redis()
    bus = f"redis://127.0.0.1:{redis_port}"
    instances = [processes.twistd("--app", SCALE_APP, "--endpoint", "tcp:0:interface=127.0.0.1", "--bus", bus)
                 for _ in range(2)]
    ports = [instance.listening_port() for instance in instances]
    for instance in instances:
        await wait_for_log(instance, "Event bus redis://.* subscribed")
    listeners: list[ProbeClient] = []
    for port in ports:
        for _ in range(CLIENTS):
            client = await open_client(port)
            await client.request("subscribe", "resources/subscribe", {"uri": URI})
            listeners.append(client)

    publisher = await open_client(ports[0])
    for _ in range(EVENTS):
        assert await call_text(publisher, "touch", {"uri": URI}) == "ok"

    def updates() -> int:
        return sum(len(notifications(client, "notifications/resources/updated")) for client in listeners)

    await until(lambda: updates() == len(ports) * CLIENTS * EVENTS, timeout=10)
    assert updates() == 100

    # Redis restarts: events may have been lost meanwhile, so every listener is told to fetch again.
    redis.stop()
    processes.redis(redis_port)
    resynced = "notifications/tools/list_changed"
    await until(lambda: all(notifications(client, resynced) for client in listeners), timeout=20)
    assert all(notifications(client, "notifications/resources/list_changed") for client in listeners)
    # The publishing connection is back too (an event published meanwhile waits
    # for it): the next event reaches every instance again.
    before = updates()
    assert await call_text(publisher, "touch", {"uri": URI}) == "ok"
    await until(lambda: updates() == before + len(listeners), timeout=10)
