"""The examples in examples/ work as documented."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import pytest_twisted

from tests.support import connect, handshake, listen, stop

EXAMPLES = Path(__file__).parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest_twisted.async_yield_fixture
async def token_server():
    example = load_example("token_auth")
    ready: list[str] = []

    class Recording(example.TokenProtocol):
        def onSessionReady(self) -> None:
            super().onSessionReady()
            ready.append(self.identity)

    factory = example.make_factory()
    factory.protocol = Recording
    port = await listen(factory)
    yield port.getHost().port, ready
    await stop(port, factory)


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic s3cret-token", "Bearer"])
@pytest_twisted.ensureDeferred
async def test_token_refused_with_401(token_server, header):
    port, _ = token_server
    headers = {"Authorization": header} if header else {}
    status, response = await handshake(port, headers=headers)
    assert status == 401
    assert response["www-authenticate"] == 'Bearer realm="mcp"'  # RFC 6750


@pytest_twisted.ensureDeferred
async def test_token_accepted_and_identity_reaches_tools(token_server):
    port, ready = token_server
    client = await connect(port, headers={"Authorization": "Bearer s3cret-token"})
    await client.initialize()
    reply = await client.request(1, "tools/call", {"name": "whoami", "arguments": {}})
    assert reply["result"]["content"][0]["text"] == "alice"
    assert ready == ["alice"]


@pytest_twisted.ensureDeferred
async def test_client_example_talks_to_the_demo(capsys):
    from twisted.internet import reactor

    from mcp_twisted.demo import server as demo_app
    from mcp_twisted.websocket import MCPServerFactory

    factory = MCPServerFactory(demo_app)
    port = await listen(factory)
    try:
        await load_example("client").main(reactor, f"ws://127.0.0.1:{port.getHost().port}/mcp")
    finally:
        await stop(port, factory)
    printed = capsys.readouterr().out
    assert "Connected to mcp-twisted-demo" in printed
    assert " tool: slow_count" in printed
    assert "echo -> hello" in printed
    assert "sample_llm -> (a model would answer 'What is Twisted?' here)" in printed
