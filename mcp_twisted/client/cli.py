"""``mcp-call`` (also installed as ``mcpws-call``): talk to any MCP server from the shell.

::

    mcp-call https://host/mcp tools
    mcp-call ws://127.0.0.1:8080/mcp call echo '{"text": "hi"}'
    mcp-call --era legacy read demo://readme -- python -m mcp_twisted stdio

The server is a URL (``http(s)://``: Streamable HTTP, ``ws(s)://``:
WebSocket) or, after ``--``, a command to launch and speak to over stdio.
A tool's progress is a bar on a terminal (plain lines otherwise), the
server's log messages go to stderr, and Ctrl-C cancels the request
(``notifications/cancelled``) before exiting.

Exit status: 0 success, 1 the server answered with an error (a JSON-RPC error
or a tool result with ``isError``) or with a malformed answer, 2 bad usage,
3 could not connect, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from typing import Any, TextIO

from twisted.internet import defer, task
from twisted.internet.defer import CancelledError

from mcp_twisted.auth import load_certificates
from mcp_twisted.client._api import ERAS, ConnectionFailed, MCPClient
from mcp_twisted.client._http import HTTPError
from mcp_twisted.client._service import MCPClientService
from mcp_twisted.jsonrpc import LocalProtocolError, RPCError, brief
from mcp_twisted.protocol import LOG_LEVELS
from mcp_twisted.session import ConnectionLost, RequestTimedOut

EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_CONNECTION, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
NAMES = ("mcp-call", "mcpws-call")
SCHEMES = ("http://", "https://", "ws://", "wss://")
BAR_WIDTH = 30


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


def build_parser(prog: str = NAMES[0], stdio: bool = False) -> argparse.ArgumentParser:
    """The parser; with ``stdio`` (a server command follows ``--``) there is no URL."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Call an MCP server: a URL (http(s):// or ws(s)://), "
        "or a command to launch after --, spoken to over stdio.",
        usage=f"{prog} [options] URL COMMAND [ARGS] | {prog} [options] COMMAND [ARGS] -- SERVER [ARGS...]",
        epilog="Exit status: 0 success, 1 server error or malformed answer, 2 usage, 3 connection failure, "
        "130 interrupted.",
    )
    if not stdio:
        parser.add_argument("url", help="e.g. http://127.0.0.1:8080/mcp or wss://host/mcp")
    parser.add_argument("--era", choices=ERAS, default="auto",
                        help="protocol era: detect it (auto), the handshake era (legacy) or a revision")
    parser.add_argument("--cafile", help="PEM file of CAs to trust for https:// and wss:// (default: system)")
    parser.add_argument("--header", action="append", type=_header, default=[],
                        help="extra HTTP header, e.g. 'Authorization: Bearer TOKEN' (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON result")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="least severe server log message shown (default info)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("tools", help="list tools")
    call = commands.add_parser("call", help="call a tool")
    call.add_argument("name")
    call.add_argument("arguments", nargs="?", type=_json_object, default={}, help="JSON object")
    commands.add_parser("resources", help="list resources and templates")
    read = commands.add_parser("read", help="read a resource")
    read.add_argument("uri")
    commands.add_parser("prompts", help="list prompts")
    prompt = commands.add_parser("get", aliases=["prompt"], help="get a prompt")
    prompt.add_argument("name")
    prompt.add_argument("arguments", nargs="?", type=_json_object, default={}, help="JSON object")
    commands.add_parser("ping", help="check the server answers")
    return parser


async def _collect(iterator: Any) -> list[dict[str, Any]]:
    return [item async for item in iterator]


class Progress:
    """Shows a call's progress notifications: a bar redrawn in place on a
    terminal, one line each otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.drawn = False

    def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        if not _finite(progress) or not (total is None or _finite(total)):
            return  # a server's malformed notification: nothing to show
        label = f"{progress:g}/{total:g}" if total else f"{progress:g}"
        if isinstance(message, str) and message:
            label += f" {message}"
        if not self.tty:
            print(f"progress {label}", file=self.stream)
            return
        done = int(BAR_WIDTH * min(1.0, progress / total)) if total else 0
        self.stream.write(f"\r[{'#' * done}{'.' * (BAR_WIDTH - done)}] {label}\x1b[K")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def show_log(params: dict[str, Any]) -> None:
    """A server's ``notifications/message`` as one stderr line."""
    data = params.get("data")
    text = data if isinstance(data, str) else json.dumps(data)
    source = f" {params['logger']}" if params.get("logger") else ""
    print(f"[{params.get('level', 'info')}]{source} {text}", file=sys.stderr)


