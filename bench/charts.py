"""PNG charts of a ``bench/run.py`` run (matplotlib, a bench-only dependency).

    python bench/charts.py             # bench/results/latest.json -> bench/results/charts/
    python bench/charts.py --out docs/images --idle bench/results/idle-*.json

``run.py`` writes them after every run (into ``bench/results/charts/``) when
matplotlib is installed. Three charts:

- ``calls.png``: calls/s by configuration for each server (log scale: the SDK
  and the floors are an order of magnitude apart);
- ``latency.png``: p50 and p99 latency by configuration for each server;
- ``memory.png``: server memory against idle sessions: each server's growth
  in the run's idle test and the ``bench/idle.py`` runs given with ``--idle``
  (one process, or several workers summed).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"
COLOURS = {"floor": "#9e9e9e", "floor_tuned": "#616161", "mcp_twisted": "#1565c0", "sdk_fastmcp": "#ef6c00",
           "sdk_lowlevel": "#f9a825", "sdk_fastmcp_fast": "#c62828", "sdk_lowlevel_fast": "#6a1b9a"}


def medians(points: list[dict[str, Any]], key: str) -> float | None:
    found = [p[key] for p in points if "failed" not in p and p.get(key) is not None]
    return statistics.median(found) if found else None


def servers_of(entries: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(server for entry in entries for server in entry["points"]))


def bars(ax: Any, entries: list[dict[str, Any]], key: str, scale: float, hatch: str = "",
         label_suffix: str = "") -> None:
    """One group of bars per configuration, one bar per server."""
    servers = servers_of(entries)
    width = 0.8 / len(servers)
    for i, server in enumerate(servers):
        xs, ys = [], []
        for n, entry in enumerate(entries):
            value = medians(entry["points"].get(server, []), key)
            if value is not None:
                xs.append(n - 0.4 + width * (i + 0.5))
                ys.append(value * scale)
        ax.bar(xs, ys, width, label=server + label_suffix, color=COLOURS.get(server.partition("@")[0]),
               hatch=hatch, edgecolor="white" if not hatch else "black", linewidth=0.3)
    ax.set_xticks(range(len(entries)), [entry["label"] for entry in entries], rotation=30, ha="right")


def calls_chart(results: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 4.8))
    bars(ax, results["calls"], "calls_per_s", 1.0)
    ax.set_yscale("log")
    ax.set_ylim(bottom=100)
    ax.set_ylabel("calls/s (median of rounds, log scale)")
    ax.set_title("tools/call echo over ws://: C clients x P in flight, payload")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_chart(results: dict[str, Any], path: Path) -> None:
    fig, (p50, p99) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, key, name in ((p50, "p50_us", "p50"), (p99, "p99_us", "p99")):
        bars(ax, results["calls"], key, 1e-3)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.01)
        ax.set_title(f"{name} latency (ms, log scale)")
        ax.grid(axis="y", which="both", alpha=0.3)
    p50.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def memory_chart(results: dict[str, Any], scale_runs: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for server, r in results.get("idle", {}).items():
        if "failed" in r or not r.get("opened"):
            continue
        growth = (r["rss_after_kib"] - r["rss_before_kib"]) / 1024
        ax.plot([0, r["opened"]], [0, growth], marker="o", label=f"{server} (run.py idle test)",
                color=COLOURS.get(server.partition("@")[0]))
    for run in scale_runs:
        mib = run["rss_kib_per_session"] * run["opened"] / 1024
        ax.plot([0, run["opened"]], [0, mib], marker="s", linestyle="--", color=COLOURS["mcp_twisted"],
                label=f"mcp_twisted, twistd mcpws, {run['workers']} worker(s) (bench/idle.py)")
    ax.set_xlabel("idle initialised sessions")
    ax.set_ylabel("server RSS growth (MiB, all workers)")
    ax.set_title("Server memory against idle sessions")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_charts(
    results: dict[str, Any], directory: Path, scale_runs: Sequence[dict[str, Any]] = ()
) -> list[Path]:
    """The charts of a run that has the data for them; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if results.get("calls"):
        calls_chart(results, directory / "calls.png")
        latency_chart(results, directory / "latency.png")
        written += [directory / "calls.png", directory / "latency.png"]
    if results.get("idle") or scale_runs:
        memory_chart(results, list(scale_runs), directory / "memory.png")
        written.append(directory / "memory.png")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", default=str(RESULTS / "latest.json"))
    parser.add_argument("--out", default=str(RESULTS / "charts"), help="directory for the PNG files")
    parser.add_argument("--idle", nargs="*", default=[], help="bench/idle.py --json outputs")
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    scale_runs = [json.loads(Path(path).read_text()) for path in args.idle]
    for path in write_charts(results, Path(args.out), scale_runs):
        print(path)


if __name__ == "__main__":
    main()
