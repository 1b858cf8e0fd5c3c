"""The benchmark suite: mcp-twisted against a floor (bare Autobahn for
WebSocket, a bare twisted.web resource for Streamable HTTP) and the official
MCP Python SDK, with every target as a ratio.

    python bench/run.py            # the full suite (about 20 minutes)
    python bench/run.py --quick    # a smoke run (about a minute)
    python bench/run.py --servers floor,mcp_twisted --clients 50 --inflight 8 --payload 10240
    python bench/run.py --http     # Streamable HTTP only: 1 and 50 clients, JSON and SSE (about 9 minutes)
    python bench/run.py --http --servers floor,mcp_twisted --clients 50 --answer sse
    python bench/run.py --baseline HEAD~1   # also measure a revision of mcp_twisted/, alternated
    python bench/run.py --http --baseline /tmp/patched   # or a copy of it (a directory with mcp_twisted/)
    python bench/run.py --http --tree HEAD    # mcp_twisted/ as committed, not the working tree

Each measured point starts a fresh server pinned to one core (``--server-cpu``)
and a load generator (``bench/loadgen.py``) pinned to another
(``--loadgen-cpu``); servers take turns within a round (A B C A B C ...) for
``--rounds`` rounds, and the tables show medians. A ratio is the median over
rounds of the ratio within each round, so both sides of a ratio saw the same
moment of a noisy machine. Markdown goes to stdout and
``bench/results/latest.md``, every raw measurement to ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"

SERVERS: dict[str, str] = {
    "floor": "servers/bare_autobahn.py",
    "floor_tuned": "servers/bare_autobahn.py",
    "mcp_twisted": "servers/mcp_twisted_echo.py",
    "sdk_fastmcp": "servers/sdk_fastmcp.py",
    "sdk_lowlevel": "servers/sdk_lowlevel.py",
    "sdk_fastmcp_fast": "servers/sdk_fastmcp.py",
    "sdk_lowlevel_fast": "servers/sdk_lowlevel.py",
}
# The SDK as it comes, and in its fastest configuration (--fast: no jsonschema check per call).
SDK = ("sdk_fastmcp", "sdk_lowlevel", "sdk_fastmcp_fast", "sdk_lowlevel_fast")
# The full suite's: FastMCP as it comes, and both servers in their fastest configuration.
SDK_SUITE = ("sdk_fastmcp", "sdk_fastmcp_fast", "sdk_lowlevel_fast")
OURS, FLOOR, TUNED = "mcp_twisted", "floor", "floor_tuned"
# Options a server name stands for besides its script.
SERVER_OPTIONS: dict[str, list[str]] = {TUNED: ["--tuned"], "sdk_fastmcp_fast": ["--fast"],
                                        "sdk_lowlevel_fast": ["--fast"]}
# Over Streamable HTTP the same servers run with --http; the floor is another program.
HTTP_SERVERS: dict[str, str] = {**SERVERS, FLOOR: "servers/bare_twisted_web.py"}
ANSWERS = ("json", "sse")

# Targets (from the benchmark issues): calls/s and p99 against the tuned
# floor, calls/s against the stdlib floor (the first round's target) and the SDK.
MIN_TUNED_RATIO = 0.9
MAX_P99_RATIO = 1.2
MIN_FLOOR_RATIO = 0.75
MIN_SDK_RATIO = 4.0
MAX_IDLE_KIB = 12.0
IDLE_TARGET_CONNECTIONS = 10_000
# Targets over Streamable HTTP (from the Streamable HTTP issue).
HTTP_MIN_FLOOR_RATIO = 0.8
HTTP_MIN_SDK_RATIO = 3.0


def git(*command: str) -> str:
    """A git command's output in this checkout ("" if it fails)."""
    try:
        done = subprocess.run(["git", *command], capture_output=True, text=True, cwd=REPO)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def tree_state() -> str:
    """The commit, and a digest of uncommitted changes to mcp_twisted/ if any."""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    diff = git("diff", "HEAD", "--", "mcp_twisted")
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "mcp_twisted")
    if diff or untracked:
        digest = hashlib.sha1((diff + untracked).encode()).hexdigest()[:8]
        return f"{commit} + uncommitted changes to mcp_twisted/ ({digest})"
    return commit


# -- plan -----------------------------------------------------------------

@dataclass(frozen=True)
class CallConfig:
    clients: int
    inflight: int
    payload: int

    @property
    def label(self) -> str:
        size = f"{self.payload // 1024} KiB" if self.payload >= 1024 else f"{self.payload} B"
        return f"{self.clients}x{self.inflight}, {size}"


