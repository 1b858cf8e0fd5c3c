"""The official MCP conformance suite's client scenarios, run against
``tests/conformance/client.py`` (a program built on ``MCPClientService``).

For each scenario, ``@modelcontextprotocol/conformance client`` starts a mock
server, runs the client program with its URL (the scenario's name in
``MCP_CONFORMANCE_SCENARIO``) and writes ``checks.json``. Both releases
installed in ``tests/interop`` run: 0.1.16 (no revision named: the client
detects the era) and the 0.2 alpha pinned to 2025-11-25 and to 2026-07-28.
The auth scenarios are run by ``test_client_auth_conformance.py``.

Every check must be SUCCESS; INFO only where the suite merely logs traffic.
One exception, named below: on 2026-07-28 the headers scenario reports its
``initialize`` checks SKIPPED, since that revision has no ``initialize``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conformance.runner import run_client_scenario
from tests.interop.test_conformance import TRAFFIC_LOGS, cli_path, conformance  # noqa: F401  # the fixture

HANDSHAKE_SCENARIOS = ["initialize", "tools_call", "elicitation-sep1034-client-defaults", "sse-retry"]
RUNS = [
    *[("0.1.16", None, scenario) for scenario in HANDSHAKE_SCENARIOS],
    *[("0.2", "2025-11-25", scenario)
      for scenario in [*HANDSHAKE_SCENARIOS, "json-schema-2020-12-preservation"]],
    *[("0.2", "2026-07-28", scenario) for scenario in [
        "tools_call", "request-metadata", "sep-2322-client-request-state", "http-standard-headers",
        "http-custom-headers", "http-invalid-tool-headers", "json-schema-ref-no-deref",
        "json-schema-2020-12-preservation"]],
]
# Checks of handshake-era messages that a 2026-07-28 client never sends.
NOT_IN_2026 = {("http-standard-headers", "ClientMcpMethodHeader_initialize"),
               ("http-standard-headers", "ClientMcpMethodHeader_notifications_initialized")}
# Checks with which the mock servers record what they received and sent.
TRAFFIC = TRAFFIC_LOGS | {"incoming-request", "outgoing-response", "outgoing-sse-event",
                          "outgoing-stream-close", "server-info"}


def verdict(scenario: str, check: dict[str, Any]) -> bool:
    if check["status"] == "SUCCESS":
        return True
    if check["status"] == "INFO":
        return check["id"] in TRAFFIC
    return check["status"] == "SKIPPED" and (scenario, check.get("name")) in NOT_IN_2026


@pytest.mark.parametrize(("release", "revision", "scenario"), RUNS,
                         ids=[f"{r}@{v or 'auto'}-{s}" for r, v, s in RUNS])
def test_client_scenario(conformance: str, tmp_path: Path, release: str,  # noqa: F811  # the imported fixture
                         revision: str | None, scenario: str) -> None:
    run = run_client_scenario(conformance, cli_path(release), scenario, revision, tmp_path / "results")
    failures = [f"{check['id']} {check.get('name')} {check['status']}: {check.get('errorMessage', '')}"
                for check in run.checks if not verdict(scenario, check)]
    assert not failures, "\n".join(failures) + "\n" + run.transcript
    assert run.returncode == 0, run.transcript
