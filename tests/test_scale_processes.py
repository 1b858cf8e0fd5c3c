"""Many processes on one port: ``--reuse-port`` and ``--workers``, as real
``twistd mcpws`` processes on 127.0.0.1 (the kernel's SO_REUSEPORT balancing
is what is tested, so nothing here can be in memory)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor, task

from tests.scale_support import (  # noqa: F401  (a fixture)
    SCALE_APP,
    Processes,
    call_text,
    open_client,
    processes_fixture,
    wait_for_log,
)
from tests.support import ProbeClient
from tests.test_tap import ETC, exec_start_options, free_port, needs_reuse_port, read_unit, run_mcpws

pytestmark = needs_reuse_port

OPENS = 40  # with two listeners, all on one: probability 2 ** -39
# twistd ends a clean shutdown on SIGTERM by raising the signal again, as the exit status says.
STOPPED_BY_SIGTERM = -signal.SIGTERM


def serve_args(port: int) -> list[str]:
    return ["--app", SCALE_APP, "--endpoint", f"tcp:{port}:interface=127.0.0.1"]


@pytest_twisted.ensureDeferred
async def test_reuse_port_servers_share_the_port_and_a_stopping_one_hands_over(processes: Processes,
                                                                               tmp_path: Path):
    port = free_port()
    first, second = (processes.twistd(*serve_args(port), "--reuse-port") for _ in range(2))
    first.listening_port(), second.listening_port()
    by_pid: dict[int, list[ProbeClient]] = {}
    for _ in range(OPENS):
        client = await open_client(port)
        by_pid.setdefault(int(await call_text(client, "pid")), []).append(client)
    assert set(by_pid) == {first.process.pid, second.process.pid}

    # A third server without the flag cannot share the port: one line says why.
    third = run_mcpws(serve_args(port), tmp_path)
    output = third.stdout + third.stderr  # a log record on stdout: twistd logs by then
    (line,) = [line for line in output.splitlines() if "mcpws: error:" in line]
    assert f"cannot listen on 'tcp:{port}:interface=127.0.0.1'" in line and "Address already in use" in line
    assert third.returncode != 0 and "Traceback" not in output

    # SIGTERM to one: its clients hear 1001; new clients all reach the other, none fails.
    first.process.send_signal(signal.SIGTERM)
    for client in by_pid[first.process.pid]:
        assert (await client.closed)[:2] == (True, 1001)
    for _ in range(20):
        client = await open_client(port)
        assert int(await call_text(client, "pid")) == second.process.pid
        client.sendClose(1000)
    assert await first.wait_exit(20) == STOPPED_BY_SIGTERM
    assert not any(client.closed.called for client in by_pid[second.process.pid])


@pytest_twisted.ensureDeferred
async def test_template_units_run_instances_that_share_a_port(processes: Processes):
    """What systemd does with mcpws@{1,2}.socket and mcpws@.service: two
    ReusePort sockets named mcp on one port, each passed to the unit's command."""
    argv, _ = exec_start_options(read_unit(ETC / "mcpws@.service"))
    args = argv[argv.index("mcpws") + 1:]
    bus = args.index("--bus")
    del args[bus:bus + 2]  # no Redis here: the bus has its own test
    args[args.index("--app") + 1] = SCALE_APP
    port = free_port()
    instances = [processes.twistd(*args, launcher_port=port) for _ in range(2)]
    for instance in instances:
        await wait_for_log(instance, rf"starting on {port}\b")
    pids = set()
    for _ in range(OPENS):
        client = await open_client(port)
        pids.add(int(await call_text(client, "pid")))
        client.sendClose(1000)
    assert pids == {instance.process.pid for instance in instances}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest_twisted.ensureDeferred
async def test_workers_replace_a_killed_child_and_the_port_keeps_answering(processes: Processes):
    port = free_port()
    parent = processes.twistd(*serve_args(port), "--workers", "2")
    children: set[int] = set()
    try:
        started = await wait_for_log(parent, r"Started worker (\d) \(pid (\d+)\)", 2)
        children |= {int(m[2]) for m in started}
        await wait_for_log(parent, rf"starting on {port}\b", 2)
        victim = int(started[0][2])
        os.kill(victim, signal.SIGKILL)
        # Once it is gone (connections the kernel queued on its socket until then
        # are reset: see docs/scaling.md), and while it is replaced, the other
        # child serves every connection.
        await wait_for_log(parent, r"Worker \d died")
        for _ in range(10):
            client = await open_client(port)
            assert int(await call_text(client, "pid")) != victim
            client.sendClose(1000)
        restarted = await wait_for_log(parent, r"Started worker (\d) \(pid (\d+)\)", 3)
        replacement = int(restarted[2][2])
        children.add(replacement)
        assert restarted[2][1] == started[0][1] and replacement != victim
        await wait_for_log(parent, rf"starting on {port}\b", 3)
        seen = set()
        for _ in range(30):
            client = await open_client(port)
            seen.add(int(await call_text(client, "pid")))
            client.sendClose(1000)
        assert seen == children - {victim}
        # SIGTERM to the parent goes to the children; it waits for them.
        parent.process.send_signal(signal.SIGTERM)
        assert await parent.wait_exit(30) == STOPPED_BY_SIGTERM
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05)
        assert not any(_alive(pid) for pid in children)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

