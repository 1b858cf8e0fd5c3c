"""The official MCP Python SDK (mcp 1.30, WebSocket client) against the demo app."""

from __future__ import annotations

import sys

import pytest_twisted

from tests.interop.conftest import HERE, run_peer


@pytest_twisted.ensureDeferred
async def test_full_scenario(demo_url):
    report = await run_peer([sys.executable, str(HERE / "sdk_client.py"), demo_url, "full"])
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
