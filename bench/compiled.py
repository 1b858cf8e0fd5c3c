"""What compiling the MCP layer would give: the WebSocket call path of the
checkout against a copy of it whose protocol core is compiled with mypyc,
and against the tuned floor, in one run.

    python bench/compiled.py                    # 100 B, 1 and 8 frames per read
    python bench/compiled.py --callgrind        # instructions per call as well

The copy (in a temporary directory) has the modules of ``--modules``
compiled to C extensions by mypyc (from mypy, in the test extra; it needs a
C compiler and the Python headers); everything else is the checkout's
Python. Each configuration is timed in separate processes of
``inprocess_ws.py``, checkout, compiled copy and floor in turn, ``--turns``
times; the figure is the median of the processes' medians. It measures
what a compiled core would save, not what mcp-twisted ships: the package
is pure Python (see docs/performance.md, "A compiled core, measured").
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CHECKOUT = BENCH.parent
CORE = ("jsonrpc", "session", "server/_primitives", "server/_server", "server/_signature")


def compile_copy(directory: Path, modules: list[str]) -> None:
    """``mcp_twisted/`` of the checkout in ``directory``, ``modules`` compiled."""
    shutil.copytree(CHECKOUT / "mcp_twisted", directory / "mcp_twisted",
                    ignore=shutil.ignore_patterns("__pycache__"))
    sources = [f"mcp_twisted/{module}.py" for module in modules]
    # The checkout's mypy settings (the zope plugin); built in the copy, which
    # has no pyproject.toml of its own for setuptools to read.
    config = str(CHECKOUT / "pyproject.toml")
    subprocess.run([sys.executable, "-m", "mypyc", "--config-file", config, *sources],
                   cwd=directory, check=True, stdout=subprocess.DEVNULL)


def inprocess(server: str, tree: Path | None, batch: int, args: argparse.Namespace, callgrind: bool) -> float:
    """One process of ``inprocess_ws.py``: its median µs per call, or instructions per call."""
    command = [sys.executable, str(BENCH / "inprocess_ws.py"), "--servers", server, "--batch", str(batch),
               "--rounds", str(args.rounds), "--calls", str(args.calls)]
    if tree is not None:
        command += ["--tree", str(tree)]
    if callgrind:
        command.append("--callgrind")
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    found = re.search(r"instructions/call: ([\d,]+)" if callgrind else r"median ([\d.]+)", output)
    if found is None:
        raise SystemExit(f"no figure in the output of {' '.join(command)}:\n{output}")
    return float(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", default=",".join(CORE), help="modules of mcp_twisted/ to compile")
    parser.add_argument("--batch", default="1,8", help="frames per read, comma-separated")
    parser.add_argument("--turns", type=int, default=6, help="processes of each kind, taken in turn")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per process")
    parser.add_argument("--calls", type=int, default=2000, help="reads per round")
    parser.add_argument("--callgrind", action="store_true", help="count instructions too (valgrind)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcp-compiled-") as directory:
        compiled = Path(directory)
        compile_copy(compiled, args.modules.split(","))
        kinds = {"python": ("mcp_twisted", None), "compiled": ("mcp_twisted", compiled),
                 "floor": ("floor_tuned", None)}
        print(f"compiled with mypyc: {args.modules}")
        for batch in map(int, args.batch.split(",")):
            times: dict[str, list[float]] = {kind: [] for kind in kinds}
            for _ in range(args.turns):
                for kind, (server, tree) in kinds.items():
                    times[kind].append(inprocess(server, tree, batch, args, callgrind=False))
            median = {kind: statistics.median(values) for kind, values in times.items()}
            print(f"{batch} per read, CPU µs a call: python {median['python']:.2f}, "
                  f"compiled {median['compiled']:.2f}, tuned floor {median['floor']:.2f}; "
                  f"floor/python {median['floor'] / median['python']:.2f}, "
                  f"floor/compiled {median['floor'] / median['compiled']:.2f}", flush=True)
            if args.callgrind:
                counts = {kind: inprocess(server, tree, batch, args, callgrind=True)
                          for kind, (server, tree) in kinds.items()}
                print(f"{batch} per read, instructions a call: "
                      + ", ".join(f"{kind} {count:,.0f}" for kind, count in counts.items()), flush=True)


if __name__ == "__main__":
    main()
