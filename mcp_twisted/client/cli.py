"""``mcpws-call``: talk to an MCP WebSocket server from the shell.

Exit status: 0 success, 1 the server answered with an error (a JSON-RPC error
or a tool result with ``isError``), 2 bad usage, 3 could not connect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from twisted.internet import defer, task

from mcp_twisted.auth import load_certificates
from mcp_twisted.client._api import ConnectionFailed, MCPClient
from mcp_twisted.client._service import MCPClientService
from mcp_twisted.jsonrpc import RPCError
from mcp_twisted.session import ConnectionLost, RequestTimedOut

EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_CONNECTION = 0, 1, 2, 3


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"text\": \"hi\"}'")
    return value


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("expected 'Name: value'")
    return name.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcpws-call", description="Call an MCP server over WebSocket (ws:// or wss://).",
        epilog="Exit status: 0 success, 1 server error, 2 usage, 3 connection failure.",
    )
    parser.add_argument("url", help="e.g. ws://127.0.0.1:8080/mcp")
    parser.add_argument("--cafile", help="PEM file of CAs to trust for wss:// (default: system)")
    parser.add_argument("--header", action="append", type=_header, default=[],
                        help="extra handshake header, e.g. 'Authorization: Bearer TOKEN' (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON result")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("tools", help="list tools")
    call = commands.add_parser("call", help="call a tool")
    call.add_argument("name")
    call.add_argument("arguments", nargs="?", type=_json_object, default={}, help="JSON object")
    commands.add_parser("resources", help="list resources and templates")
    read = commands.add_parser("read", help="read a resource")
    read.add_argument("uri")
    commands.add_parser("prompts", help="list prompts")
    prompt = commands.add_parser("prompt", help="get a prompt")
    prompt.add_argument("name")
    prompt.add_argument("arguments", nargs="?", type=_json_object, default={}, help="JSON object")
    commands.add_parser("ping", help="check the server answers")
    return parser


async def _collect(iterator: Any) -> list[dict[str, Any]]:
    return [item async for item in iterator]


async def run_command(client: MCPClient, args: argparse.Namespace) -> tuple[Any, bool]:
    """The result of the command, and whether it reports a failure."""
    if args.command == "tools":
        return {"tools": await _collect(client.iter_tools())}, False
    if args.command == "call":
        result = await client.call_tool(args.name, args.arguments, timeout=args.timeout)
        return result, bool(result.get("isError"))
    if args.command == "resources":
        templates = await client.list_resource_templates()
        resources = await _collect(client.iter_resources())
        return {"resources": resources, "resourceTemplates": templates.get("resourceTemplates", [])}, False
    if args.command == "read":
        return await client.read_resource(args.uri), False
    if args.command == "prompts":
        return {"prompts": await _collect(client.iter_prompts())}, False
    if args.command == "prompt":
        return await client.get_prompt(args.name, args.arguments), False
    return await client.ping(timeout=args.timeout), False


def render(command: str, result: Any) -> str:
    """Readable text for a person; ``--json`` skips this."""
    lines: list[str] = []
    if command in ("tools", "prompts"):
        for item in result[command]:
            summary = (item.get("description") or "").strip().split("\n", 1)[0]
            lines.append(f"{item['name']}: {summary}" if summary else item["name"])
    elif command == "resources":
        lines += [f"{r['uri']}  ({r.get('name', '')})" for r in result["resources"]]
        lines += [f"{t['uriTemplate']}  (template: {t.get('name', '')})" for t in result["resourceTemplates"]]
    elif command == "call":
        for block in result.get("content", []):
            lines.append(block["text"] if block.get("type") == "text" else json.dumps(block))
        if "structuredContent" in result and not result.get("content"):
            lines.append(json.dumps(result["structuredContent"], indent=2))
        if result.get("isError"):
            lines.insert(0, "Tool error:")
    elif command == "read":
        for item in result.get("contents", []):
            lines.append(item["text"] if "text" in item else f"<{len(item.get('blob', ''))} base64 chars>")
    elif command == "prompt":
        for message in result.get("messages", []):
            body = message["content"]
            text = body.get("text") if isinstance(body, dict) else None
            lines.append(f"[{message['role']}] {text if text is not None else json.dumps(body)}")
    else:
        lines.append("ok")
    return "\n".join(lines)


async def _main(reactor: Any, args: argparse.Namespace) -> int:
    service = MCPClientService(
        reactor, args.url, headers=dict(args.header), tls_ca=args.cafile,
        max_attempts=1, request_timeout=args.timeout, wait_for_connection=False,
    )
    service.startService()
    try:
        try:
            client = await service.when_ready().addTimeout(args.timeout, reactor)
        except defer.TimeoutError:
            # Twisted's TimeoutError, not the builtin: it would escape as a traceback.
            raise ConnectionFailed(f"no MCP session with {args.url} within {args.timeout:g} s") from None
        result, failed = await run_command(client, args)
    except RPCError as e:
        detail = f" {json.dumps(e.data)}" if e.data is not None else ""
        print(f"mcpws-call: server error {e.code}: {e.message}{detail}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    except (ConnectionFailed, ConnectionLost, RequestTimedOut) as e:
        print(f"mcpws-call: connection failed: {e}", file=sys.stderr)
        return EXIT_CONNECTION
    finally:
        await service.stopService()
    print(json.dumps(result, indent=2) if args.json else render(args.command, result))
    return EXIT_SERVER_ERROR if failed else EXIT_OK


def _usage_error(message: str) -> None:
    print(f"mcpws-call: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.url.startswith(("ws://", "wss://")):
        parser.error(f"not a ws:// or wss:// URL: {args.url!r}")  # exits 2
    if args.cafile is not None:
        # Checked here, before any connection, for a one-line usage error;
        # the client reads the file again when it connects.
        try:
            load_certificates(args.cafile)
        except OSError as e:
            _usage_error(f"--cafile {args.cafile}: {e.strerror}")
        except ValueError as e:
            _usage_error(f"--cafile {e}")
    status: list[int] = []

    async def run(reactor: Any) -> None:
        status.append(await _main(reactor, args))

    with contextlib.suppress(SystemExit):  # react() always exits; we pick the status
        task.react(run)
    sys.exit(status[0] if status else EXIT_CONNECTION)
