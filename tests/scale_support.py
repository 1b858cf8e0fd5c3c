"""Helpers for the scale-out tests that run real processes: ``twistd`` servers
(see test_tap.py), redis-server, haproxy and nginx, each on ephemeral
loopback ports and each ended by its pid after the test."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer, endpoints, reactor, task

from tests.support import ProbeClient
from tests.test_tap import Twistd, free_port, stop_process

SCALE_APP = "tests.scale_app:server"
START_TIMEOUT = 20.0


def needs(program: str) -> Any:
    """Skip a test when ``program`` is not installed (.ci/run installs them all)."""
    return pytest.mark.skipif(shutil.which(program) is None, reason=f"{program} not installed")


class Daemon:
    """A helper process (redis-server, haproxy, nginx) with its output in a file."""

    def __init__(self, command: list[str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_accepting(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"{self.command[0]} exited with {self.process.returncode}:\n{self.log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.command[0]} did not listen on {port}:\n{self.log}")
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process)


class Processes:
    """Starts twistd servers and helper processes for one test; ``stop_all`` ends them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Twistd | Daemon] = []

    def twistd(self, *args: str, launcher_port: int | None = None) -> Twistd:
        """A twistd; with ``launcher_port``, on a socket passed as systemd passes
        one of ``ReusePort=yes`` (see ``test_tap.SYSTEMD_LAUNCHER``)."""
        server = Twistd(list(args), self.directory, launcher_port, launcher_reuse_port=True)
        self.started.append(server)
        return server

    def daemon(self, command: list[str], name: str) -> Daemon:
        daemon = Daemon(command, self.directory / f"{name}.log")
        self.started.append(daemon)
        return daemon

    def redis(self, port: int | None = None) -> tuple[Daemon, int]:
        port = port or free_port()
        redis = self.daemon(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(self.directory)], f"redis-{port}")
        redis.wait_accepting(port)
        return redis, port

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


@pytest.fixture(name="processes")  # import processes_fixture into a test module to use it
def processes_fixture(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop_all()


async def open_client(port: int, bind: str | None = None, headers: dict[str, str] | None = None
                      ) -> ProbeClient:
    """An initialized MCP WebSocket client of 127.0.0.1:port, from ``bind`` if given."""
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/mcp", protocols=["mcp"], headers=headers)
    factory.protocol = ProbeClient
    factory.opened = defer.Deferred()
    factory.opened.addTimeout(10, reactor)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5,
                                            bindAddress=(bind, 0) if bind else None)
    await endpoint.connect(factory)
    client: ProbeClient = await factory.opened
    await client.initialize()
    return client


async def call_text(client: ProbeClient, tool: str, arguments: dict[str, Any] | None = None) -> str:
    reply = await client.request(f"{tool}-{time.monotonic_ns()}", "tools/call",
                                 {"name": tool, "arguments": arguments or {}})
    assert "result" in reply, reply
    text: str = reply["result"]["content"][0]["text"]
    return text


def notifications(client: ProbeClient, method: str) -> list[dict[str, Any]]:
    """The notifications ``method`` the client has received (and not yet taken)."""
    messages = [json.loads(payload) for payload, _ in client.messages]
    return [m for m in messages if m.get("method") == method]


async def wait_for_log(server: Twistd, pattern: str, count: int = 1, timeout: float = START_TIMEOUT
                       ) -> list[re.Match[str]]:
    """Wait (letting the reactor run) until ``pattern`` matches ``count`` times in the log."""
    deadline = time.monotonic() + timeout
    while len(found := list(re.finditer(pattern, server.log))) < count:
        if server.process.poll() is not None:
            pytest.fail(f"twistd exited with {server.process.returncode}:\n{server.log}")
        if time.monotonic() > deadline:
            pytest.fail(f"{pattern!r} not logged {count} times in {timeout} s:\n{server.log}")
        await task.deferLater(reactor, 0.05)
    return found