@dataclass(frozen=True)
class HTTPConfig:
    """Streamable HTTP: ``clients`` keep-alive connections, one call in flight
    each; ``answer`` "json" calls ``echo`` (a JSON body), "sse" calls
    ``echo_progress`` (an SSE stream: priming event, progress, answer)."""

    clients: int
    answer: str
    payload: int = 100

    @property
    def tool(self) -> str:
        return "echo_progress" if self.answer == "sse" else "echo"

    @property
    def label(self) -> str:
        return f"http {self.clients}x1, {self.answer.upper()}"

    def server_options(self, server: str) -> list[str]:
        """The SDK chooses JSON or SSE per server; mcp-twisted and the floor per request."""
        json_response = server.partition("@")[0] in SDK and self.answer == "json"
        return ["--http", *(["--json-response"] if json_response else [])]


def http_configs(clients: Iterable[int], answers: Iterable[str]) -> list[HTTPConfig]:
    return [HTTPConfig(c, a) for c in clients for a in answers]


@dataclass
class Plan:
    rounds: int
    warmup: float
    duration: float
    calls: list[tuple[CallConfig, list[str]]] = field(default_factory=list)
    http_calls: list[tuple[HTTPConfig, list[str]]] = field(default_factory=list)
    handshakes: list[str] = field(default_factory=list)
    handshake_clients: int = 16
    tls_calls: list[str] = field(default_factory=list)
    idle: list[tuple[str, int]] = field(default_factory=list)
    idle_ping: int = 5
    idle_wait: float = 16.0
    notes: list[str] = field(default_factory=list)


def full_plan(args: argparse.Namespace) -> Plan:
    plan = Plan(rounds=args.rounds or 3, warmup=args.warmup or 2.0, duration=args.duration or 6.0)
    for payload in (100, 10240):
        for clients in (1, 50):
            for inflight in (1, 8):
                servers = [FLOOR, TUNED, OURS, *(SDK_SUITE if payload == 100 else ())]
                plan.calls.append((CallConfig(clients, inflight, payload), servers))
    plan.http_calls = [(config, [FLOOR, OURS, *SDK_SUITE]) for config in http_configs((1, 50), ANSWERS)]
    plan.handshakes = [FLOOR, TUNED, OURS, "sdk_fastmcp_fast"]
    plan.tls_calls = [FLOOR, TUNED, OURS, "sdk_fastmcp_fast"]
    n = args.idle_connections or IDLE_TARGET_CONNECTIONS
    plan.idle = [(FLOOR, n), (TUNED, n), (OURS, n), ("sdk_fastmcp_fast", min(n, 1000))]
    plan.notes.append(
        "The SDK servers (800 to 3,000 calls/s) are measured with 100 B payloads only, as FastMCP as it "
        "comes and both servers in their fastest configuration (`_fast`: no jsonschema check on every "
        "call); for new sessions, TLS and idle connections (1,000) as the fastest FastMCP only."
    )
    return plan


def quick_plan(args: argparse.Namespace) -> Plan:
    plan = Plan(rounds=args.rounds or 1, warmup=args.warmup or 0.5, duration=args.duration or 1.5)
    plan.calls = [
        (CallConfig(50, 1, 100), [FLOOR, TUNED, OURS, "sdk_fastmcp"]),
        (CallConfig(50, 8, 10240), [FLOOR, TUNED, OURS]),
    ]
    plan.http_calls = [(config, [FLOOR, OURS, "sdk_fastmcp"]) for config in http_configs((50,), ANSWERS)]
    plan.handshakes = [TUNED, OURS]
    plan.handshake_clients = 8
    plan.idle = [(TUNED, args.idle_connections or 300), (OURS, args.idle_connections or 300)]
    plan.idle_ping, plan.idle_wait = 1, 2.5
    plan.notes.append("Quick smoke run: one short round, few connections; not for conclusions.")
    return plan


def with_baseline(plan: Plan, baselines: Sequence[str]) -> Plan:
    """Measure ``baselines`` (other copies of mcp-twisted) right after the working tree everywhere."""
    def add(servers: list[str]) -> list[str]:
        return [t for s in servers for t in ([s, *baselines] if s == OURS else [s])]

    plan.calls = [(config, add(servers)) for config, servers in plan.calls]
    plan.http_calls = [(config, add(servers)) for config, servers in plan.http_calls]
    plan.handshakes, plan.tls_calls = add(plan.handshakes), add(plan.tls_calls)
    plan.idle = [(t, n) for s, n in plan.idle for t in ([s, *baselines] if s == OURS else [s])]
    return plan


def http_plan(args: argparse.Namespace) -> Plan:
    """Streamable HTTP only: the clients and answers named (default all), every server unless named."""
    plan = Plan(rounds=args.rounds or 3, warmup=args.warmup or 2.0, duration=args.duration or 6.0)
    servers = args.servers or [FLOOR, OURS, *SDK_SUITE]
    plan.http_calls = [(config, servers) for config in http_configs(args.clients or (1, 50),
                                                                     args.answer or ANSWERS)]
    return plan


