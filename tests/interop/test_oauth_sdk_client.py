"""Acceptance of the resource server by a client nobody here wrote: the
official Python SDK 2.x (``mcp==2.3.0``) with its OAuth support.

``oauth_sdk_client.py`` runs in the SDK's own environment (``modern_env.py``)
against an mcp-twisted server protected by ``OAuthResourceServer``
(``tests/oauth/servers.py``), whose tokens the real OpenID provider
(oidc-provider) issues. The SDK finds the provider from the server's 401 and
protected-resource metadata, registers itself dynamically, and runs the
authorization code grant with PKCE; the user's login and consent are played
by ``OpenIDProvider.log_in`` when the SDK hands out the authorization URL.
Then the SDK calls ``whoami``, which answers with the token's subject.
"""

from __future__ import annotations

import json
import select
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.interop.modern_env import ensure_env
from tests.oauth.provider import OpenIDProvider

pytest_plugins = ("tests.oauth.servers",)

HERE = Path(__file__).parent
RUN_TIMEOUT = 60.0
MAX_LINES = 10  # the authorization URL, then the report: a few lines at most


@pytest.fixture(scope="session")
def modern_python() -> Path:
    return ensure_env()


def drive(python: Path, url: str, mode: str, idp: OpenIDProvider,
          user: str) -> tuple[list[str], dict[str, Any]]:
    """Run the SDK client (blocking: called in a thread); be its user's
    browser for each authorization URL it prints. The URLs, and its report."""
    child = subprocess.Popen([str(python), str(HERE / "oauth_sdk_client.py"), url, mode], cwd=HERE,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    asked: list[str] = []
    try:
        for _ in range(MAX_LINES):
            readable, _, _ = select.select([child.stdout], [], [], RUN_TIMEOUT)
            line = child.stdout.readline() if readable else ""
            if not line:
                break
            said = json.loads(line)
            if "authorize" not in said:
                return asked, said
            asked.append(said["authorize"])
            child.stdin.write(idp.log_in(said["authorize"], user) + "\n")
            child.stdin.flush()
        raise AssertionError(f"no report from the SDK client: {child.stderr.read() if child.stderr else ''}")
    finally:
        child.kill()
        child.wait(timeout=10)
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
@pytest_twisted.ensureDeferred
async def test_the_python_sdk_logs_in_and_calls_a_tool(modern_python, idp, protected, resource_url, mode):
    asked, report = await deferToThread(drive, modern_python, resource_url, mode, idp, "ada")
    assert "fatal" not in report, report
    assert report["whoami"] == "ada"  # the subject of a token the provider issued for the user
    assert report["protocolVersion"] == ("2025-11-25" if mode == "legacy" else mode)
    (url,) = asked  # one login: the SDK found the provider through the server's metadata
    assert url.startswith(f"{idp.issuer}/auth?") and "code_challenge_method=S256" in url
    assert "resource=" in url and "files%3Aread" in url
