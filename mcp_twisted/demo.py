"""The built-in demo app: what ``twistd -n mcpws`` serves when given no ``--app``.

One small example of each capability, so any MCP client can see them work.
"""

from __future__ import annotations

from typing import Literal

from twisted.internet import task

from mcp_twisted import Context, MCPServer, RPCError, ToolError
from mcp_twisted.protocol import RESOURCE_NOT_FOUND

server = MCPServer(
    "mcp-twisted-demo",
    version="1.0.0",
    instructions="A demonstration of mcp-twisted: tools, resources, prompts and completions.",
)

README = """\
mcp-twisted demo server

Tools: echo, slow_count, sample_llm, list_client_roots, ask_user, log_demo, fail_tool.
Resources: demo://readme, and demo://items/{item_id} (a template).
Prompts: greet (with completion for its name argument).
"""

ITEMS = {"1": "apple", "2": "banana", "3": "cherry"}
NAMES = ["Ada", "Alan", "Alonzo", "Barbara", "Edsger", "Grace", "John", "Ken", "Margaret"]


@server.tool(annotations={"readOnlyHint": True, "openWorldHint": False})
def echo(text: str) -> str:
    """Return the text unchanged.

    Args:
        text: The text to send back.
    """
    return text


@server.tool(annotations={"readOnlyHint": True, "openWorldHint": False})
async def slow_count(ctx: Context, count: int = 5, delay: float = 0.1) -> str:
    """Count to ``count``, waiting ``delay`` seconds per step and reporting progress.

    Cancel it and it stops at once; it never blocks other requests.

    Args:
        count: How many steps.
        delay: Seconds to wait per step.
    """
    from twisted.internet import reactor

    for step in range(1, count + 1):
        await task.deferLater(reactor, delay)
        await ctx.report_progress(step, count, f"step {step} of {count}")
    return f"Counted to {count}"


@server.tool()
async def sample_llm(prompt: str, ctx: Context) -> str:
    """Ask the client's language model to answer a prompt (sampling).

    Args:
        prompt: What to ask the model.
    """
    result = await ctx.sample(prompt, max_tokens=200)
    content = result.get("content", {})
    return content.get("text", str(content)) if isinstance(content, dict) else str(content)


@server.tool(annotations={"readOnlyHint": True})
async def list_client_roots(ctx: Context) -> list[str]:
    """List the roots (folders) the client shares with this server."""
    roots = await ctx.list_roots()
    return [root["uri"] for root in roots]


@server.tool()
async def ask_user(question: str, ctx: Context) -> str:
    """Ask the user for their name with a form (elicitation) and return it.

    Args:
        question: The question to show the user.
    """
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "title": "Name", "description": question}},
        "required": ["name"],
    }
    answer = await ctx.elicit(question, schema)
    if answer.get("action") != "accept":
        raise ToolError(f"The user chose to {answer.get('action')}")
    return str(answer.get("content", {}).get("name", ""))


Level = Literal["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]


@server.tool()
async def log_demo(message: str, ctx: Context, level: Level = "info") -> str:
    """Send a log message to the client at the given level.

    Args:
        message: The text to log.
        level: An RFC 5424 severity.
    """
    await ctx.log(level, message, logger="demo")
    return f"Logged at {level}"


@server.tool(annotations={"readOnlyHint": True})
def fail_tool() -> str:
    """Always fail, to show how a tool error looks."""
    raise ToolError("This tool always fails")


@server.resource("demo://readme", mime_type="text/plain", description="What this demo offers")
def readme() -> str:
    return README


@server.resource("demo://items/{item_id}", mime_type="text/plain")
def item(item_id: str) -> str:
    """One item of a small catalogue (ids 1 to 3)."""
    if item_id not in ITEMS:
        uri = f"demo://items/{item_id}"
        raise RPCError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}", {"uri": uri})
    return ITEMS[item_id]


@server.prompt()
def greet(name: str) -> str:
    """A greeting for someone.

    Args:
        name: Who to greet.
    """
    return f"Please write a short, warm greeting for {name}."


@server.completion("name", prompt="greet")
def complete_name(prefix: str) -> list[str]:
    return [name for name in NAMES if name.lower().startswith(prefix.lower())]
