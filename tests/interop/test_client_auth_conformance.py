"""The official MCP conformance suite's ``auth/*`` client scenarios, run
against ``tests/conformance/client.py`` with its ``OAuthClient``.

For each scenario, ``@modelcontextprotocol/conformance client`` (the 0.2
alpha) starts a mock MCP server behind a mock authorization server, runs the
client program with the server's URL, and writes ``checks.json``. Every
scenario of 2025-11-25 and of 2026-07-28 runs at that revision, and the two
client-credentials extension scenarios without one. The lists are checked
against the suite's own ``list`` so that none is left out.

Every check must be SUCCESS. INFO is accepted only where the suite records
what happened without judging it: the traffic logs, and each authorization
attempt of ``scope-retry-limit`` (whose verdict is the ``scope-retry-limit``
check). Scenarios where the client must refuse to go on (a wrong ``iss``, a
metadata document for another resource or issuer, a scope that is never
enough) end with the client failing, which those scenarios allow.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.runner import SCENARIO_TIMEOUT, run_client_scenario
from tests.interop.test_conformance import cli_path, conformance  # noqa: F401  # the fixture

HERE = Path(__file__).parent
RELEASE = "0.2"
BOTH_REVISIONS = [
    "auth/metadata-default", "auth/metadata-var1", "auth/metadata-var2", "auth/metadata-var3",
    "auth/basic-cimd", "auth/scope-from-www-authenticate", "auth/scope-from-scopes-supported",
    "auth/scope-omitted-when-undefined", "auth/scope-step-up", "auth/scope-retry-limit",
    "auth/token-endpoint-auth-basic", "auth/token-endpoint-auth-post", "auth/token-endpoint-auth-none",
    "auth/pre-registration",
]
ONLY_2026 = [
    "auth/resource-mismatch", "auth/offline-access-scope", "auth/offline-access-not-supported",
    "auth/authorization-server-migration", "auth/iss-supported", "auth/iss-not-advertised",
    "auth/iss-supported-missing", "auth/iss-wrong-issuer", "auth/iss-unexpected", "auth/iss-normalized",
    "auth/metadata-issuer-mismatch",
]
SCENARIOS = {"2025-11-25": BOTH_REVISIONS, "2026-07-28": BOTH_REVISIONS + ONLY_2026}
# Extension scenarios (no revision): the client credentials grant, with a
# secret and with a signed assertion (private_key_jwt).
EXTENSIONS = ["auth/client-credentials-basic", "auth/client-credentials-jwt"]
RUNS = [(revision, scenario) for revision, names in SCENARIOS.items() for scenario in names]
RUNS += [(None, scenario) for scenario in EXTENSIONS]
# Checks that record what happened and judge nothing.
LOGGED = {"incoming-request", "outgoing-response", "incoming-auth-request", "outgoing-auth-response",
          "scope-retry-auth-attempt"}


def verdict(check: dict[str, Any]) -> bool:
    return check["status"] == "SUCCESS" or (check["status"] == "INFO" and check["id"] in LOGGED)


@pytest.mark.parametrize("revision", sorted(SCENARIOS))
def test_every_auth_scenario_of_the_revision_is_run(conformance: str, revision: str) -> None:  # noqa: F811  # the fixture
    command = [conformance, str(cli_path(RELEASE)), "list", "--client", "--spec-version", revision]
    listed = subprocess.run(command, cwd=HERE, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT,
                            check=True)
    names = {line.split()[1] for line in listed.stdout.splitlines() if line.strip().startswith("- auth/")}
    assert names == set(SCENARIOS[revision])


@pytest.mark.parametrize(("revision", "scenario"), RUNS, ids=[f"{v or 'extension'}-{s}" for v, s in RUNS])
def test_auth_scenario(conformance: str, tmp_path: Path, revision: str | None,  # noqa: F811  # the fixture
                       scenario: str) -> None:
    run = run_client_scenario(conformance, cli_path(RELEASE), scenario, revision, tmp_path / "results")
    failures = [f"{check['id']} {check.get('name')} {check['status']}: {check.get('description', '')}"
                for check in run.checks if not verdict(check)]
    assert not failures, "\n".join(failures) + "\n" + run.transcript
    assert run.returncode == 0, run.transcript
