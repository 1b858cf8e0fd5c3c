"""The official MCP conformance suite against ``tests/conformance/app.py``.

``@modelcontextprotocol/conformance`` is a client that runs scenarios against
a server's Streamable HTTP endpoint and writes one ``checks.json`` per
scenario. Two releases are installed side by side under npm aliases
(``tests/interop/package.json``): 0.1.16, the latest release, and the 0.2.0
alpha line. Three runs: 0.1.16, and the alpha pinned with ``--spec-version``
twice, to 2025-11-25 (the handshake era) and to 2026-07-28 (the stateless
revision: no ``initialize``, each request carries ``params._meta``).

The app is served by ``twistd mcpws`` on a port the kernel picks; the port is
read from twistd's log. A scenario passes when each of its checks is
SUCCESS; INFO is accepted only for the checks that merely log the traffic.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_tap import Twistd

HERE = Path(__file__).parent

# Run id -> the release (the npm alias suffix) and the arguments of ``conformance server``.
SUITES = {
    "0.1.16": ("0.1.16", ["--suite", "all"]),
    "0.2": ("0.2", ["--suite", "all", "--spec-version", "2025-11-25"]),
    "0.2@2026-07-28": ("0.2", ["--suite", "all", "--spec-version", "2026-07-28"]),
}
RELEASES = sorted({release for release, _ in SUITES.values()})
APP_ARGS = ["--app", "tests.conformance.app:server", "--endpoint", "tcp:0:interface=127.0.0.1",
            "--always-stream"]
# Checks with which the suite records what went over the wire; INFO there is no verdict.
TRAFFIC_LOGS = frozenset({"outgoing-request", "incoming-response", "incoming-sse-event", "stream-closed"})
SUITE_TIMEOUT = 900.0
# twistd logs "<factory> starting on <port>" for each listening port.
# What the suite names each result directory: server-<scenario>-<ISO time, ':' and '.' as '-'>.
RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


def cli_path(release: str) -> Path:
    return HERE / "node_modules" / f"conformance-{release}" / "dist" / "index.js"


@pytest.fixture(scope="module")
def conformance(node: str) -> str:
    """Node, with both releases of the suite installed (``npm ci`` if an older
    ``node_modules`` lacks them)."""
    if not all(cli_path(release).is_file() for release in RELEASES):
        npm = str(Path(node).with_name("npm"))
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True,
                       stdout=subprocess.DEVNULL)
    return node


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    """The conformance app served by ``twistd mcpws``; its MCP endpoint's URL."""
    server = Twistd(APP_ARGS, tmp_path)
    try:
        yield f"http://127.0.0.1:{server.listening_port()}/mcp"
    finally:
        server.stop()


def read_results(output: Path) -> dict[str, list[dict[str, Any]]]:
    """Scenario name -> its checks, from the suite's output directory."""
    results: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(output.glob("*/checks.json")):
        match = RESULT_DIR.match(path.parent.name)
        assert match, f"unexpected result directory {path.parent.name}"
        results[match["scenario"]] = json.loads(path.read_text())
    return results


def verdict(check: dict[str, Any]) -> bool:
    return check["status"] == "SUCCESS" or (check["status"] == "INFO" and check["id"] in TRAFFIC_LOGS)


@pytest.mark.parametrize("run_id", SUITES)
def test_conformance_suite(conformance: str, app_url: str, tmp_path: Path, run_id: str) -> None:
    release, arguments = SUITES[run_id]
    output = tmp_path / "results"
    command = [conformance, str(cli_path(release)), "server", "--url", app_url, *arguments]
    run = subprocess.run([*command, "-o", str(output)], cwd=HERE, capture_output=True, text=True,
                         timeout=SUITE_TIMEOUT)
    transcript = f"conformance {run_id} exited {run.returncode}:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    announced = re.search(r"\((\d+) scenarios\)", run.stdout)
    assert announced, transcript
    results = read_results(output)
    # A scenario that crashed writes no checks.json: count them.
    assert len(results) == int(announced.group(1)), f"{sorted(results)}\n{transcript}"
    failures = [f"{scenario}: {check['id']} {check['status']}: {check.get('errorMessage', '')}"
                for scenario, checks in results.items() for check in checks if not verdict(check)]
    assert not failures, "\n".join(failures)
    assert all(results.values()), [scenario for scenario, checks in results.items() if not checks]
    assert run.returncode == 0, transcript
