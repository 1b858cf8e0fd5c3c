"""The official TypeScript SDK (1.32.2, WebSocketClientTransport) against the demo app."""

from __future__ import annotations

import pytest_twisted

from tests.interop.conftest import HERE, run_peer


@pytest_twisted.ensureDeferred
async def test_connect_list_call_read_get(demo_url, node):
    report = await run_peer([node, str(HERE / "ts_client.mjs"), demo_url])
    steps = report["steps"]
    assert report["initialize"]["protocolVersion"] == "2025-11-25"
    assert "echo" in steps["list_tools"]
    assert steps["echo"]["content"] == [{"type": "text", "text": "hi"}]
    assert "mcp-twisted demo" in steps["read_resource"]["contents"][0]["text"]
    assert steps["get_prompt"]["messages"][0]["content"]["text"].endswith("Ada.")
