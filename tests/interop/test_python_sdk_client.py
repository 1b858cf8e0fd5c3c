"""The official MCP Python SDK (mcp 1.30, WebSocket client) against the demo app."""

from __future__ import annotations

import sys

import pytest_twisted

from tests.interop.conftest import HERE, check_full_scenario, run_peer


@pytest_twisted.ensureDeferred
async def test_full_scenario(demo_url):
    report = await run_peer([sys.executable, str(HERE / "sdk_client.py"), demo_url, "full"])
    check_full_scenario(report)