def custom_plan(args: argparse.Namespace) -> Plan:
    """Only the configurations named on the command line."""
    plan = Plan(rounds=args.rounds or 3, warmup=args.warmup or 2.0, duration=args.duration or 6.0)
    servers = args.servers or [TUNED, OURS]
    idle_only = args.idle_connections and not (args.clients or args.inflight or args.payload)
    for clients in [] if idle_only else args.clients or [50]:
        for inflight in args.inflight or [1]:
            for payload in args.payload or [100]:
                plan.calls.append((CallConfig(clients, inflight, payload), servers))
    if args.idle_connections:
        plan.idle = [(s, args.idle_connections) for s in servers]
    if args.tls:
        plan.handshakes = list(servers)
        plan.tls_calls = list(servers)
    return plan


# -- processes ------------------------------------------------------------

class Runner:
    """Starts servers and load generators, pinned and prioritised."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.server_cpu = args.server_cpu
        self.loadgen_cpu = args.loadgen_cpu
        self.nice = args.nice
        self.log = open(RESULTS / "servers.log", "w")  # noqa: SIM115 - kept for the whole run
        self.tls: tuple[Path, Path, Path] | None = None
        self.trees: dict[str, Path] = {}  # "mcp_twisted@REV" -> a copy of that revision
        self.tree_at_start = self.tree_at_end = tree_state()

    @staticmethod
    def export(revision: str) -> tuple[str, Path]:
        """A directory with ``mcp_twisted/`` as of a revision (exported once),
        or the directory given if it has one (a patched copy); and its label."""
        if (Path(revision) / "mcp_twisted").is_dir():
            return Path(revision).resolve().name, Path(revision).resolve()
        commit = git("rev-parse", "--short", revision)
        if not commit:
            raise SystemExit(f"run.py: unknown revision {revision!r}")
        directory = RESULTS / "trees" / commit
        if not (directory / "mcp_twisted").is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(["git", "archive", commit, "mcp_twisted"], capture_output=True,
                                     cwd=REPO, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
        return commit, directory

    def add_baseline(self, revision: str) -> str:
        """Run ``mcp_twisted/`` of a revision or directory too; returns its server name."""
        label, directory = self.export(revision)
        name = f"{OURS}@{label}"
        self.trees[name] = directory
        return name

    def use_tree(self, revision: str) -> None:
        """Measure mcp-twisted itself from a revision or directory, not the working tree."""
        label, self.trees[OURS] = self.export(revision)
        state = f"{git('rev-parse', '--short', 'HEAD')}; mcp_twisted/ as of {label} (--tree {revision})"
        self.tree_at_start = self.tree_at_end = state

    def _prefix(self, cpu: int) -> list[str]:
        prefix = ["taskset", "-c", str(cpu)]
        if self.nice:
            prefix += ["nice", "-n", str(self.nice)]
        return prefix

    def tls_files(self) -> tuple[Path, Path, Path]:
        """(CA, certificate, key) for 127.0.0.1, made once per run with trustme."""
        if self.tls is None:
            import trustme

            directory = RESULTS / "tls"
            directory.mkdir(exist_ok=True)
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost")
            paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
            ca.cert_pem.write_to_path(str(paths[0]))
            cert.cert_chain_pems[0].write_to_path(str(paths[1]))
            cert.private_key_pem.write_to_path(str(paths[2]))
            self.tls = paths
        return self.tls

    def start_server(
        self, name: str, extra: Sequence[str] = (), *, http: bool = False
    ) -> tuple[subprocess.Popen[str], int]:
        if name in self.trees:
            extra = [*extra, "--tree", str(self.trees[name])]
        extra = [*SERVER_OPTIONS.get(name, ()), *extra]
        script = BENCH / (HTTP_SERVERS if http else SERVERS)[name.partition("@")[0]]
        command = [*self._prefix(self.server_cpu), sys.executable, str(script), "--port", "0", *extra]
        self.log.write(f"--- {name} {' '.join(extra)}\n")
        self.log.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO)
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                line = process.stdout.readline()
                if line.startswith("READY "):
                    return process, int(line.split()[1])
                if not line:
                    break
            elif process.poll() is not None:
                break
        self.stop_server(process)
        raise RuntimeError(f"{name} did not start (see bench/results/servers.log)")

    @staticmethod
    def stop_server(process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def loadgen(self, url: str, pid: int, options: Sequence[str], timeout: float) -> dict[str, Any]:
        command = [*self._prefix(self.loadgen_cpu), sys.executable, str(BENCH / "loadgen.py"),
                   "--url", url, "--pid", str(pid), "--json", *options]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        if done.returncode != 0 or not done.stdout.strip():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"loadgen failed: {tail}")
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def measure(
        self, name: str, options: Sequence[str], *, tls: bool = False, server_extra: Sequence[str] = (),
        timeout: float = 300, http: bool = False,
    ) -> dict[str, Any]:
        extra = list(server_extra)
        if tls:
            _, cert, key = self.tls_files()
            extra += ["--tls", str(cert), str(key)]
        try:
            process, port = self.start_server(name, extra, http=http)
        except RuntimeError as e:
            return {"failed": str(e)}
        try:
            scheme = "http" if http else "wss" if tls else "ws"
            return self.loadgen(f"{scheme}://127.0.0.1:{port}/mcp", process.pid, options, timeout)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            return {"failed": str(e)}
        finally:
            self.stop_server(process)


# -- running the plan -----------------------------------------------------

Point = dict[str, Any]  # one loadgen result (or {"failed": why})
Results = dict[str, Any]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def summary_line(result: Point) -> str:
    if "failed" in result:
        return f"FAILED: {result['failed']}"
    if result["mode"] == "idle":
        kib = result.get("rss_kib_per_conn", math.nan)
        return f"{kib:.1f} KiB/conn, {result['answered_ping']}/{result['opened']} answered ping"
    rate = result.get("calls_per_s", result.get("handshakes_per_s", 0.0))
    return (f"{rate:,.0f}/s, p99 {result['p99_us'] / 1000:.2f} ms, "
            f"server core {result.get('server_cpu_util', 0):.0%}, "
            f"loadgen core {result['loadgen_cpu_util']:.0%}, errors {result['errors']}")


def alternate(
    rounds: int, servers: Sequence[str], title: str, measure: Callable[[str], Point]
) -> dict[str, list[Point]]:
    """Measure every server once per round, in turn; results by server, in round order."""
    points: dict[str, list[Point]] = {s: [] for s in servers}
    for r in range(rounds):
        for server in servers:
            result = measure(server)
            points[server].append(result)
            say(f"  [{title}] round {r + 1}/{rounds} {server:<12} {summary_line(result)}")
    return points


def run_plan(plan: Plan, runner: Runner) -> Results:
    results: Results = {"calls": [], "http_calls": [], "handshakes": {}, "handshakes_plain": {},
                        "tls_calls": {}, "idle": {}}
    timing = ["--warmup", str(plan.warmup), "--duration", str(plan.duration)]
    for config, servers in plan.calls:
        options = ["--clients", str(config.clients), "--inflight", str(config.inflight),
                   "--payload", str(config.payload), *timing]
        points = alternate(plan.rounds, servers, config.label,
                           lambda s, o=options: runner.measure(s, o))  # type: ignore[misc]
        results["calls"].append({"config": config.__dict__, "label": config.label, "points": points})
    for http_config, servers in plan.http_calls:
        options = ["--clients", str(http_config.clients), "--payload", str(http_config.payload),
                   "--tool", http_config.tool, *timing]
        points = alternate(plan.rounds, servers, http_config.label,
                           lambda s, c=http_config, o=options: runner.measure(  # type: ignore[misc]
                               s, o, http=True, server_extra=c.server_options(s)))
        results["http_calls"].append({"config": http_config.__dict__, "label": http_config.label,
                                      "points": points})
    if plan.handshakes:
        options = ["--mode", "handshakes", "--clients", str(plan.handshake_clients), *timing]
        results["handshakes_plain"] = alternate(plan.rounds, plan.handshakes, "ws handshakes",
                                                lambda s: runner.measure(s, options))
        results["handshakes"] = alternate(plan.rounds, plan.handshakes, "wss handshakes",
                                          lambda s: runner.measure(s, options, tls=True))
    if plan.tls_calls:
        options = ["--clients", "50", "--inflight", "1", "--payload", "100", *timing]
        results["tls_calls"] = alternate(plan.rounds, plan.tls_calls, "wss 50x1, 100 B",
                                         lambda s: runner.measure(s, options, tls=True))
    ping = ["--ping-interval", str(plan.idle_ping), "--ping-timeout", str(plan.idle_ping)]
    for server, connections in plan.idle:
        options = ["--mode", "idle", "--connections", str(connections), "--wait", str(plan.idle_wait)]
        result = runner.measure(server, options, server_extra=ping, timeout=600)
        results["idle"][server] = result
        say(f"  [idle {connections:,}] {server:<12} {summary_line(result)}")
    return results


# -- statistics -----------------------------------------------------------

def values(points: Iterable[Point], key: str) -> list[float]:
    return [p[key] for p in points if "failed" not in p and p.get(key) is not None]


def median(numbers: Sequence[float]) -> float:
    return statistics.median(numbers) if numbers else math.nan


def median_of(points: Iterable[Point], key: str, scale: float = 1.0) -> float:
    return median(values(points, key)) * scale


def paired(a: list[Point], b: list[Point], key: str) -> list[float]:
    """a/b within each round where both were measured."""
    return [x[key] / y[key] for x, y in zip(a, b, strict=False)
            if "failed" not in x and "failed" not in y and y.get(key)]


def fmt(number: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(number) else f"{number:,.{digits}f}"


def spread(numbers: Sequence[float], digits: int = 2) -> str:
    """`` (low..high)`` when there is more than one number."""
    if len(numbers) < 2:
        return ""
    return f" ({fmt(min(numbers), digits)}..{fmt(max(numbers), digits)})"


# -- targets --------------------------------------------------------------

@dataclass
class Target:
    what: str
    measured: str
    ratio: float
    ratios: Sequence[float]
    limit: float
    at_least: bool  # True: passes when ratio >= limit; False: when ratio <= limit

    def row(self) -> str:
        sign = "≥" if self.at_least else "≤"
        if math.isnan(self.ratio):
            verdict = "not measured"
        elif self.ratio >= self.limit if self.at_least else self.ratio <= self.limit:
            verdict = "met"
        else:
            by = abs(self.ratio - self.limit) / self.limit
            verdict = f"**missed by {by:.0%}**"
        return (f"| {self.what} | {self.measured} | {fmt(self.ratio, 2)}{spread(self.ratios)} "
                f"| {sign} {self.limit:g} | {verdict} |")


def versus(points: dict[str, list[Point]], label: str, other: str, key: str, what: str, limit: float,
           at_least: bool, scale: float = 1.0, digits: int = 0, unit: str = "") -> list[Target]:
    """mcp-twisted against ``other`` in one configuration (none if either is missing)."""
    if OURS not in points or other not in points:
        return []
    ours, theirs = median_of(points[OURS], key, scale), median_of(points[other], key, scale)
    ratios = paired(points[OURS], points[other], key)
    return [Target(f"{what} vs {other}, {label}", f"{fmt(ours, digits)}{unit} vs {fmt(theirs, digits)}{unit}",
                   median(ratios), ratios, limit, at_least)]


def sdk_targets(entries: Iterable[dict[str, Any]], min_sdk: float) -> list[Target]:
    """calls/s against the SDK's best server, per configuration."""
    found: list[Target] = []
    for entry in entries:
        points = entry["points"]
        sdk = {s: median_of(points[s], "calls_per_s") for s in points if s.partition("@")[0] in SDK}
        sdk = {s: rate for s, rate in sdk.items() if not math.isnan(rate)}
        if OURS in points and sdk:
            best = max(sdk, key=sdk.__getitem__)
            ours = median_of(points[OURS], "calls_per_s")
            ratios = paired(points[OURS], points[best], "calls_per_s")
            found.append(Target(f"calls/s vs the SDK's best, {entry['label']}",
                                f"{fmt(ours)} vs {fmt(sdk[best])} ({best})",
                                median(ratios), ratios, min_sdk, True))
    return found


