"""The official Python SDK 2.x (``mcp==2.3.0``) with its OAuth support, against a protected server.

Usage: python oauth_sdk_client.py URL MODE
Runs in the environment ``modern_env.py`` builds. ``mcp.client.Client`` over
Streamable HTTP with an ``httpx2`` client whose auth is the SDK's
``OAuthClientProvider``: on the server's 401 it discovers the authorization
server from the protected-resource metadata, registers dynamically, and runs
the authorization code grant with PKCE. The user's part is the caller's: the
authorization URL is printed as one JSON line ``{"authorize": URL}``, and the
URL the authorization server redirected to is read back from stdin. Then it
calls ``whoami`` and prints ONE JSON object ``{"protocolVersion", "whoami",
"scopes"}``; exit 1 with ``{"fatal": ...}`` when anything failed or the 30 s
global timeout hit.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import mcp_types as types
from mcp.client import Client
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

GLOBAL_TIMEOUT = 30.0
REDIRECT_URI = "http://127.0.0.1/callback"


class Memory(TokenStorage):
    """Tokens and the registration, for this run only."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class Browser:
    """Hands the authorization URL to the caller and waits for the redirect."""

    def __init__(self) -> None:
        self.redirected = ""

    async def open(self, url: str) -> None:
        print(json.dumps({"authorize": url}), flush=True)
        self.redirected = (await asyncio.to_thread(sys.stdin.readline)).strip()

    async def callback(self) -> AuthorizationCodeResult:
        answer = {name: values[0] for name, values in parse_qs(urlsplit(self.redirected).query).items()}
        return AuthorizationCodeResult(code=answer.get("code", ""), state=answer.get("state"),
                                       iss=answer.get("iss"))


async def main(url: str, mode: str) -> Any:
    browser, storage = Browser(), Memory()
    auth = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(client_name="mcp sdk interop", redirect_uris=[REDIRECT_URI]),
        storage=storage, redirect_handler=browser.open, callback_handler=browser.callback,
    )
    async with (httpx2.AsyncClient(auth=auth, timeout=10.0) as http,
                Client(streamable_http_client(url, http_client=http), mode=mode) as client):
        result = await client.call_tool("whoami", {})
        text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
        return {"protocolVersion": client.protocol_version, "whoami": text,
                "scopes": storage.tokens.scope if storage.tokens else None}


def describe(exc: BaseException) -> str:
    """What went wrong, from the first exception inside any groups."""
    for _ in range(10):  # groups within groups, a few deep at most
        inner = getattr(exc, "exceptions", None)
        if not inner:
            break
        exc = inner[0]
    return f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    try:
        output, code = asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2]), GLOBAL_TIMEOUT)), 0
    except BaseException as exc:  # whatever ended the run (an exception group too) is the report
        output, code = {"fatal": describe(exc)}, 1
    print(json.dumps(output), flush=True)
    sys.exit(code)
