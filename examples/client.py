"""A client that keeps a session to an MCP server alive and calls a tool.

Run the demo server (``twistd -n mcpws``), then:

    python examples/client.py ws://127.0.0.1:8080/mcp

It reconnects with backoff if the server restarts, and answers the server's
sampling requests with a canned reply (a real client would ask its model).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import task

from mcp_twisted.client import MCPClientService


def sample(params: dict[str, Any]) -> dict[str, Any]:
    prompt = params["messages"][-1]["content"].get("text", "")
    return {"role": "assistant", "model": "canned",
            "content": {"type": "text", "text": f"(a model would answer {prompt!r} here)"}}


async def main(reactor: Any, url: str = "ws://127.0.0.1:8080/mcp") -> None:
    service = MCPClientService(reactor, url, sampling=sample, max_attempts=5)
    service.startService()
    try:
        client = await service.when_ready()
        print("Connected to", client.server_info.get("name"))
        async for tool in client.iter_tools():
            print(" tool:", tool["name"])
        result = await client.call_tool("echo", {"text": "hello"})
        print("echo ->", result["content"][0]["text"])
        result = await client.call_tool("sample_llm", {"prompt": "What is Twisted?"})
        print("sample_llm ->", result["content"][0]["text"])
    finally:
        await service.stopService()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
