"""The client program the official conformance suite drives.

``python tests/conformance/client.py URL``: the suite starts a scenario's
server, runs this with its URL and reads the scenario's name from
``MCP_CONFORMANCE_SCENARIO`` (and, from the 0.2 releases, the revision it
tests from ``MCP_CONFORMANCE_PROTOCOL_VERSION``). Each scenario expects a
few calls; this program makes them with ``MCPClientService`` the way an
application would, and exits 0, or 1 with the error on stderr.

The ``auth/*`` scenarios put the server behind a mock authorization server:
the client gets its tokens with ``OAuthClient``, whose user is played by
``follow_to_redirect`` (the mock server redirects back at once, as a
browser whose user consents would). Pre-registered credentials come in
``MCP_CONFORMANCE_CONTEXT`` (``client_id``, and ``client_secret`` or
``private_key_pem``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import task
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from mcp_twisted.client import MCPClient, MCPClientService, OAuthClient
from mcp_twisted.eras import MODERN_VERSIONS

Flow = Callable[[MCPClient], Awaitable[None]]


def era_for(version: str | None) -> str:
    """Pin the revision the suite names; without one, detect it."""
    if version is None:
        return "auto"
    return version if version in MODERN_VERSIONS else "legacy"


SAMPLES = {"string": "conformance", "integer": 1, "number": 1.5, "boolean": True}


def sample_values(schema: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Values of the right type for the properties ``names`` of ``schema``."""
    properties = schema.get("properties") or {}
    return {name: SAMPLES.get(properties.get(name, {}).get("type"), "conformance") for name in names}


def sample_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """Values for a tool's required arguments."""
    return sample_values(schema, schema.get("required") or [])


async def list_tools(client: MCPClient) -> list[dict[str, Any]]:
    return [tool async for tool in client.iter_tools()]


async def call_first_tool(client: MCPClient) -> None:
    tools = await list_tools(client)
    if tools:
        await client.call_tool(tools[0]["name"], {"a": 2, "b": 3})


async def only_list_tools(client: MCPClient) -> None:
    await list_tools(client)


async def call_every_tool(client: MCPClient) -> None:
    """Tools with invalid ``x-mcp-header`` annotations never get here: the
    client left them out of the list."""
    for tool in await list_tools(client):
        await client.call_tool(tool["name"], sample_arguments(tool.get("inputSchema") or {}))


async def echo_the_schema(client: MCPClient) -> None:
    tools = {tool["name"]: tool for tool in await list_tools(client)}
    await client.call_tool("json_schema_echo", {"schema": tools["json_schema_2020_12_tool"]["inputSchema"]})


async def call_a_tool_that_elicits(client: MCPClient) -> None:
    await list_tools(client)
    await client.call_tool("test_client_elicitation_defaults")


async def call_a_tool_whose_stream_drops(client: MCPClient) -> None:
    await list_tools(client)
    await client.call_tool("test_reconnection")


async def use_every_kind_of_request(client: MCPClient) -> None:
    await call_every_tool(client)
    for resource in [r async for r in client.iter_resources()]:
        await client.read_resource(resource["uri"])
    for prompt in [p async for p in client.iter_prompts()]:
        await client.get_prompt(prompt["name"])


async def make_the_calls_asked_for(client: MCPClient) -> None:
    """The scenario's context lists the tool calls to make (with values that
    need every kind of header encoding)."""
    await list_tools(client)
    for call in context().get("toolCalls", []):
        await client.call_tool(call["name"], call.get("arguments") or {})


async def answer_input_required(client: MCPClient) -> None:
    """``test_mrtr_echo_state`` asks for input; while answering it, another
    tool is called, which must carry none of that exchange's state."""
    await list_tools(client)
    await client.call_tool("test_mrtr_echo_state")
    await client.call_tool("test_mrtr_no_state")
    await client.call_tool("test_mrtr_no_result_type")