def targets(results: Results) -> list[Target]:
    found: list[Target] = []
    for entry in results["calls"]:
        points, label = entry["points"], entry["label"]
        found += versus(points, label, TUNED, "calls_per_s", "calls/s", MIN_TUNED_RATIO, True)
        found += versus(points, label, TUNED, "p99_us", "p99", MAX_P99_RATIO, False, 1e-3, 2, " ms")
        found += versus(points, label, FLOOR, "calls_per_s", "calls/s", MIN_FLOOR_RATIO, True)
    found += sdk_targets(results["calls"], MIN_SDK_RATIO)
    for entry in results["http_calls"]:
        found += versus(entry["points"], entry["label"], FLOOR, "calls_per_s", "calls/s",
                        HTTP_MIN_FLOOR_RATIO, True)
    found += sdk_targets(results["http_calls"], HTTP_MIN_SDK_RATIO)
    idle = results["idle"].get(OURS)
    if idle and "failed" not in idle:
        kib = idle.get("rss_kib_per_conn", math.nan)
        floors = ", ".join(f"{name} {fmt(results['idle'][name].get('rss_kib_per_conn', math.nan), 1)}"
                           for name in (FLOOR, TUNED) if name in results["idle"])
        found.append(Target(f"KiB RSS per idle initialised connection ({idle['opened']:,} open)",
                            f"{kib:.1f} KiB ({floors or 'no floor measured'})", kib, [], MAX_IDLE_KIB, False))
        found.append(Target(
            f"share of {idle['requested']:,} idle connections answering ping after {idle['wait_s']:g} s",
            f"{idle['answered_ping']:,} answered, {idle['got_server_pings']:,} were pinged by the server, "
            f"{idle['dropped_during_wait']} dropped",
            idle["answered_ping"] / idle["requested"], [], 1.0, True))
    return found


