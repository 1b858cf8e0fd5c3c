"""The CPU cost of one Streamable HTTP request inside the server process, no
sockets and no reactor: request bytes go straight into the site's
``HTTPChannel`` over a ``StringTransport``, answers are read back and thrown
away. It isolates what a hot-path change saves from the noise of a loaded
machine (a change of a few µs is invisible in calls/s); ``bench/run.py``
measures the whole.

    python bench/inprocess_http.py                        # mcp-twisted (the checkout), then the floor
    python bench/inprocess_http.py --tool echo_progress   # SSE answers
    python bench/inprocess_http.py --tree /tmp/patched    # mcp_twisted/ from another copy
    python bench/inprocess_http.py --profile              # cProfile of mcp-twisted, by own time
    python bench/inprocess_http.py --callgrind            # instructions per request (valgrind)
    python bench/inprocess_http.py --opcodes              # Python opcodes per request, by function

Prints CPU µs per request (``time.process_time``), the least and the median
over ``--rounds`` rounds of ``--requests`` requests each. ``--callgrind``
runs each server under ``valgrind --tool=callgrind`` twice, with
``--requests`` and with a quarter of it, and prints the difference of the
instruction counts divided by the difference of the requests: start-up
cancels out, and with a fixed hash seed the count is the same on every run
(within a few hundred) whatever else the machine does. ``--opcodes`` counts
the Python bytecode instructions one request runs, by function
(``sys.settrace``): where two servers' instruction counts differ, it tells
more Python run from dearer C work.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH / "servers"))

import loadgen  # noqa: E402 - after the path to bench/servers
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HOST = IPv4Address("TCP", "127.0.0.1", 8080)


def make_site(name: str, tree: str | None) -> Any:
    """The site that ``bench/servers/`` runs for ``--http``."""
    if name == "floor":
        import bare_twisted_web

        return bare_twisted_web.make_site()
    sys.path.insert(0, str(Path(tree).resolve() if tree else BENCH.parent))
    import mcp_twisted_echo

    return mcp_twisted_echo.http_site(mcp_twisted_echo.make_factory({}))


def client(site: Any, tool: str) -> Callable[[int], bytes]:
    """A connection to ``site`` after ``initialize``: a function that posts call ``n``."""
    channel = site.buildProtocol(PEER)
    transport = StringTransport(hostAddress=HOST, peerAddress=PEER)
    channel.makeConnection(transport)
    head = (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\n")

    def post(body: bytes) -> bytes:
        channel.dataReceived(b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body))
        answer: bytes = transport.value()
        transport.clear()
        return answer

    answer = post(loadgen.initialize_request(loadgen.HTTP_PROTOCOL_VERSION))
    session = re.search(rb"(?i)\r\nmcp-session-id: *(\S+)", answer)
    if session:
        head += b"Mcp-Session-Id: " + session.group(1) + b"\r\n"
    head += b"MCP-Protocol-Version: " + loadgen.HTTP_PROTOCOL_VERSION.encode() + b"\r\n"
    post(loadgen.INITIALIZED)
    request = loadgen.call_request(tool, loadgen.payload_text(100))
    text = loadgen.payload_text(100).encode()
    if text not in post(request(1)):
        raise SystemExit(f"{tool}: the answer does not echo the text")
    return lambda n: post(request(n))


def measure(call: Callable[[int], bytes], rounds: int, requests: int) -> list[float]:
    """CPU µs per request, one number per round."""
    costs, first = [], 2
    for _ in range(rounds):
        started = time.process_time()
        for n in range(first, first + requests):
            call(n)
        first += requests
        costs.append((time.process_time() - started) / requests * 1e6)
    return costs


def opcodes(call: Callable[[int], object], requests: int, per: int = 1, top: int = 25) -> None:
    """Print the Python opcodes a call runs (``requests`` calls of ``per``
    requests each), in all and for the functions that run the most."""
    counts: collections.Counter[str] = collections.Counter()

    def tracer(frame: types.FrameType, event: str, arg: object) -> Callable[..., object]:
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        code = frame.f_code
        name = f"{'/'.join(Path(code.co_filename).parts[-2:])}:{code.co_firstlineno}({code.co_name})"

        def local(frame: types.FrameType, event: str, arg: object) -> Callable[..., object]:
            if event == "opcode":
                counts[name] += 1
            return local
        return local

    for n in range(2, 102):  # warm: first-call work is not a request's
        call(n)
    sys.settrace(tracer)
    try:
        for n in range(102, 102 + requests):
            call(n)
    finally:
        sys.settrace(None)
    scale = requests * per
    print(f"  Python opcodes per request: {sum(counts.values()) / scale:,.0f}")
    for name, count in counts.most_common(top):
        print(f"  {count / scale:8.1f}  {name}")


def callgrind(name: str, args: argparse.Namespace) -> float:
    """Instructions per request: two runs under callgrind, ``--requests`` and a quarter of it."""
    counts = []
    lengths = (args.requests, args.requests // 4)
    with tempfile.TemporaryDirectory(prefix="callgrind-") as directory:
        for requests in lengths:
            out = os.path.join(directory, f"{requests}.out")
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                       __file__, "--servers", name, "--tool", args.tool, "--rounds", "1",
                       "--requests", str(requests), *(["--tree", args.tree] if args.tree else [])]
            # A fixed hash seed: dict and set layouts, and so the count, the same on every run.
            subprocess.run(command, check=True, capture_output=True,
                           env={**os.environ, "PYTHONHASHSEED": "0"})
            with open(out) as f:
                summary = next(line for line in f if line.startswith("summary:"))
            counts.append(int(summary.split()[1]))
    return (counts[0] - counts[1]) / (lengths[0] - lengths[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="mcp_twisted,floor", help="mcp_twisted, floor or both")
    parser.add_argument("--tree", help="import mcp_twisted/ from this directory (default: the checkout)")
    parser.add_argument("--tool", choices=loadgen.TOOLS, default="echo")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=5000, help="per round")
    parser.add_argument("--profile", action="store_true", help="cProfile mcp-twisted instead")
    parser.add_argument("--callgrind", action="store_true", help="count instructions with valgrind")
    parser.add_argument("--opcodes", action="store_true", help="count Python opcodes by function")
    args = parser.parse_args()
    if args.profile:
        call = client(make_site("mcp_twisted", args.tree), args.tool)
        profile = cProfile.Profile()
        profile.runcall(measure, call, 1, args.requests)
        pstats.Stats(profile).sort_stats("tottime").print_stats(40)
        return
    for name in args.servers.split(","):
        if args.callgrind:
            count = callgrind(name, args)
            print(f"{name:<12} {args.tool:<14} instructions/request: {count:,.0f}", flush=True)
            continue
        if args.opcodes:
            print(f"{name:<12} {args.tool}")
            opcodes(client(make_site(name, args.tree), args.tool), min(args.requests, 1000))
            continue
        costs = measure(client(make_site(name, args.tree), args.tool), args.rounds, args.requests)
        print(f"{name:<12} {args.tool:<14} CPU µs/request: least {min(costs):.1f}, "
              f"median {statistics.median(costs):.1f} ({', '.join(f'{c:.1f}' for c in costs)})")


if __name__ == "__main__":
    main()
