"""Running one of the conformance suite's client scenarios against
``tests/conformance/client.py``, for the pytest modules that judge the checks."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLIENT = Path(__file__).parent / "client.py"
INTEROP = Path(__file__).parent.parent / "interop"  # where the suite is installed (node_modules)
SCENARIO_TIMEOUT = 120.0


@dataclass
class ScenarioRun:
    """The checks the suite wrote, its exit status, and what it printed."""

    checks: list[dict[str, Any]]
    returncode: int
    transcript: str


def run_client_scenario(node: str, cli: Path, scenario: str, revision: str | None,
                        output: Path) -> ScenarioRun:
    """``conformance client`` for ``scenario`` (at ``revision``, if one), its
    results written under ``output``; fails if it wrote no checks."""
    command = [node, str(cli), "client", "--command", shlex.join([sys.executable, str(CLIENT)]),
               "--scenario", scenario, "-o", str(output)]
    if revision is not None:
        command += ["--spec-version", revision]
    run = subprocess.run(command, cwd=INTEROP, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT)
    transcript = f"conformance exited {run.returncode}:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    results = sorted(output.glob("**/checks.json"))
    assert len(results) == 1, transcript
    checks = json.loads(results[0].read_text())
    assert checks, transcript
    return ScenarioRun(checks, run.returncode, transcript)
