"""``python -m mcp_twisted COMMAND [options]``: the package's commands.

Today there is one, ``stdio``; each command is an ``Options`` class in
``subCommands`` and a runner in ``RUNNERS``, so more fit beside it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.python import usage

from mcp_twisted import stdio

__all__ = ["RUNNERS", "Options", "main", "stdio_main"]

EXIT_USAGE = 2

# command -> what runs it, given the command's parsed options
RUNNERS: dict[str, Callable[[Any], NoReturn]] = {"stdio": stdio.run}


class Options(usage.Options):
    longdesc = "Commands of mcp-twisted; COMMAND --help tells more."
    subCommands: list[Any] = [
        ["stdio", None, stdio.Options,
         "Serve one app over stdin/stdout, for clients that launch local servers."],
    ]

    def getSynopsis(self) -> str:
        # A command's help starts with this too: "... mcp_twisted stdio [options]".
        return "Usage: python -m mcp_twisted" + ("" if self.subCommand else " COMMAND [options]")

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(f"expected a command: {', '.join(RUNNERS)}")


def main(argv: list[str] | None = None, prog: str = "python -m mcp_twisted") -> NoReturn:
    """Parse the command line and run the command; a usage mistake is one
    line on stderr and exit status 2, as for ``mcpws-call``."""
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"{prog}: error: {e} (see --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    assert options.subCommand is not None  # postOptions refused a missing command
    RUNNERS[options.subCommand](options.subOptions)


def stdio_main() -> NoReturn:
    """The ``mcpws-stdio`` console script: ``python -m mcp_twisted stdio``."""
    main(["stdio", *sys.argv[1:]], prog="mcpws-stdio")


if __name__ == "__main__":
    main()
