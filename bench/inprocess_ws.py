"""The CPU cost of one ``tools/call`` over WebSocket inside the server
process, no sockets and no reactor: masked client frames go straight into
the protocol's ``dataReceived`` over a ``StringTransport``, answers are read
back and thrown away. Like ``inprocess_http.py`` it isolates what a hot-path
change saves from the noise of a shared machine; ``bench/run.py`` measures
the whole.

    python bench/inprocess_ws.py                          # mcp_twisted, floor_tuned and floor
    python bench/inprocess_ws.py --batch 8                # 8 frames per read, as at 8 in flight
    python bench/inprocess_ws.py --payload 10240
    python bench/inprocess_ws.py --tree /tmp/patched      # mcp_twisted/ from another copy
    python bench/inprocess_ws.py --profile                # cProfile of mcp_twisted, by own time
    python bench/inprocess_ws.py --callgrind              # instructions per call (valgrind)
    python bench/inprocess_ws.py --opcodes                # Python opcodes per call, by function
    python bench/inprocess_ws.py --ablate --rounds 60 --calls 1000   # what each piece costs in time

Prints CPU µs per call (``time.process_time``), the least and the median
over ``--rounds`` rounds of ``--calls`` calls each. ``--callgrind`` runs
each server under ``valgrind --tool=callgrind`` twice, with ``--calls`` and
with a quarter of it, and prints the difference of the instruction counts
divided by the difference of the calls: start-up cancels out, and the count
is the same on every run whatever else the machine does (a fixed
``PYTHONHASHSEED``, and one run without valgrind first so that no module is
compiled inside a counted run: that had added up to ~3,000 instructions a
call to the first measurement after an edit).

``--ablate`` times mcp-twisted, then the same connection with one piece of
its path after another replaced by the tuned floor's code (the tool step,
the answer step, the outlet, the whole session), then the tuned floor, in
turns within one process, and prints the 10th percentile of each (the
least disturbed rounds of a noisy machine) and the step between neighbours:
time, which instruction counts do not give.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH / "servers"))

import loadgen  # noqa: E402 - after the path to bench/servers
import orjson  # noqa: E402
from inprocess_http import HOST, PEER, measure, opcodes  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

SERVERS = ("mcp_twisted", "floor_tuned", "floor")
UPGRADE = (b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Protocol: mcp\r\n\r\n")


class Transport(StringTransport):
    """Autobahn unregisters a producer it never registered when it drops a
    connection; a real TCP transport allows that."""

    def unregisterProducer(self) -> None:
        self.producer = None


def frame(payload: bytes) -> bytes:
    """A client's text frame; the mask is zero, so the payload is sent as it
    is, but the server unmasks it all the same."""
    size = len(payload)
    if size < 126:
        head = bytes((0x81, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def make_factory(name: str, tree: str | None) -> Any:
    """The factory that ``bench/servers/`` runs for a server name."""
    if name == "mcp_twisted":
        sys.path.insert(0, str(Path(tree).resolve() if tree else BENCH.parent))
        import mcp_twisted_echo

        return mcp_twisted_echo.make_factory({})
    import bare_autobahn

    factory = bare_autobahn.make_factory(name == "floor_tuned")
    factory.setProtocolOptions(webStatus=False)
    return factory


def client(
    factory: Any, payload: int, batch: int, adjust: Callable[[Any], object] | None = None
) -> Callable[[int], bytes]:
    """An initialised connection: a function that sends ``batch`` calls from
    id ``n`` in one read. ``adjust`` gets the protocol once it is initialised
    (``--ablate``)."""
    protocol = factory.buildProtocol(PEER)
    transport = Transport(hostAddress=HOST, peerAddress=PEER)
    protocol.makeConnection(transport)
    protocol.dataReceived(UPGRADE)
    if b" 101 " not in transport.value():
        raise SystemExit(f"upgrade refused: {transport.value()[:200]!r}")
    transport.clear()
    protocol.dataReceived(frame(loadgen.INITIALIZE) + frame(loadgen.INITIALIZED))
    transport.clear()
    if adjust is not None:
        adjust(protocol)
    text = loadgen.payload_text(payload)
    request = loadgen.call_request("echo", text)

    def call(n: int) -> bytes:
        protocol.dataReceived(b"".join(frame(request(i)) for i in range(n * batch, (n + 1) * batch)))
        answer: bytes = transport.value()
        transport.clear()
        return answer

    if text.encode() not in call(0):
        raise SystemExit("the answer does not echo the text")
    return call


def _echo_result(params: Any) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": params["arguments"]["text"]}]}


def _tool_answered_from_params(protocol: Any) -> None:
    """The quick table's ``tools/call`` answers from the params: no tool
    look-up, no argument validation, no tool call."""
    protocol.session._quick = {"tools/call": lambda params, session: _echo_result(params)}


# The two replacements below are written out in full, not through a shared
# helper: a helper's extra call per message would be timed with them.
def _answered_through_outlet(protocol: Any) -> None:
    """... and the answer is encoded and handed to the session's outlet at
    once (no ``_answer_quickly``, ``_answer``, size check)."""
    session = protocol.session

    def answer(quick: Any, request_id: Any, method: str, params: Any) -> bool:
        reply = {"jsonrpc": "2.0", "id": request_id, "result": _echo_result(params)}
        session._send(orjson.dumps(reply), request_id, True)
        return True

    session._answer_quickly = answer


def _answered_by_send_message(protocol: Any) -> None:
    """... and handed to Autobahn's ``sendMessage`` (no outlet)."""

    def answer(quick: Any, request_id: Any, method: str, params: Any) -> bool:
        reply = {"jsonrpc": "2.0", "id": request_id, "result": _echo_result(params)}
        protocol.sendMessage(orjson.dumps(reply))
        return True

    protocol.session._answer_quickly = answer


