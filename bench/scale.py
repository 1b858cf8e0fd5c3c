"""Scale-out figures: calls/s of 1, 2 and 4 ``twistd mcpws`` processes on one
port (``--workers``, SO_REUSEPORT) against one, and the latency HAProxy adds.

    python bench/scale.py                     # 1, 2, 4 workers, then HAProxy (about 1.5 minutes)
    python bench/scale.py --rounds 3          # the same three times, points alternating; medians
    python bench/scale.py --workers 1,2 --duration 10 --no-haproxy

Each point starts a fresh server (the demo app) on a free loopback port and
runs ``bench/loadgen.py`` against it (50 clients, 8 calls in flight each by
default), unpinned: the load generator shares the cores with the servers, and
its own share is printed with every row. With ``--rounds`` the points take
turns within each round and the tables show medians, ratios taken within a
round, so both sides of a ratio saw the same moment of a busy machine. Server CPU is the sum over the
worker processes (the ``--workers`` parent does nothing while serving) across
the measured window. The HAProxy rows run one server behind HAProxy
(``send-proxy-v2`` to a ``haproxy:`` endpoint, as etc/haproxy-mcp.cfg does)
and the same server without it, at 1 call in flight per client, so the
latency difference is HAProxy's hop. Figures only: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import loadgen  # this directory is on sys.path when a script in it runs
import uvloop
from run import Runner

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TWISTD = str(Path(sys.executable).with_name("twistd"))
START_TIMEOUT = 30.0

HAPROXY_CONFIG = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 60s
frontend bench
    bind 127.0.0.1:{proxy_port}
    default_backend mcp
backend mcp
    balance leastconn
    server mcp1 127.0.0.1:{server_port} send-proxy-v2
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise SystemExit(f"scale.py: {process.args!r} exited:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"scale.py: nothing listens on {port}:\n{log.read_text(errors='replace')}"
                                 ) from None
            time.sleep(0.05)


@contextmanager
def server(
    workers: int, endpoint: str, port: int, directory: Path,
    options: tuple[str, ...] = ("--ping-interval", "0"),
) -> Iterator[list[int]]:
    """A running ``twistd mcpws`` (with ``--workers`` above 1) with these
    ``mcpws`` options; yields the pids that serve."""
    log = directory / f"twistd-{workers}-{port}.log"
    command = [TWISTD, "-n", "--pidfile=", "mcpws", "--endpoint", endpoint, *options]
    if workers > 1:
        command += ["--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        wait_listening(port, process, log)
        if workers > 1:
            deadline = time.monotonic() + START_TIMEOUT
            while len(re.findall(rf"starting on {port}\b", log.read_text())) < workers:
                if time.monotonic() > deadline:
                    raise SystemExit(f"scale.py: not all workers listen:\n{log.read_text()}")
                time.sleep(0.05)
            pids = [int(pid) for pid in re.findall(r"Started worker \d+ \(pid (\d+)\)", log.read_text())]
        else:
            pids = [process.pid]
        yield pids
    finally:
        Runner.stop_server(process)


def load(port: int, pids: list[int], args: argparse.Namespace, inflight: int) -> dict[str, Any]:
    """One loadgen run (in this process) against 127.0.0.1:port; the server
    CPU it reports is the sum over ``pids`` across its measured window."""
    options = loadgen.parse_args([
        "--url", f"ws://127.0.0.1:{port}/mcp", "--pid", str(pids[0]), "--clients", str(args.clients),
        "--inflight", str(inflight), "--warmup", str(args.warmup), "--duration", str(args.duration)])
    per_process = loadgen.cpu_seconds

    def all_workers(pid: int | None) -> float:
        return sum(per_process(worker) or 0.0 for worker in pids)

    # loadgen reads one process's CPU around its window; the workers are several.
    loadgen.cpu_seconds = all_workers
    try:
        result: dict[str, Any] = uvloop.run(loadgen.run_calls(options, None))
    finally:
        loadgen.cpu_seconds = per_process
    return result


FIELDS = ("calls_per_s", "p50_us", "p99_us", "server_cpu_us_per_call", "loadgen_cpu_util", "errors")


def row(label: str, results: list[dict[str, Any]], ratios: list[float]) -> str:
    """A table row of medians over rounds; ``ratios`` are each round's calls/s against its baseline."""
    m = {key: statistics.median(r[key] for r in results) for key in FIELDS}
    return (f"| {label} | {m['calls_per_s']:,.0f} | {statistics.median(ratios):.2f}x | {m['p50_us']:,.0f} | "
            f"{m['p99_us']:,.0f} | {m['server_cpu_us_per_call']:,.1f} | {m['loadgen_cpu_util']:.0%} | "
            f"{max(r['errors'] for r in results)} |")


HEADER = ("| point | calls/s | vs first | p50 us | p99 us | server CPU us/call | loadgen CPU | errors |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")


def haproxy_round(args: argparse.Namespace, directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """One server measured directly and through HAProxy (1 call in flight per client)."""
    port, proxy_port = free_port(), free_port()
    config = directory / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(proxy_port=proxy_port, server_port=port))
    with server(1, f"haproxy:tcp:{port}:interface=127.0.0.1", port, directory) as pids:
        haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            wait_listening(proxy_port, haproxy, config)
            behind = load(proxy_port, pids, args, 1)
        finally:
            Runner.stop_server(haproxy)
    port = free_port()
    with server(1, f"tcp:{port}:interface=127.0.0.1", port, directory) as pids:
        direct = load(port, pids, args, 1)
    return direct, behind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=8, help="calls in flight per client (workers rows)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=1, help="rounds, points alternating; medians")
    parser.add_argument("--no-haproxy", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    loadgen.raise_open_file_limit()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before; {args.clients} clients x "
          f"{args.inflight} in flight, 100 B echo, {args.duration:g} s measured after {args.warmup:g} s, "
          f"{args.rounds} round(s); generator unpinned, sharing the cores\n")
    with tempfile.TemporaryDirectory(prefix="mcp-scale-") as temporary:
        directory = Path(temporary)
        results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
        proxied: list[tuple[dict[str, Any], dict[str, Any]]] = []
        haproxy = not args.no_haproxy and shutil.which("haproxy") is not None
        for _ in range(args.rounds):
            for workers in counts:
                port = free_port()
                with server(workers, f"tcp:{port}:interface=127.0.0.1", port, directory) as pids:
                    results[workers].append(load(port, pids, args, args.inflight))
            if haproxy:
                proxied.append(haproxy_round(args, directory))
    print(HEADER)
    first = results[counts[0]]
    for workers in counts:
        ratios = [r["calls_per_s"] / base["calls_per_s"]
                  for r, base in zip(results[workers], first, strict=True)]
        print(row(f"{workers} worker{'s' if workers > 1 else ''}", results[workers], ratios))
    if proxied:
        direct, behind = [d for d, _ in proxied], [b for _, b in proxied]
        ratios = [b["calls_per_s"] / d["calls_per_s"] for d, b in proxied]
        print(f"\nHAProxy's hop: 1 worker, {args.clients} clients x 1 in flight\n\n{HEADER}")
        print(row("direct", direct, [1.0]))
        print(row("through HAProxy", behind, ratios))
        added = {q: statistics.median(b[f"{q}_us"] - d[f"{q}_us"] for d, b in proxied)
                 for q in ("p50", "p99")}
        print(f"\nHAProxy adds {added['p50']:,.0f} us at p50 and {added['p99']:,.0f} us at p99 "
              "(medians of each round's difference; HAProxy's own CPU is not counted).")
    elif not args.no_haproxy:
        print("\n(haproxy not installed: no HAProxy rows)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