async def run_command(client: MCPClient, args: argparse.Namespace, progress: Progress) -> tuple[Any, bool]:
    """The result of the command, and whether it reports a failure."""
    if args.command == "tools":
        return {"tools": await _collect(client.iter_tools(timeout=args.timeout))}, False
    if args.command == "call":
        try:
            result = await client.call_tool(args.name, args.arguments, timeout=args.timeout,
                                            on_progress=progress)
        finally:
            progress.finish()
        return result, isinstance(result, dict) and bool(result.get("isError"))
    if args.command == "resources":
        templates = await client.list_resource_templates()
        resources = await _collect(client.iter_resources(timeout=args.timeout))
        return {"resources": resources, "resourceTemplates": templates.get("resourceTemplates", [])}, False
    if args.command == "read":
        return await client.read_resource(args.uri), False
    if args.command == "prompts":
        return {"prompts": await _collect(client.iter_prompts(timeout=args.timeout))}, False
    if args.command in ("get", "prompt"):
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
        if "structuredContent" in result:
            lines.append(json.dumps(result["structuredContent"], indent=2))
        if result.get("isError"):
            lines.insert(0, "Tool error:")
    elif command == "read":
        for item in result.get("contents", []):
            lines.append(item["text"] if "text" in item else f"<{len(item.get('blob', ''))} base64 chars>")
    elif command in ("get", "prompt"):
        for message in result.get("messages", []):
            body = message["content"]
            text = body.get("text") if isinstance(body, dict) else None
            lines.append(f"[{message['role']}] {text if text is not None else json.dumps(body)}")
    else:
        lines.append("ok")
    return "\n".join(lines)


def _interrupt_cancels(reactor: Any, work: defer.Deferred[Any]) -> None:
    """Ctrl-C cancels ``work`` (the request: the server is told) instead of
    stopping the reactor under it."""

    def interrupted(signum: int, frame: object) -> None:
        reactor.callFromThread(work.cancel)

    signal.signal(signal.SIGINT, interrupted)


async def _main(reactor: Any, args: argparse.Namespace, prog: str) -> int:
    # A launched server's stderr is passed through: it is the server's own voice.
    target = ({"command": args.server, "stderr": lambda line: print(line, file=sys.stderr)}
              if args.server else {"url": args.url})
    service = MCPClientService(
        reactor, headers=dict(args.header), tls_ca=args.cafile, era=args.era, max_attempts=1,
        request_timeout=args.timeout, wait_for_connection=False, on_log=show_log, **target,
    )
    service.startService()
    progress = Progress(sys.stderr)

    async def work() -> tuple[Any, bool]:
        try:
            client = await service.when_ready().addTimeout(args.timeout, reactor)
        except defer.TimeoutError:
            # Twisted's TimeoutError, not the builtin: it would escape as a traceback.
            where = args.url or " ".join(args.server)
            raise ConnectionFailed(f"no MCP session with {where} within {args.timeout:g} s") from None
        if "logging" in client.server_capabilities or client.modern:
            await client.set_logging_level(args.log_level)
        return await run_command(client, args, progress)

    running = defer.ensureDeferred(work())
    _interrupt_cancels(reactor, running)
    try:
        result, failed = await running
    except CancelledError:
        progress.finish()
        print(f"{prog}: interrupted: the request was cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
    except HTTPError as e:
        print(f"{prog}: server error: {e.message}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    except RPCError as e:
        detail = f" {json.dumps(e.data)}" if e.data is not None else ""
        print(f"{prog}: server error {e.code}: {e.message}{detail}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    except (ConnectionFailed, ConnectionLost, RequestTimedOut) as e:
        print(f"{prog}: connection failed: {e}", file=sys.stderr)
        return EXIT_CONNECTION
    except LocalProtocolError as e:
        print(f"{prog}: malformed answer: {e}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    finally:
        await service.stopService()
    try:
        text = json.dumps(result, indent=2) if args.json else render(args.command, result)
    except (KeyError, TypeError, AttributeError, ValueError):  # a result of the wrong shape
        print(f"{prog}: malformed answer: {brief(result)}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    print(text)
    return EXIT_SERVER_ERROR if failed else EXIT_OK


def _usage_error(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    name = os.path.basename(sys.argv[0])
    prog = name if name in NAMES else NAMES[0]
    server: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, server = argv[:split], argv[split + 1:]
        if not server:
            _usage_error(prog, "nothing after --: expected the server command")
    parser = build_parser(prog, stdio=bool(server))
    args = parser.parse_args(argv)
    args.server = server
    if not server:
        if not args.url.startswith(SCHEMES):
            parser.error(f"not an http(s):// or ws(s):// URL: {args.url!r} (or give a command after --)")
    else:
        args.url = None
    if args.cafile is not None:
        # Checked here, before any connection, for a one-line usage error;
        # the client reads the file again when it connects.
        try:
            load_certificates(args.cafile)
        except OSError as e:
            _usage_error(prog, f"--cafile {args.cafile}: {e.strerror}")
        except ValueError as e:
            _usage_error(prog, f"--cafile {e}")
    status: list[int] = []

    async def run(reactor: Any) -> None:
        status.append(await _main(reactor, args, prog))

    with contextlib.suppress(SystemExit):  # react() always exits; we pick the status
        task.react(run)
    sys.exit(status[0] if status else EXIT_CONNECTION)
