"""Scale-out figures: calls/s of 1, 2 and 4 ``twistd mcpws`` processes on one
port (``--workers``, SO_REUSEPORT) against one, and the latency HAProxy adds.

    python bench/scale.py                     # 1, 2, 4 workers, then HAProxy (about 1.5 minutes)
    python bench/scale.py --workers 1,2 --duration 10
    python bench/scale.py --no-haproxy

Each point starts a fresh server (the demo app) on a free loopback port and
runs ``bench/loadgen.py`` against it (50 clients, 8 calls in flight each by
default), unpinned: the load generator shares the cores with the servers, and
its own share is printed with every row. Server CPU is the sum over the
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
def server(workers: int, endpoint: str, port: int, directory: Path) -> Iterator[list[int]]:
    """A running ``twistd mcpws`` (with ``--workers`` above 1); yields the pids that serve."""
    log = directory / f"twistd-{workers}-{port}.log"
    command = [TWISTD, "-n", "--pidfile=", "mcpws", "--endpoint", endpoint, "--ping-interval", "0"]
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


def row(label: str, result: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    ratio = f"{result['calls_per_s'] / baseline['calls_per_s']:.2f}x" if baseline else "1.00x"
    cpu = result["server_cpu_us_per_call"]
    return (f"| {label} | {result['calls_per_s']:,.0f} | {ratio} | {result['p50_us']:,.0f} | "
            f"{result['p99_us']:,.0f} | {cpu:,.1f} | {result['loadgen_cpu_util']:.0%} | {result['errors']} |")


HEADER = ("| point | calls/s | vs 1 | p50 us | p99 us | server CPU us/call | loadgen CPU | errors |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=8, help="calls in flight per client (workers rows)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--no-haproxy", action="store_true")
    args = parser.parse_args()
    loadgen.raise_open_file_limit()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before; {args.clients} clients x "
          f"{args.inflight} in flight, 100 B echo, {args.duration:g} s measured after {args.warmup:g} s; "
          "generator unpinned, sharing the cores\n")
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="mcp-scale-") as temporary:
        directory = Path(temporary)
        baseline = None
        for workers in (int(n) for n in args.workers.split(",")):
            port = free_port()
            with server(workers, f"tcp:{port}:interface=127.0.0.1", port, directory) as pids:
                result = load(port, pids, args, args.inflight)
            baseline = baseline or result
            print(row(f"{workers} worker{'s' if workers > 1 else ''}", result, baseline), flush=True)
        if args.no_haproxy:
            return
        if shutil.which("haproxy") is None:
            print("\n(haproxy not installed: no HAProxy rows)")
            return
        print(f"\nHAProxy's hop: 1 worker, {args.clients} clients x 1 in flight\n\n{HEADER}")
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
        print(row("direct", direct, direct))
        print(row("through HAProxy", behind, direct))
        print(f"\nHAProxy adds {behind['p50_us'] - direct['p50_us']:,.0f} us at p50 and "
              f"{behind['p99_us'] - direct['p99_us']:,.0f} us at p99 (HAProxy's own CPU is not counted).")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
