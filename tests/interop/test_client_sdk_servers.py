"""OUR client against servers nobody here wrote, on every transport.

- the official Python SDK 2.x (``MCPServer``) over Streamable HTTP and over
  stdio, in both eras (``auto`` finds 2026-07-28);
- the SDK 1.30 (``FastMCP``) over Streamable HTTP, handshake era only (``auto``
  falls back to ``initialize``);
- ``twistd mcpws`` over WebSocket and Streamable HTTP, and ``mcpws-stdio``.

The SDK servers run ``sdk_any_server.py``; 2.x lives in the environment
``modern_env.py`` builds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from mcp_twisted.client import MCPClient, MCPClientService, backoff_policy
from tests.interop.modern_env import ensure_env
from tests.interop.test_python_sdk_server import SDKServerProcess
from tests.test_tap import Twistd

HERE = Path(__file__).parent
SDK_SERVER = str(HERE / "sdk_any_server.py")
ERAS = ["auto", "legacy", "2026-07-28"]


@pytest.fixture(scope="module")
def modern_python() -> str:
    return str(ensure_env())


async def sdk_http_server(python: str) -> tuple[str, Any, SDKServerProcess]:
    process = SDKServerProcess()  # waits for the same "PORT n" line
    transport = reactor.spawnProcess(process, python, [python, SDK_SERVER, "http"], env=dict(os.environ),
                                     path=str(HERE))
    port = await process.port.addTimeout(60, reactor)
    return f"http://127.0.0.1:{port}/mcp", transport, process


@pytest_twisted.async_yield_fixture(scope="module")
async def sdk2_http(modern_python):
    url, transport, process = await sdk_http_server(modern_python)
    yield url
    transport.signalProcess("TERM")
    await process.ended


@pytest_twisted.async_yield_fixture(scope="module")
async def sdk1_http():
    url, transport, process = await sdk_http_server(sys.executable)
    yield url
    transport.signalProcess("TERM")
    await process.ended


@pytest_twisted.async_yield_fixture
async def connect():
    started: list[MCPClientService] = []

    async def client(url: str | None = None, **options: Any) -> MCPClient:
        service = MCPClientService(
            reactor, url, era_cache={}, max_attempts=3, request_timeout=15.0,
            backoff=backoff_policy(initial_delay=0.1, max_delay=0.5, jitter=False),
            ping_interval=0, ping_timeout=0, **options)
        started.append(service)
        service.startService()
        return await service.when_ready().addTimeout(30, reactor)

    yield client
    for service in started:
        await service.stopService()


async def exercise(client: MCPClient, modern: bool, name: str) -> None:
    assert client.modern is modern
    assert client.server_info["name"] == name
    tools = {tool["name"] async for tool in client.iter_tools()}
    assert {"echo", "add"} <= tools
    assert (await client.call_tool("echo", {"text": "hi"}))["content"][0]["text"] == "hi"
    added = await client.call_tool("add", {"a": 2, "b": 3})
    assert not added.get("isError") and "5" in added["content"][0]["text"]
    read = await client.read_resource("sdk://readme")
    assert read["contents"][0]["text"] == "Served by the official SDK."
    prompt = await client.get_prompt("greet", {"name": "Ada"})
    assert "Hello, Ada!" in prompt["messages"][0]["content"]["text"]
    await client.ping()


@pytest.mark.parametrize("era", ERAS)
@pytest_twisted.ensureDeferred
async def test_sdk2_streamable_http(connect, sdk2_http, era):
    await exercise(await connect(sdk2_http, era=era), era != "legacy", "sdk-any-server")


@pytest.mark.parametrize("era", ERAS)
@pytest_twisted.ensureDeferred
async def test_sdk2_stdio(connect, modern_python, era):
    client = await connect(command=[modern_python, SDK_SERVER, "stdio"], era=era, stderr=lambda line: None)
    await exercise(client, era != "legacy", "sdk-any-server")


@pytest.mark.parametrize("era", ["auto", "legacy"])
@pytest_twisted.ensureDeferred
async def test_sdk1_streamable_http_handshake_only(connect, sdk1_http, era):
    await exercise(await connect(sdk1_http, era=era), False, "sdk-any-server")


@pytest_twisted.async_yield_fixture(scope="module")
async def twistd_port(tmp_path_factory):
    server = Twistd(["--app", "mcp_twisted.demo:server", "--endpoint", "tcp:0:interface=127.0.0.1"],
                    tmp_path_factory.mktemp("twistd"))
    try:
        yield server.listening_port()
    finally:
        server.stop()


async def exercise_demo(client: MCPClient, modern: bool) -> None:
    assert client.modern is modern and client.server_info["name"] == "mcp-twisted-demo"
    assert (await client.call_tool("echo", {"text": "hi"}))["content"][0]["text"] == "hi"
    assert "demo" in (await client.read_resource("demo://readme"))["contents"][0]["text"].lower()


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("scheme", ["ws", "http"])
@pytest_twisted.ensureDeferred
async def test_twistd_mcpws_over_websocket_and_http(connect, twistd_port, scheme, era):
    client = await connect(f"{scheme}://127.0.0.1:{twistd_port}/mcp", era=era)
    await exercise_demo(client, era != "legacy")


@pytest.mark.parametrize("era", ERAS)
@pytest_twisted.ensureDeferred
async def test_mcpws_stdio(connect, era):
    stdio = str(Path(sys.executable).with_name("mcpws-stdio"))
    client = await connect(command=[stdio, "--app", "mcp_twisted.demo:server"], era=era,
                           stderr=lambda line: None)
    await exercise_demo(client, era != "legacy")
