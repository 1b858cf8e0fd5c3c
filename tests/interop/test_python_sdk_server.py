"""OUR client (``MCPClientService``) against the official MCP Python SDK's server
(``sdk_server.py``: FastMCP over Starlette/uvicorn WebSocket), run as a subprocess."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from mcp_twisted.client import MCPClient, MCPClientService
from mcp_twisted.jsonrpc import RPCError
from tests.interop.conftest import HERE


class SDKServerProcess(protocol.ProcessProtocol):
    """Fires ``port`` when the server prints ``PORT n``, ``ended`` when it exits."""

    def __init__(self) -> None:
        self.port: defer.Deferred[int] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.out = b""
        self.err = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        found = re.search(rb"^PORT (\d+)$", self.out, re.MULTILINE)
        if found and not self.port.called:
            self.port.callback(int(found.group(1)))

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        if not self.port.called:
            self.port.errback(RuntimeError(f"sdk_server.py exited early: {self.err.decode()[-2000:]}"))
        self.ended.callback(None)


@pytest_twisted.async_yield_fixture(scope="module")
async def sdk_server_url():
    process = SDKServerProcess()
    transport = reactor.spawnProcess(
        process, sys.executable, [sys.executable, str(HERE / "sdk_server.py"), "0"],
        env=dict(os.environ), path=str(HERE),
    )
    try:
        port = await process.port.addTimeout(30, reactor)
        yield f"ws://127.0.0.1:{port}/mcp"
    finally:
        if not process.ended.called:
            transport.signalProcess("KILL")
        await process.ended


@pytest_twisted.async_yield_fixture
async def sdk(sdk_server_url):
    seen: dict[str, list[Any]] = {"sampling": [], "logs": []}

    def sampling(params: dict[str, Any]) -> dict[str, Any]:
        seen["sampling"].append(params)
        prompt = params["messages"][0]["content"]["text"]
        return {"role": "assistant", "content": {"type": "text", "text": f"sampled:{prompt}"}, "model": "m"}

    service = MCPClientService(
        reactor, sdk_server_url, ping_interval=0, ping_timeout=0, max_attempts=3, request_timeout=10.0,
        sampling=sampling,
        roots=lambda: [{"uri": "file:///tmp/x", "name": "x"}],
        elicitation=lambda params: {"action": "accept", "content": {"name": "Ada"}},
        on_log=seen["logs"].append,
    )
    service.startService()
    try:
        client: MCPClient = await service.when_ready().addTimeout(10, reactor)
        yield client, seen
    finally:
        await service.stopService()


def text(result: dict[str, Any]) -> str:
    return "".join(block["text"] for block in result["content"] if block["type"] == "text")


@pytest_twisted.ensureDeferred
async def test_initialize_negotiates_with_the_sdk_server(sdk):
    client, _ = sdk
    assert client.session.protocol_version == "2025-11-25"
    assert client.server_info == {"name": "sdk-reference-server", "version": "1.30.0"}
    assert {"tools", "resources", "prompts", "logging"} <= set(client.server_capabilities)
    assert await client.ping() == {}


@pytest_twisted.ensureDeferred
async def test_list_and_call_tools(sdk):
    client, _ = sdk
    names = [tool["name"] async for tool in client.iter_tools()]
    assert set(names) == {"echo", "sample_llm", "fail_tool", "log_demo", "slow_count",
                          "list_client_roots", "ask_user"}
    echo = await client.call_tool("echo", {"text": "hi"})
    assert text(echo) == "hi" and echo["isError"] is False
    failed = await client.call_tool("fail_tool")
    assert failed["isError"] is True and "fail_tool failed on purpose" in text(failed)
    progress: list[tuple[Any, ...]] = []
    counted = await client.call_tool("slow_count", {"count": 3, "delay": 0.01},
                                     on_progress=lambda *p: progress.append(p))
    assert text(counted) == "3"
    assert [p[:2] for p in progress] == [(1, 3), (2, 3), (3, 3)]


@pytest_twisted.ensureDeferred
async def test_resources_prompts_and_completion(sdk):
    client, _ = sdk
    readme = await client.read_resource("demo://readme")
    assert readme["contents"] == [{"uri": "demo://readme", "mimeType": "text/plain",
                                   "text": "This is the demo readme."}]
    templates = await client.list_resource_templates()
    assert [t["uriTemplate"] for t in templates["resourceTemplates"]] == ["demo://items/{item_id}"]
    prompt = await client.get_prompt("greet", {"name": "Ada"})
    assert prompt["messages"] == [{"role": "user", "content": {"type": "text", "text": "Hello, Ada!"}}]
    completion = await client.complete({"type": "ref/prompt", "name": "greet"}, "name", "A")
    assert completion["values"] == ["Ada", "Alan"]
    with pytest.raises(RPCError) as unknown:
        await client.get_prompt("nope")
    assert "Unknown prompt: nope" in unknown.value.message


@pytest_twisted.ensureDeferred
async def test_client_handlers_answer_the_sdk_server(sdk):
    client, seen = sdk
    sampled = await client.call_tool("sample_llm", {"prompt": "p"})
    assert text(sampled) == "sampled:p" and sampled["isError"] is False
    assert seen["sampling"][0]["maxTokens"] == 100
    assert seen["sampling"][0]["messages"] == [{"role": "user", "content": {"type": "text", "text": "p"}}]
    assert text(await client.call_tool("list_client_roots")) == "file:///tmp/x"
    assert text(await client.call_tool("ask_user", {"question": "Name?"})) == "accept:Ada"
    await client.call_tool("log_demo", {"message": "m", "level": "warning"})
    assert seen["logs"] == [{"level": "warning", "data": "m"}]
