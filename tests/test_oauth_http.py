"""Streamable HTTP behind OAuth, end to end: a real OpenID provider
(oidc-provider) issues the tokens, the server fetches its keys over a real
socket the first time a token arrives (the request waits for that), and
serves the protected-resource metadata beside ``/mcp``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from mcp_twisted.http import HTTPSettings, MCPHTTPResource, MCPSite
from mcp_twisted.oauth import OAuthResourceServer, OAuthSettings, ProtectedResourceMetadataResource
from mcp_twisted.websocket import MCPServerFactory
from tests.http_support import agent_request, call, init_message
from tests.oauth.provider import OTHER_RESOURCE, RESOURCE
from tests.support import listen, make_app

pytest_plugins = ("tests.oauth.servers",)  # the provider
METADATA_PATH = "/.well-known/oauth-protected-resource/mcp"


@pytest_twisted.async_yield_fixture
async def protected(provider):
    """``twistd mcpws``'s HTTP site for an app whose tokens the provider issues;
    yields (post, get)."""
    oauth = OAuthResourceServer(OAuthSettings(resource=RESOURCE, issuer=provider.issuer,
                                              scopes_supported=("files:read",)))
    app, _ = make_app()
    factory = MCPServerFactory(app, auth=oauth, ping_interval=0)
    site = MCPSite(MCPHTTPResource(factory.host, HTTPSettings()), None,
                   max_body_size=factory.host.limits.max_message_size,
                   extra={path: ProtectedResourceMetadataResource(oauth.metadata)
                          for path in oauth.metadata.paths})
    port = await listen(site)
    base = f"http://127.0.0.1:{port.getHost().port}"

    async def post(body: Any, **headers: str) -> tuple[Any, bytes]:
        return await agent_request(base + "/mcp", b"POST", body, **headers)

    async def get(path: str) -> tuple[Any, bytes]:
        return await agent_request(base + path, b"GET")

    yield post, get
    await port.stopListening()
    await oauth.close()


def header(response: Any, name: str) -> str:
    (value,) = response.headers.getRawHeaders(name)
    return value  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_a_provider_token_opens_a_session_bound_to_its_subject(provider, protected):
    post, get = protected
    response, body = await get(METADATA_PATH)
    assert response.code == 200 and json.loads(body)["authorization_servers"] == [provider.issuer]
    # No token: the challenge names the metadata, where the client finds the provider.
    response, _ = await post(init_message())
    assert response.code == 401
    assert f'resource_metadata="http://127.0.0.1:8000{METADATA_PATH}"' in header(response, "WWW-Authenticate")
    # The first token makes the server fetch the provider's keys; the request waits for them.
    token = provider.token(RESOURCE)
    response, body = await post(init_message(), Authorization=f"Bearer {token}")
    assert response.code == 200, body
    session = header(response, "Mcp-Session-Id")
    response, body = await post(call(1, "echo", {"text": "hi"}), Authorization=f"Bearer {token}",
                                Mcp_Session_Id=session)
    assert response.code == 200 and json.loads(body)["result"]["content"][0]["text"] == "hi"
    # Another client's token does not reach this session.
    other = provider.token_by_code(RESOURCE, user="bob")
    response, _ = await post(call(2, "echo", {"text": "hi"}), Authorization=f"Bearer {other}",
                             Mcp_Session_Id=session)
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_tokens_for_another_resource_or_forged_are_refused_with_invalid_token(provider, protected):
    post, _ = protected
    for token in (provider.token(OTHER_RESOURCE), provider.token(RESOURCE)[:-4] + "AAAA"):
        response, _ = await post(init_message(), Authorization=f"Bearer {token}")
        assert response.code == 401 and 'error="invalid_token"' in header(response, "WWW-Authenticate")