def _floor_handler(protocol: Any) -> None:
    """mcp-twisted's protocol with the tuned floor's ``onMessage``: no session at all."""
    import bare_autobahn

    protocol.loads, protocol.dumps = orjson.loads, orjson.dumps
    protocol.onMessage = types.MethodType(bare_autobahn.FloorProtocol.onMessage, protocol)


# mcp-twisted, then one piece of its path after another replaced by what the
# tuned floor does instead, then the tuned floor: the differences between
# neighbours are what each piece costs in time.
ABLATION: tuple[tuple[str, str, Callable[[Any], object] | None], ...] = (
    ("mcp_twisted", "mcp-twisted", None),
    ("mcp_twisted", "- tool step", _tool_answered_from_params),
    ("mcp_twisted", "- answer step", _answered_through_outlet),
    ("mcp_twisted", "- outlet", _answered_by_send_message),
    ("mcp_twisted", "- session", _floor_handler),
    ("floor_tuned", "tuned floor", None),
)


def ablate(args: argparse.Namespace) -> None:
    """Time each ``ABLATION`` step in turns, in one process, and print what each piece costs."""
    calls = [(label, client(make_factory(name, args.tree), args.payload, args.batch, adjust))
             for name, label, adjust in ABLATION]
    costs: dict[str, list[float]] = {label: [] for label, _ in calls}
    for _ in range(args.rounds):
        for label, call in calls:
            costs[label].extend(cost / args.batch for cost in measure(call, 1, args.calls))
    previous = None
    print(f"{'':<14} {'p10 µs/call':>12} {'median':>8} {'step (p10)':>11}")
    for label, values in costs.items():
        low = sorted(values)[len(values) // 10]
        step = f"{previous - low:+.2f}" if previous is not None else ""
        print(f"{label:<14} {low:>12.2f} {statistics.median(values):>8.2f} {step:>11}")
        previous = low


def callgrind(name: str, args: argparse.Namespace) -> float:
    """Instructions per call: two runs under callgrind, ``--calls`` and a quarter of it."""
    counts = []
    lengths = (args.calls, args.calls // 4)
    script = [sys.executable, __file__, "--servers", name, "--rounds", "1", "--payload", str(args.payload),
              "--batch", str(args.batch), *(["--tree", args.tree] if args.tree else [])]
    # One fixed hash seed: str hashes (and so dict and set probing) are the
    # same in both runs and from one invocation to the next.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    # Once without valgrind first, so that no module is compiled (and its
    # .pyc written) inside a counted run: a file changed since the last run
    # would add its compilation to the first run's count only.
    subprocess.run([*script, "--calls", "1"], check=True, capture_output=True, env=env)
    with tempfile.TemporaryDirectory(prefix="callgrind-") as directory:
        for calls in lengths:
            out = os.path.join(directory, f"{calls}.out")
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *script,
                       "--calls", str(calls)]
            subprocess.run(command, check=True, capture_output=True, env=env)
            with open(out) as f:
                summary = next(line for line in f if line.startswith("summary:"))
            counts.append(int(summary.split()[1]))
    return (counts[0] - counts[1]) / ((lengths[0] - lengths[1]) * args.batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"some of {','.join(SERVERS)}")
    parser.add_argument("--tree", help="import mcp_twisted/ from this directory (default: the checkout)")
    parser.add_argument("--payload", type=int, default=100, help="bytes of echo text")
    parser.add_argument("--batch", type=int, default=1, help="frames per read (calls in flight)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5000, help="reads per round")
    parser.add_argument("--profile", action="store_true", help="cProfile mcp_twisted instead")
    parser.add_argument("--callgrind", action="store_true", help="count instructions with valgrind")
    parser.add_argument("--opcodes", action="store_true", help="count Python opcodes by function")
    parser.add_argument("--ablate", action="store_true",
                        help="time mcp-twisted with one piece after another replaced by the floor's code")
    args = parser.parse_args()
    if args.ablate:
        ablate(args)
        return
    if args.profile:
        call = client(make_factory("mcp_twisted", args.tree), args.payload, args.batch)
        profile = cProfile.Profile()
        profile.runcall(measure, call, 1, args.calls)
        pstats.Stats(profile).sort_stats("tottime").print_stats(40)
        return
    for name in args.servers.split(","):
        if args.callgrind:
            print(f"{name:<12} instructions/call: {callgrind(name, args):,.0f}", flush=True)
            continue
        if args.opcodes:
            print(name)
            opcodes(client(make_factory(name, args.tree), args.payload, args.batch), min(args.calls, 1000),
                    args.batch)
            continue
        call = client(make_factory(name, args.tree), args.payload, args.batch)
        costs = [cost / args.batch for cost in measure(call, args.rounds, args.calls)]
        print(f"{name:<12} CPU µs/call: least {min(costs):.2f}, median {statistics.median(costs):.2f} "
              f"({', '.join(f'{c:.1f}' for c in costs)})", flush=True)


if __name__ == "__main__":
    main()
