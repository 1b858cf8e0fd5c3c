"""The official MCP Python SDK's stdio client (mcp 1.30) launching
``python -m mcp_twisted stdio`` with the demo app, as desktop assistants do."""

from __future__ import annotations

import sys

import pytest_twisted

from tests.interop.conftest import HERE, run_peer

SERVER = [sys.executable, "-m", "mcp_twisted", "stdio", "--app", "mcp_twisted.demo:server"]


@pytest_twisted.ensureDeferred
async def test_sdk_stdio_client_full_scenario():
    report = await run_peer([sys.executable, str(HERE / "sdk_stdio_client.py"), "full", *SERVER])
    assert report["initialize"]["serverInfo"] == {"name": "mcp-twisted-demo", "version": "1.0.0"}
    steps = report["steps"]
    failed = sorted(name for name, step in steps.items() if isinstance(step, dict) and "error" in step)
    assert failed == ["no_such_tool"], {name: steps[name] for name in failed}
    # What the stdio issue asks for, one by one: tools, a call, a resource, a prompt.
    assert "echo" in steps["list_tools"]
    assert steps["echo"] == {"isError": False, "text": "hi", "content": [{"type": "text", "text": "hi"}],
                             "structuredContent": None}
    assert steps["read_resource"]["contents"][0]["uri"] == "demo://readme"
    assert steps["get_prompt"]["messages"][0]["role"] == "user"
    # Requests from the server and notifications travel over stdio too.
    assert steps["sampling"]["result"]["text"] == "sampled:p"
    assert len(steps["progress"]["progress"]) == 3
    assert steps["concurrent_echo"]["all_match"]