# -- tables ---------------------------------------------------------------

def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def calls_table(entries: Iterable[dict[str, Any]], *, http: bool = False) -> list[str]:
    """One row per configuration and server; over HTTP also what an answer was."""
    rows = []
    for entry in entries:
        for server, points in entry["points"].items():
            rates = values(points, "calls_per_s")
            failed = sum(1 for p in points if "failed" in p)
            errors = f"{sum(values(points, 'errors')):.0f}" + (f" + {failed} failed runs" if failed else "")
            answer = []
            if http:
                events = median_of(points, "events_per_call")
                answer = [f"{fmt(median_of(points, 'response_bytes_per_call'))} B"
                          + (f", {fmt(events, 1)} events" if events else ", JSON")]
            rows.append([
                entry["label"], server, fmt(median(rates)) + spread(rates, 0),
                fmt(median_of(points, "p50_us", 1e-3), 2), fmt(median_of(points, "p99_us", 1e-3), 2),
                f"{fmt(median_of(points, 'server_cpu_us_per_call'), 1)}"
                f" ({fmt(median_of(points, 'server_sys_us_per_call'), 1)})",
                fmt(median_of(points, "server_cpu_util", 100)) + "%",
                fmt(max(values(points, "loadgen_cpu_util"), default=math.nan) * 100) + "%", *answer, errors,
            ])
    return table(["config", "server", "calls/s (range)", "p50 ms", "p99 ms", "server CPU µs/call (kernel)",
                  "server core", "loadgen core (max)", *(["answer body"] if http else []), "errors"], rows)


