"""Load generator for MCP servers over WebSocket (picows on uvloop) and
Streamable HTTP (``http://`` URLs: ``bench/httpgen.py``, calls only).

Every connection does the MCP handshake first (subprotocol ``mcp`` over
WebSocket, ``initialize``, ``notifications/initialized``). Then, by ``--mode``:

``calls`` (default)
    C connections (``--clients``), each keeping P ``tools/call`` requests of
    tool ``echo`` in flight (``--inflight``; 1 over HTTP), closed loop: every
    answer sends the next request. ``--tool echo_progress`` asks for progress
    (``_meta.progressToken``): the tool reports it once, then echoes.
    ``--warmup`` seconds unmeasured, then ``--duration`` seconds measured.
    Reports calls/s, p50/p90/p99 latency, errors, server CPU per call
    (``utime+stime`` of ``--pid`` from ``/proc/<pid>/stat`` across the
    measured window) and how busy the server's and our own core were; over
    HTTP also response bytes, SSE events, priming events and progress
    notifications per call.
``idle``
    Opens N initialised connections (``--connections``), reports the server's
    RSS growth per connection, waits ``--wait`` seconds (past a few auto-ping
    intervals; server pings are answered and counted), then checks that every
    connection still answers a JSON-RPC ``ping``.
``handshakes``
    C workers each loop connect (+TLS for ``wss://``) + upgrade + ``initialize``
    + ``notifications/initialized`` + close, for ``--duration`` seconds after
    ``--warmup``. Reports handshakes/s, latency and server CPU per handshake.

Examples::

    python bench/loadgen.py --url ws://127.0.0.1:8080/mcp --pid 1234 --clients 50 --inflight 8
    python bench/loadgen.py --url ws://127.0.0.1:8080/mcp --pid 1234 --mode idle --connections 10000
    python bench/loadgen.py --url wss://127.0.0.1:8443/mcp --cafile ca.pem --mode handshakes
    python bench/loadgen.py --url http://127.0.0.1:8080/mcp --pid 1234 --clients 50 --tool echo_progress

``--json`` prints one JSON object (for ``bench/run.py``) instead of text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpgen
import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

PROTOCOL_VERSION = "2025-06-18"
HTTP_PROTOCOL_VERSION = "2025-11-25"  # SSE answers start with a priming event since this one
SETUP_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TOOLS = ("echo", "echo_progress")


def initialize_request(version: str) -> bytes:
    return orjson.dumps({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "bench-loadgen", "version": "1.0.0"},
        },
    })


INITIALIZE = initialize_request(PROTOCOL_VERSION)
INITIALIZED = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})


def call_request(tool: str, text: str) -> Callable[[int], bytes]:
    """The ``tools/call`` request with a given id; for ``echo_progress`` the
    id is also the progress token."""
    params: dict[str, Any] = {"name": tool, "arguments": {"text": text}}
    if tool == "echo_progress":
        params["_meta"] = {"progressToken": -1}
    # -1 stands for the id; the text is letters and digits (payload_text), no % and no -.
    encoded = orjson.dumps({"jsonrpc": "2.0", "id": -1, "method": "tools/call", "params": params})
    template = encoded.replace(b"-1", b"%d")
    count = encoded.count(b"-1")
    return lambda request_id: template % ((request_id,) * count)


# -- the server process, from /proc ---------------------------------------

def cpu_times(pid: int | None) -> tuple[float, float] | None:
    """utime and stime of a process (its own code, the kernel's work for it),
    in seconds (None without a pid)."""
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process, in seconds (None without a pid)."""
    times = cpu_times(pid)
    return None if times is None else sum(times)


def core_times() -> dict[str, list[int]]:
    """Jiffies of every core by kind (user, nice, system, idle, iowait, irq, softirq, steal)."""
    times = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *numbers = line.split()
                times[name] = [int(n) for n in numbers[:8]]
    return times


def core_use(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """How each core spent the time between two readings, as shares:
    busy (anything but idle), irq (hard and soft interrupts: loopback TCP is
    mostly processed there) and steal (taken by the hypervisor)."""
    use = {}
    for name, numbers in after.items():
        d = [a - b for a, b in zip(numbers, before[name], strict=True)]
        total = sum(d) or 1
        use[name] = {
            "busy": round((total - d[3] - d[4]) / total, 3),
            "irq": round((d[5] + d[6]) / total, 3),
            "steal": round(d[7] / total, 3),
        }
    return use


def memory_kib(pid: int | None) -> dict[str, int]:
    """VmRSS (from status) and Pss (from smaps_rollup) in KiB."""
    if pid is None:
        return {}
    found: dict[str, int] = {}
    for path, key in ((f"/proc/{pid}/status", "VmRSS:"), (f"/proc/{pid}/smaps_rollup", "Pss:")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        found[key.rstrip(":").lower()] = int(line.split()[1])
                        break
        except OSError:
            pass
    return found


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentile(sorted_values: list[int], fraction: float) -> float:
    """Nearest-rank percentile of nanosecond values, in microseconds."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index] / 1000


def payload_text(size: int) -> str:
    """``size`` bytes of ASCII that JSON carries without escapes."""
    alphabet = string.ascii_letters + string.digits
    return (alphabet * (size // len(alphabet) + 1))[:size]


# -- one connection -------------------------------------------------------

@dataclass
class CallStats:
    """Shared by every connection of a ``calls`` run."""

    text: str
    request: Callable[[int], bytes]  # the tools/call with this id
    progress_per_call: int = 0  # progress notifications before each answer (HTTP checks it)
    recording: bool = False
    stopping: bool = False
    completed: int = 0
    errors: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    first_error: str | None = None
    # Over HTTP: response body bytes, SSE events, priming events and progress notifications received.
    response_bytes: int = 0
    events: int = 0
    priming: int = 0
    progress: int = 0


class Connection(WSListener):
    """A picows listener: setup requests await their answer; in the call loop
    every answer is checked, timed and replaced by the next request."""

    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.pings = 0
        self.disconnected = False
        self._parts: list[bytes] = []
        self._waiter: asyncio.Future[bytes] | None = None
        self._on_message: Callable[[bytes], None] = self._to_waiter
        # The call loop.
        self._stats: CallStats | None = None
        self._sent: dict[int, int] = {}
        self._next_id = 1
        self.drained: asyncio.Future[None] | None = None

    # picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT or kind == WSMsgType.CONTINUATION:
            if not frame.fin:
                self._parts.append(frame.get_payload_as_bytes())
                return
            data = frame.get_payload_as_bytes()
            if self._parts:
                data = b"".join([*self._parts, data])
                self._parts.clear()
            self._on_message(data)
        elif kind == WSMsgType.PING:
            self.pings += 1
            transport.send_pong(frame.get_payload_as_bytes())
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("disconnected"))
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    # setup: one request at a time
    def _to_waiter(self, data: bytes) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(data)

    async def request(self, message: bytes, timeout: float = SETUP_TIMEOUT) -> dict[str, Any]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.send(WSMsgType.TEXT, message)
        answer = orjson.loads(await asyncio.wait_for(self._waiter, timeout))
        self._waiter = None
        return answer  # type: ignore[no-any-return]

    async def initialize(self) -> None:
        answer = await self.request(INITIALIZE)
        if "result" not in answer:
            raise RuntimeError(f"initialize failed: {answer}")
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, INITIALIZED)

    async def ping(self, request_id: int, timeout: float) -> bool:
        answer = await self.request(b'{"jsonrpc":"2.0","id":%d,"method":"ping"}' % request_id, timeout)
        return answer.get("result") == {}

    # the call loop
    def start_calls(self, stats: CallStats, inflight: int) -> None:
        self._stats = stats
        self.drained = asyncio.get_running_loop().create_future()
        self._on_message = self._on_answer
        for _ in range(inflight):
            self._send_call()

    def _send_call(self) -> None:
        request_id = self._next_id
        self._next_id = request_id + 1
        self._sent[request_id] = time.perf_counter_ns()
        self.transport.send(WSMsgType.TEXT, self._stats.request(request_id))  # type: ignore[union-attr]

    def _on_answer(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        stats = self._stats
        assert stats is not None
        answer = orjson.loads(data)
        started = self._sent.pop(answer.get("id"), None)
        if started is None:
            return  # not an answer to a call (a notification)
        if stats.recording:
            stats.completed += 1
            stats.latencies_ns.append(now - started)
            result = answer.get("result")
            if result is None or result.get("isError") or result["content"][0]["text"] != stats.text:
                stats.errors += 1
                if stats.first_error is None:
                    stats.first_error = data[:300].decode(errors="replace")
        if not stats.stopping:
            self._send_call()
        elif not self._sent and not self.drained.done():  # type: ignore[union-attr]
            self.drained.set_result(None)  # type: ignore[union-attr]

    async def close(self, timeout: float = 5.0) -> None:
        transport = self.transport
        if transport is None or self.disconnected:
            return
        transport.send_close(WSCloseCode.OK)
        try:
            await asyncio.wait_for(transport.wait_disconnected(), timeout)
        except asyncio.TimeoutError:
            transport.disconnect(graceful=False)


async def connect(
    url: str, ssl_context: ssl.SSLContext | None, *, buffer: int = 16 * 1024, source: str | None = None
) -> Connection:
    transport, listener = await ws_connect(
        Connection, url,
        ssl_context=ssl_context,
        **({"local_addr": (source, 0)} if source else {}),
        extra_headers={"Sec-WebSocket-Protocol": "mcp"},
        enable_auto_pong=False,  # answered (and counted) by Connection
        websocket_handshake_timeout=SETUP_TIMEOUT,
        read_buffer_init_size=buffer,
    )
    chosen = transport.response.headers.get("Sec-WebSocket-Protocol")
    if chosen != "mcp":
        transport.disconnect(graceful=False)
        raise RuntimeError(f"server selected subprotocol {chosen!r}, not 'mcp'")
    await listener.initialize()
    return listener  # type: ignore[return-value]


async def connect_many(
    url: str, ssl_context: ssl.SSLContext | None, count: int, concurrency: int, buffer: int = 16 * 1024,
    source: str | None = None,
) -> tuple[list[Any], list[str]]:
    """``count`` initialised connections (``HTTPConnection`` for an http://
    URL), at most ``concurrency`` being set up at once."""
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def open_one() -> Any:
        if url.startswith("http:"):
            return await httpgen.connect(url, initialize_request(HTTP_PROTOCOL_VERSION), INITIALIZED,
                                         HTTP_PROTOCOL_VERSION, SETUP_TIMEOUT)
        return await connect(url, ssl_context, buffer=buffer, source=source)

    async def one() -> Any:
        async with gate:
            try:
                return await open_one()
            except Exception as e:
                failures.append(f"{type(e).__name__}: {e}")
                return None

    results = await asyncio.gather(*(one() for _ in range(count)))
    return [c for c in results if c is not None], failures


async def close_all(connections: list[Any]) -> None:
    await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


# -- modes ----------------------------------------------------------------

async def run_calls(args: argparse.Namespace, ssl_context: ssl.SSLContext | None) -> dict[str, Any]:
    connections, failures = await connect_many(args.url, ssl_context, args.clients, args.clients)
    if failures:
        raise RuntimeError(f"{len(failures)} of {args.clients} connections failed: {failures[0]}")
    text = payload_text(args.payload)
    stats = CallStats(text=text, request=call_request(args.tool, text),
                      progress_per_call=int(args.tool == "echo_progress"))
    for c in connections:
        c.start_calls(stats, args.inflight)
    await asyncio.sleep(args.warmup)

    server_cpu0, own_cpu0, cores0 = cpu_times(args.pid), time.process_time(), core_times()
    started = time.perf_counter()
    stats.recording = True
    await asyncio.sleep(args.duration)
    stats.recording = False
    elapsed = time.perf_counter() - started
    server_cpu1, own_cpu1, cores1 = cpu_times(args.pid), time.process_time(), core_times()

    stats.stopping = True
    await asyncio.wait([c.drained for c in connections if c.drained is not None], timeout=10)  # type: ignore[misc]
    lost = sum(1 for c in connections if c.disconnected)
    await close_all(connections)

    latencies = sorted(stats.latencies_ns)
    result: dict[str, Any] = {
        "mode": "calls", "clients": args.clients, "inflight": args.inflight, "payload": args.payload,
        "tool": args.tool,
        "duration_s": round(elapsed, 3), "calls": stats.completed,
        "calls_per_s": stats.completed / elapsed,
        "p50_us": percentile(latencies, 0.50), "p90_us": percentile(latencies, 0.90),
        "p99_us": percentile(latencies, 0.99),
        "errors": stats.errors + lost, "first_error": stats.first_error,
        "loadgen_cpu_util": (own_cpu1 - own_cpu0) / elapsed,
        "cores": core_use(cores0, cores1),
    }
    if args.url.startswith("http:") and stats.completed:
        for key in ("response_bytes", "events", "priming", "progress"):
            result[f"{key}_per_call"] = getattr(stats, key) / stats.completed
    if server_cpu0 is not None and server_cpu1 is not None:
        user, system = (after - before for after, before in zip(server_cpu1, server_cpu0, strict=True))
        result["server_cpu_util"] = (user + system) / elapsed
        if stats.completed:
            result["server_cpu_us_per_call"] = (user + system) / stats.completed * 1e6
            # The kernel's part apart (system calls, loopback TCP): the rest is the server's own code.
            result["server_sys_us_per_call"] = system / stats.completed * 1e6
    return result


async def run_idle(args: argparse.Namespace, ssl_context: ssl.SSLContext | None) -> dict[str, Any]:
    # One connection first, so that whatever the server loads or caches on
    # first use is in the baseline and not counted per connection.
    first = await connect(args.url, ssl_context, source=args.source)
    await first.ping(1, SETUP_TIMEOUT)
    await first.close()
    await asyncio.sleep(args.settle)
    before = memory_kib(args.pid)

    opening = time.perf_counter()
    connections, failures = await connect_many(
        args.url, ssl_context, args.connections, args.concurrency, buffer=4096, source=args.source
    )
    open_s = time.perf_counter() - opening
    if args.announce:
        print(f"OPENED {len(connections)}", flush=True)
    await asyncio.sleep(args.settle)
    after = memory_kib(args.pid)

    # What the server's pings cost while nothing else happens: its CPU over
    # the wait, by the pings the connections got (each answered at once).
    pings0, server_cpu0 = sum(c.pings for c in connections), cpu_seconds(args.pid)
    await asyncio.sleep(args.wait)
    pings = sum(c.pings for c in connections) - pings0
    server_cpu1 = cpu_seconds(args.pid)
    dropped = sum(1 for c in connections if c.disconnected)
    pinged = sum(1 for c in connections if c.pings)

    async def check(c: Connection, n: int) -> bool:
        try:
            return await c.ping(n, SETUP_TIMEOUT)
        except Exception:
            return False

    checking = time.perf_counter()
    answers = await asyncio.gather(*(check(c, 2) for c in connections))
    check_s = time.perf_counter() - checking
    after_wait = memory_kib(args.pid)
    await close_all(connections)

    opened = len(connections)
    result: dict[str, Any] = {
        "mode": "idle", "requested": args.connections, "opened": opened,
        "open_failures": len(failures), "first_failure": failures[0] if failures else None,
        "open_s": round(open_s, 2), "wait_s": args.wait,
        "dropped_during_wait": dropped, "got_server_pings": pinged,
        "answered_ping": sum(answers), "ping_check_s": round(check_s, 2),
        "rss_before_kib": before.get("vmrss"), "rss_after_kib": after.get("vmrss"),
        "rss_after_wait_kib": after_wait.get("vmrss"), "pings_during_wait": pings,
    }
    if server_cpu0 is not None and server_cpu1 is not None:
        result["server_cpu_during_wait_s"] = round(server_cpu1 - server_cpu0, 3)
        result["idle_core_share"] = (server_cpu1 - server_cpu0) / args.wait
        if pings:
            result["server_cpu_us_per_ping"] = (server_cpu1 - server_cpu0) / pings * 1e6
    if before and after and opened:
        result["rss_kib_per_conn"] = (after["vmrss"] - before["vmrss"]) / opened
        result["rss_kib_per_conn_after_wait"] = (after_wait["vmrss"] - before["vmrss"]) / opened
        if "pss" in before and "pss" in after:
            result["pss_kib_per_conn"] = (after["pss"] - before["pss"]) / opened
    return result


async def run_handshakes(args: argparse.Namespace, ssl_context: ssl.SSLContext | None) -> dict[str, Any]:
    recording = False
    stopping = False
    latencies: list[int] = []
    errors: list[str] = []

    async def worker() -> None:
        while not stopping:
            started = time.perf_counter_ns()
            try:
                connection = await connect(args.url, ssl_context, buffer=4096)
                await connection.close()
            except Exception as e:
                if recording:
                    errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.01)
                continue
            if recording:
                latencies.append(time.perf_counter_ns() - started)

    workers = [asyncio.create_task(worker()) for _ in range(args.clients)]
    await asyncio.sleep(args.warmup)
    server_cpu0, own_cpu0, cores0 = cpu_seconds(args.pid), time.process_time(), core_times()
    started = time.perf_counter()
    recording = True
    await asyncio.sleep(args.duration)
    recording = False
    elapsed = time.perf_counter() - started
    server_cpu1, own_cpu1, cores1 = cpu_seconds(args.pid), time.process_time(), core_times()
    stopping = True
    await asyncio.wait(workers, timeout=SETUP_TIMEOUT)

    latencies.sort()
    result: dict[str, Any] = {
        "mode": "handshakes", "clients": args.clients, "tls": args.url.startswith("wss:"),
        "duration_s": round(elapsed, 3), "handshakes": len(latencies),
        "handshakes_per_s": len(latencies) / elapsed,
        "p50_us": percentile(latencies, 0.50), "p99_us": percentile(latencies, 0.99),
        "errors": len(errors), "first_error": errors[0] if errors else None,
        "loadgen_cpu_util": (own_cpu1 - own_cpu0) / elapsed,
        "cores": core_use(cores0, cores1),
    }
    if server_cpu0 is not None and server_cpu1 is not None:
        spent = server_cpu1 - server_cpu0
        result["server_cpu_util"] = spent / elapsed
        result["server_cpu_us_per_handshake"] = spent / len(latencies) * 1e6 if latencies else None
    return result


# -- command line ---------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load generator for MCP servers over WebSocket and Streamable HTTP.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--url", required=True, help="ws://, wss:// or http:// URL of the MCP endpoint")
    parser.add_argument("--pid", type=int, help="server process id (for CPU and memory)")
    parser.add_argument("--mode", choices=("calls", "idle", "handshakes"), default="calls")
    parser.add_argument("--clients", type=int, default=50, help="connections (calls) or workers (handshakes)")
    parser.add_argument("--inflight", type=int, default=1, help="calls in flight per connection")
    parser.add_argument("--payload", type=int, default=100, help="bytes of echo text")
    parser.add_argument("--tool", choices=TOOLS, default="echo",
                        help="echo_progress: ask for progress, reported once before the answer")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured")
    parser.add_argument("--connections", type=int, default=10_000, help="idle: connections to open")
    parser.add_argument("--concurrency", type=int, default=32, help="idle: connections set up at once")
    parser.add_argument("--wait", type=float, default=20.0, help="idle: seconds idle before the check")
    parser.add_argument("--settle", type=float, default=1.0, help="idle: seconds before reading memory")
    parser.add_argument("--announce", action="store_true",
                        help="idle: print OPENED <n> as soon as the connections are open")
    parser.add_argument("--source", help="idle: local address to connect from (e.g. 127.0.0.2: "
                                         "each address has its own ephemeral ports)")
    parser.add_argument("--cafile", help="wss://: verify the server against this CA (default: do not verify)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def format_text(result: dict[str, Any]) -> str:
    lines = []
    for key, value in result.items():
        lines.append(f"{key:>28}: {value:,.1f}" if isinstance(value, float) else f"{key:>28}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.url.startswith("http:") and (args.mode != "calls" or args.inflight != 1):
        raise SystemExit("loadgen.py: over HTTP only --mode calls, with --inflight 1")
    raise_open_file_limit()
    ssl_context = None
    if args.url.startswith("wss:"):
        ssl_context = ssl.create_default_context(cafile=args.cafile)
        if args.cafile is None:
            # Full handshakes all the same; not checking the server's certificate
            # only spares the generator's core.
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
    runner = {"calls": run_calls, "idle": run_idle, "handshakes": run_handshakes}[args.mode]
    try:
        import uvloop
    except ImportError:
        run: Callable[[Any], Any] = asyncio.run
    else:
        run = uvloop.run
    result = run(runner(args, ssl_context))
    print(json.dumps(result) if args.json else format_text(result))


if __name__ == "__main__":
    main()

