"""Idle sessions at scale: as many initialised MCP sessions as one process
may hold, or 100,000 on one host across ``twistd mcpws --workers``.

    python bench/idle.py --sessions 19000                              # one process (20,000 open files here)
    python bench/idle.py --sessions 100000 --workers 6 --generators 6  # the host: SO_REUSEPORT spreads them

The server is ``twistd mcpws`` (the demo app) with no connection cap and its
default WebSocket ping (``--ping-interval``, 20 s). The load is
``bench/loadgen.py --mode idle`` in ``--generators`` processes, each opening
its share of the sessions from its own loopback address (127.0.0.2,
127.0.0.3, ...: one address has about 28,000 ephemeral ports towards one
server port, and one process may hold 20,000 sockets here). Every session
does the MCP handshake, then all stay idle for ``--wait`` seconds while the
server pings them, then each must answer a JSON-RPC ``ping``.

Reported: sessions open per worker (its open files), the time to open them
all, the workers' memory growth per session (RSS and PSS, summed over the
workers), the server's CPU in a window of the idle wait, the pings the
generators answered in their waits, and the CPU per ping from those two.
Figures only: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import loadgen  # this directory is on sys.path when a script in it runs
from scale import free_port, server

BENCH = Path(__file__).resolve().parent


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def memory(pids: list[int]) -> dict[str, int]:
    """RSS and PSS in KiB, summed over the workers."""
    total = {"vmrss": 0, "pss": 0}
    for pid in pids:
        for key, kib in loadgen.memory_kib(pid).items():
            total[key] += kib
    return total


def cpu(pids: list[int]) -> float:
    return sum(loadgen.cpu_seconds(pid) or 0.0 for pid in pids)


def generators(args: argparse.Namespace, port: int) -> list[subprocess.Popen[str]]:
    """``--generators`` load generators, each from its own loopback address."""
    share, extra = divmod(args.sessions, args.generators)
    started = []
    for n in range(args.generators):
        command = [sys.executable, str(BENCH / "loadgen.py"), "--url", f"ws://127.0.0.1:{port}/mcp",
                   "--mode", "idle", "--connections", str(share + (n < extra)), "--wait", str(args.wait),
                   "--concurrency", str(args.concurrency), "--source", f"127.0.0.{n + 2}", "--announce",
                   "--json"]
        started.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
    return started


def read_lines(processes: list[subprocess.Popen[str]], prefix: str, timeout: float) -> list[str]:
    """The first line starting with ``prefix`` from each process, in order."""
    found: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    streams = {p.stdout.fileno(): i for i, p in enumerate(processes) if p.stdout is not None}
    while len(found) < len(processes):
        if time.monotonic() > deadline:
            raise SystemExit(f"idle.py: {len(processes) - len(found)} generator(s) did not say {prefix!r}")
        ready, _, _ = select.select(list(streams), [], [], 1.0)
        for fd in ready:
            i = streams[fd]
            line = processes[i].stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise SystemExit(f"idle.py: generator {i} ended early (exit {processes[i].wait()})")
            if line.startswith(prefix):
                found[i] = line
                del streams[fd]
    return [found[i] for i in range(len(processes))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=19_000)
    parser.add_argument("--workers", type=int, default=1, help="twistd mcpws --workers")
    parser.add_argument("--generators", type=int, default=1, help="load generator processes")
    parser.add_argument("--ping-interval", type=int, default=20, help="the server's WebSocket ping (s)")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds every session stays idle")
    parser.add_argument("--window", type=float, default=40.0,
                        help="seconds of the wait over which the server's CPU is read")
    parser.add_argument("--concurrency", type=int, default=64, help="sessions each generator opens at once")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    loadgen.raise_open_file_limit()  # the workers and the generators inherit it
    port = free_port()
    options = ("--ping-interval", str(args.ping_interval), "--max-connections", "0")
    with tempfile.TemporaryDirectory(prefix="mcp-idle-") as temporary, \
            server(args.workers, f"tcp:{port}:interface=127.0.0.1:backlog=4096", port, Path(temporary),
                   options) as pids:
        time.sleep(2)
        before = memory(pids)
        started = time.monotonic()
        load = generators(args, port)
        try:
            read_lines(load, "OPENED", timeout=900)
            open_s = time.monotonic() - started
            time.sleep(2)
            after = memory(pids)
            per_worker = [open_files(pid) for pid in pids]
            cpu0, window0 = cpu(pids), time.monotonic()
            time.sleep(args.window)
            cpu_window = cpu(pids) - cpu0
            window = time.monotonic() - window0
            results = [json.loads(line) for line in read_lines(load, "{", timeout=args.wait + 600)]
        finally:
            for process in load:
                if process.poll() is None:
                    process.terminate()
                process.wait()
        after_check = memory(pids)
    opened = sum(r["opened"] for r in results)
    pings_per_s = sum(r["pings_during_wait"] / r["wait_s"] for r in results)
    report: dict[str, Any] = {
        "sessions": args.sessions, "opened": opened, "workers": args.workers, "generators": args.generators,
        "open_files_per_worker": per_worker, "open_s": round(open_s, 1),
        "sessions_per_s_opening": round(opened / open_s), "ping_interval_s": args.ping_interval,
        "rss_mib": round(after["vmrss"] / 1024),
        "rss_kib_per_session": (after["vmrss"] - before["vmrss"]) / opened,
        "pss_kib_per_session": (after["pss"] - before["pss"]) / opened,
        "rss_kib_per_session_after_check": (after_check["vmrss"] - before["vmrss"]) / opened,
        "server_core_share_idle": cpu_window / window, "pings_per_s": round(pings_per_s),
        "server_cpu_us_per_ping": cpu_window / window / pings_per_s * 1e6 if pings_per_s else None,
        "dropped": sum(r["dropped_during_wait"] for r in results),
        "answered_ping": sum(r["answered_ping"] for r in results),
        "open_failures": sum(r["open_failures"] for r in results),
        "first_failure": next((r["first_failure"] for r in results if r["first_failure"]), None),
    }
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:>34}: {value:,.1f}" if isinstance(value, float) else f"{key:>34}: {value}")


if __name__ == "__main__":
    main()