def tls_table(results: Results) -> list[str]:
    """New sessions per second over ws:// and wss:// (against the tuned floor), and calls over wss://."""
    plain, handshakes, calls = results["handshakes_plain"], results["handshakes"], results["tls_calls"]
    rows = []
    for server in dict.fromkeys([*plain, *handshakes, *calls]):
        cells = []
        for kind in (plain, handshakes):
            h = kind.get(server, [])
            rates = values(h, "handshakes_per_s")
            ratios = paired(h, kind.get(TUNED, []), "handshakes_per_s") if server != TUNED else []
            cells += [fmt(median(rates)) + spread(rates, 0), fmt(median(ratios), 2),
                      fmt(median_of(h, "server_cpu_us_per_handshake")), fmt(median_of(h, "p99_us", 1e-3), 1)]
        c = calls.get(server, [])
        call_rates = values(c, "calls_per_s")
        rows.append([server, *cells, fmt(median(call_rates)) + spread(call_rates, 0),
                     fmt(median_of(c, "p99_us", 1e-3), 2)])
    return table(["server", "ws sessions/s (range)", "vs floor_tuned", "server CPU µs/session", "p99 ms",
                  "wss sessions/s (range)", "vs floor_tuned", "server CPU µs/session", "p99 ms",
                  "wss calls/s 50x1 100 B (range)", "wss p99 ms"], rows)


def idle_table(results: Results) -> list[str]:
    rows = []
    for server, r in results["idle"].items():
        if "failed" in r:
            rows.append([server, "failed: " + r["failed"], *[""] * 10])
            continue
        rows.append([
            server, f"{r['opened']:,} of {r['requested']:,}", fmt(r.get("rss_kib_per_conn", math.nan), 1),
            fmt(r.get("pss_kib_per_conn", math.nan), 1),
            fmt(r.get("rss_kib_per_conn_after_wait", math.nan), 1),
            f"{r['got_server_pings']:,}", f"{r.get('pings_during_wait', 0):,}",
            fmt(r.get("server_cpu_us_per_ping", math.nan), 1),
            fmt(r.get("idle_core_share", math.nan) * 100, 1) + "%",
            f"{r['answered_ping']:,}", str(r["dropped_during_wait"]), f"{r['open_s']:.0f} s",
        ])
    return table(["server", "connections", "KiB/conn RSS", "KiB/conn PSS", "RSS after the wait",
                  "pinged by server", "pings in the wait", "server CPU µs/ping", "server core in the wait",
                  "answered ping", "dropped", "opening took"], rows)


