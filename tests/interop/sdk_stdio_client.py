"""sdk_client.py's scenarios over stdio: the official MCP Python SDK (mcp==1.30.0)
launches the server under test as its child and talks to it on stdin/stdout.

Usage: python sdk_stdio_client.py full|echo COMMAND [ARG...]   (the server's command line,
run in the repository root). Prints the same JSON report as sdk_client.py; a failure before
the report is a traceback on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import sdk_client
from mcp.client.stdio import StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] not in ("full", "echo"):
        print("usage: sdk_stdio_client.py full|echo COMMAND [ARG...]", file=sys.stderr)
        return 2
    scenario, command = sys.argv[1], sys.argv[2:]
    server = StdioServerParameters(command=command[0], args=command[1:], cwd=ROOT)
    run = sdk_client.run(lambda: stdio_client(server), scenario)
    report = asyncio.run(asyncio.wait_for(run, sdk_client.GLOBAL_TIMEOUT))
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