FLOWS: dict[str, Flow] = {
    "json-schema-ref-no-deref": only_list_tools,
    "request-metadata": only_list_tools,
    "json-schema-2020-12-preservation": echo_the_schema,
    "elicitation-sep1034-client-defaults": call_a_tool_that_elicits,
    "sse-retry": call_a_tool_whose_stream_drops,
    "http-standard-headers": use_every_kind_of_request,
    "http-custom-headers": make_the_calls_asked_for,
    "http-invalid-tool-headers": call_every_tool,
    "sep-2322-client-request-state": answer_input_required,
}


# The Client ID Metadata Document URL the suite's CIMD scenario expects. It is
# offered only there: the suite cannot fetch it, and the offline-access
# scenario can only see the client's grant types in a dynamic registration.
CIMD_URL = "https://conformance-test.local/client-metadata.json"
CIMD_SCENARIOS = {"auth/basic-cimd"}
REDIRECT_URI = "http://localhost:3000/callback"


def context() -> dict[str, Any]:
    return json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")  # type: ignore[no-any-return]


async def follow_to_redirect(reactor: Any, url: str) -> str:
    """The user's browser: open the authorization URL and hand back where
    the authorization server redirects (it asks nothing of the user here)."""
    response = await Agent(reactor).request(b"GET", url.encode("ascii"), Headers())
    response.deliverBody(_Ignore())
    locations = response.headers.getRawHeaders(b"location")
    if response.code not in (302, 303) or not locations:
        raise RuntimeError(f"the authorization endpoint answered {response.code}, not a redirect")
    return locations[0].decode("ascii")


def oauth_client(reactor: Any, scenario: str) -> OAuthClient:
    given = context()
    return OAuthClient(
        reactor, authorize=lambda url: follow_to_redirect(reactor, url), client_name="conformance",
        redirect_uri=REDIRECT_URI, client_id=given.get("client_id"), client_secret=given.get("client_secret"),
        private_key=given.get("private_key_pem"), signing_algorithm=given.get("signing_algorithm", "ES256"),
        client_metadata_url=CIMD_URL if scenario in CIMD_SCENARIOS else None,
    )


class _Ignore(Protocol):
    """Reads a body nobody needs."""


class Callbacks:
    """What the client answers when the server asks (requests on the
    handshake era, ``input_required`` on 2026-07-28)."""

    def __init__(self) -> None:
        self.client: MCPClient | None = None
        self.elicited = 0

    async def elicitation(self, params: dict[str, Any]) -> dict[str, Any]:
        self.elicited += 1
        if self.elicited == 1 and self.client is not None and os.environ.get(
                "MCP_CONFORMANCE_SCENARIO") == "sep-2322-client-request-state":
            await self.client.call_tool("test_mrtr_unrelated")
        # Fields with a default are left out: the client fills the defaults in (SEP-1034).
        schema = params.get("requestedSchema") or {}
        fields = [name for name, field in (schema.get("properties") or {}).items() if "default" not in field]
        return {"action": "accept", "content": sample_values(schema, fields)}

    def sampling(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"role": "assistant", "content": {"type": "text", "text": "conformance"}, "model": "none"}

    def roots(self) -> list[dict[str, Any]]:
        return []


async def run(reactor: Any, url: str) -> None:
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    callbacks = Callbacks()
    service = MCPClientService(
        reactor, url, era=era_for(os.environ.get("MCP_CONFORMANCE_PROTOCOL_VERSION")), max_attempts=1,
        request_timeout=20.0, wait_for_connection=False, elicitation=callbacks.elicitation,
        sampling=callbacks.sampling, roots=callbacks.roots,
        auth=oauth_client(reactor, scenario) if scenario.startswith("auth/") else None,
    )
    service.startService()
    try:
        client = await service.when_ready()
        callbacks.client = client
        await FLOWS.get(scenario, call_first_tool)(client)
    finally:
        await service.stopService()


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: client.py URL")
    task.react(run, [sys.argv[1]])


if __name__ == "__main__":
    main()