def baseline_table(results: Results) -> list[str]:
    """The working tree against a baseline revision, ratios within rounds."""
    rows = []
    for entry in [*results["calls"], *results["http_calls"]]:
        points = entry["points"]
        for name in (n for n in points if n.startswith(OURS + "@")):
            rate = paired(points[OURS], points[name], "calls_per_s")
            cpu = paired(points[OURS], points[name], "server_cpu_us_per_call")
            p99 = paired(points[OURS], points[name], "p99_us")
            rows.append([entry["label"], name.partition("@")[2], fmt(median(rate), 3) + spread(rate, 3),
                         fmt(median(cpu), 3) + spread(cpu, 3), fmt(median(p99), 2) + spread(p99, 2)])
    if not rows:
        return []
    return ["", "## mcp-twisted against the baselines", "",
            "Ratios mcp_twisted (the working tree, or --tree) / baseline within each round (median, range). "
            "calls/s above 1 and CPU per call below 1 mean mcp_twisted is the faster.", "",
            *table(["config", "baseline", "calls/s ratio", "server CPU µs/call ratio", "p99 ratio"], rows)]


def generator_check(results: Results, server_cpu: int) -> list[str]:
    """Was the generator ever the bottleneck, and how much of the server's core went elsewhere?"""
    def ok(points: Iterable[Point]) -> list[Point]:
        return [p for p in points if "failed" not in p]

    entries = [*results["calls"], *results["http_calls"]]
    calls = ok(p for e in entries for ps in e["points"].values() for p in ps)
    calls += ok(p for ps in results["tls_calls"].values() for p in ps)
    lines = []
    if calls:
        generator = max(p["loadgen_cpu_util"] for p in calls)
        server = [p["server_cpu_util"] for p in calls if "server_cpu_util" in p]
        core = f"cpu{server_cpu}"
        other = [max(0.0, p["cores"][core]["busy"] - p.get("server_cpu_util", 0.0)) for p in calls]
        lines.append(
            f"Bottleneck check: the load generator used at most {generator:.0%} of its core in any call "
            f"point, while the servers used a median {median(server):.0%} of theirs "
            f"(lowest {min(server):.0%}). "
            f"Interrupts and other processes took a median {median(other):.0%} (at most {max(other):.0%}) "
            f"of the server's core in the measured windows."
        )
    handshakes = ok(p for ps in results["handshakes"].values() for p in ps)
    if handshakes:
        generator = max(p["loadgen_cpu_util"] for p in handshakes)
        server = max(p.get("server_cpu_util", 0.0) for p in handshakes)
        lines.append(
            f"TLS handshakes cost the generator about as much CPU as the server (OpenSSL 3.0 on both sides): "
            f"it used up to {generator:.0%} of its core and the servers up to {server:.0%} of theirs, so "
            f"handshakes/s is a lower bound of a server's capacity; its CPU µs/handshake is the "
            f"comparable figure."
        )
    return lines


def environment(runner: Runner, plan: Plan, elapsed: float) -> list[str]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "absent"

    model = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    tree = runner.tree_at_start
    if runner.tree_at_end != tree:
        tree += f"; **mcp_twisted/ changed during the run**, now {runner.tree_at_end}"
    packages = ", ".join(f"{p} {version(p)}" for p in
                         ("twisted", "autobahn", "mcp", "uvicorn", "websockets", "httptools", "picows",
                          "uvloop", "orjson"))
    nice = f", both at nice {runner.nice}" if runner.nice else ""
    now = datetime.datetime.now().astimezone()
    return [
        f"- Run: {now:%Y-%m-%d %H:%M %Z}, tree {tree}, took {elapsed / 60:.1f} min",
        f"- Machine: {os.cpu_count()} x {model}, Linux {platform.release().split('-')[0]}, "
        f"Python {platform.python_version()}",
        f"- Packages: {packages}",
        f"- Plan: {plan.rounds} round(s) of {plan.warmup:g} s warm-up + {plan.duration:g} s measured "
        f"per point; server on CPU {runner.server_cpu}, load generator on CPU {runner.loadgen_cpu}{nice}",
        *(f"- {note}" for note in plan.notes),
    ]


def report(plan: Plan, results: Results, runner: Runner, elapsed: float) -> str:
    lines = ["# mcp-twisted benchmark", "", *environment(runner, plan, elapsed), "", "## Targets", "",
             "Ratios are medians of the ratio within each round (range in parentheses).", "",
             *table(["target", "measured (medians)", "ratio", "target", "verdict"], []),
             *(t.row() for t in targets(results))]
    if results["calls"]:
        lines += ["", "## Calls: `tools/call` echo over ws://, closed loop", "",
                  "CxP = C connections with P calls in flight each. Medians over rounds, calls/s range in "
                  "parentheses. Server core: the share of its core the server used.", "",
                  *calls_table(results["calls"])]
    if results["http_calls"]:
        lines += ["", "## Streamable HTTP: `tools/call` over POST, closed loop", "",
                  "C keep-alive HTTP/1.1 connections, one call in flight each, 100 B echo text. JSON: tool "
                  "`echo`, answered with a JSON body (the SDK with `json_response=True`). SSE: tool "
                  "`echo_progress`, answered with an SSE stream of a priming event, one progress "
                  "notification and the answer (protocol 2025-11-25). The floor is a bare twisted.web "
                  "resource. Answer body: bytes and SSE events per answer, as the generator received them.",
                  "", *calls_table(results["http_calls"], http=True)]
    if results["handshakes"] or results["handshakes_plain"] or results["tls_calls"]:
        lines += ["", "## New sessions per second, and calls over TLS", "",
                  f"A new session is TCP connect (+ TLS for wss://) + WebSocket upgrade + `initialize` + "
                  f"`notifications/initialized` + close, {plan.handshake_clients} at a time.", "",
                  *tls_table(results)]
    if results["idle"]:
        lines += ["", "## Idle connections", "",
                  f"Initialised connections held open with WebSocket auto-ping every {plan.idle_ping} s "
                  f"(timeout {plan.idle_ping} s); after {plan.idle_wait:g} s every one is sent a JSON-RPC "
                  f"`ping`. KiB/conn is the server's memory growth divided by the connections.", "",
                  *idle_table(results)]
    lines += baseline_table(results)
    for paragraph in generator_check(results, runner.server_cpu):
        lines += ["", paragraph]
    lines.append("")
    return "\n".join(lines)


# -- command line ---------------------------------------------------------

def comma_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda text: [kind(item) for item in text.split(",") if item]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--servers", type=comma_list(str), help=f"some of {','.join(SERVERS)}")
    parser.add_argument("--clients", type=comma_list(int), help="connections, e.g. 50 or 10,50")
    parser.add_argument("--inflight", type=comma_list(int), help="calls in flight per connection, e.g. 1,8")
    parser.add_argument("--payload", type=comma_list(int), help="echo text bytes, e.g. 100,10240")
    parser.add_argument("--tls", action="store_true", help="with --servers: also measure wss")
    parser.add_argument("--http", action="store_true",
                        help="Streamable HTTP only (with --servers, --clients, --answer: those only)")
    parser.add_argument("--answer", type=comma_list(str), help="--http: json, sse or json,sse")
    parser.add_argument("--idle-connections", type=int,
                        help="idle connections (with --servers: also measure idle)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per point")
    parser.add_argument("--duration", type=float, help="seconds measured per point")
    parser.add_argument("--baseline", metavar="REV", action="append",
                        help="also measure mcp_twisted/ as of this git revision (e.g. HEAD~1), or from a "
                             "directory holding a copy of it, alternated; may be repeated")
    parser.add_argument("--tree", metavar="REV",
                        help="measure mcp_twisted/ as of this revision or directory, not the working tree")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--loadgen-cpu", type=int, default=1)
    parser.add_argument("--nice", type=int, default=-20,
                        help="niceness of server and generator, keeps other work off their cores (0: as is)")
    args = parser.parse_args()
    unknown = set(args.servers or ()) - set(SERVERS)
    if unknown:
        parser.error(f"unknown server(s) {', '.join(sorted(unknown))}; choose from {', '.join(SERVERS)}")
    if set(args.answer or ()) - set(ANSWERS):
        parser.error(f"--answer: choose from {', '.join(ANSWERS)}")
    if args.http and (args.inflight or args.payload or args.idle_connections or args.tls):
        parser.error("--http measures 1 call in flight, 100 B payloads; no --inflight, --payload, "
                     "--idle-connections or --tls")
    return args


def main() -> None:
    args = parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.http:
        plan = http_plan(args)
    elif args.servers or args.clients or args.inflight or args.payload:
        plan = custom_plan(args)
    elif args.quick:
        plan = quick_plan(args)
    else:
        plan = full_plan(args)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {args.loadgen_cpu})  # keep this process off the server's core
    runner = Runner(args)
    if args.tree:
        runner.use_tree(args.tree)
    if args.baseline:
        plan = with_baseline(plan, [runner.add_baseline(revision) for revision in args.baseline])
    started = time.monotonic()
    results = run_plan(plan, runner)
    if OURS not in runner.trees:
        runner.tree_at_end = tree_state()
    text = report(plan, results, runner, time.monotonic() - started)
    (RESULTS / "latest.md").write_text(text)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1))
    print(text)
    try:
        import charts  # matplotlib: bench/requirements.txt
    except ImportError as e:
        say(f"no charts ({e}): pip install -r bench/requirements.txt")
    else:
        for path in charts.write_charts(results, RESULTS / "charts"):
            say(f"chart: {path}")


if __name__ == "__main__":
    main()
