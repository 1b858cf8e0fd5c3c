"""A tool's ``inputSchema`` given verbatim: sent as written, validated by the hints."""

import copy
import dataclasses
from typing import Any, Literal

import pytest

from mcp_twisted import Context, MCPServer
from mcp_twisted.testing import Peer

# Keywords pydantic never emits from hints, all of which must reach the client.
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        },
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
    },
    "allOf": [{"anyOf": [{"required": ["name"]}, {"required": ["address"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["name"]},
    "else": {"required": ["address"]},
    "additionalProperties": False,
}


@dataclasses.dataclass
class Address:
    street: str = ""
    city: str = ""


def contact(name: str | None = None, address: Address | None = None,
            contactMethod: Literal["phone", "email"] | None = None) -> str:
    """Describe a contact."""
    where = f"{address.street}, {address.city}" if address else "nowhere"
    return f"{name} at {where} by {contactMethod}"


def make_server(schema: dict[str, Any] = SCHEMA) -> MCPServer:
    server = MCPServer("schemas")
    server.tool(input_schema=schema)(contact)
    return server


def listed_schema(server: MCPServer, version: str = "2025-11-25") -> dict[str, Any]:
    peer = Peer(server)
    peer.initialize(version)
    [tool] = peer.result("tools/list")["tools"]
    return tool["inputSchema"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", ["2024-11-05", "2025-06-18", "2025-11-25"])
def test_the_schema_is_listed_exactly_as_written(version):
    listed = listed_schema(make_server(), version)
    assert listed == SCHEMA
    assert list(listed) == list(SCHEMA)  # key order too


def test_the_schema_is_copied_at_registration():
    schema = copy.deepcopy(SCHEMA)
    server = make_server(schema)
    schema["properties"]["name"]["type"] = "integer"
    schema["$defs"].clear()
    assert listed_schema(server) == SCHEMA


def test_the_hints_validate_and_convert_the_arguments():
    peer = Peer(make_server())
    peer.initialize()
    result = peer.call_tool("contact", {"name": "Ada", "address": {"street": "Main St", "city": "Oslo"},
                                        "contactMethod": "email"})
    assert result["content"] == [{"type": "text", "text": "Ada at Main St, Oslo by email"}]
    # The schema's own constraints (allOf, if/then/else) are the client's to
    # honour; the function decides what it accepts.
    assert "isError" not in peer.call_tool("contact", {})
    for arguments, fragment in (
        ({"contactMethod": "fax"}, "contactMethod"),
        ({"address": "Main St"}, "address"),
        ({"nickname": "A"}, "nickname"),
    ):
        refused = peer.call_tool("contact", arguments)
        assert refused["isError"] is True
        assert fragment in refused["content"][0]["text"]


def test_add_tool_takes_the_schema_too_and_a_context_needs_no_property():
    def shout(text: str, ctx: Context) -> str:
        """Upper-case."""
        return text.upper()

    server = MCPServer("schemas")
    schema = {"type": "object", "properties": {"text": {"type": "string", "minLength": 1}},
              "required": ["text"]}
    tool = server.add_tool(shout, input_schema=schema)
    assert tool.definition("2025-11-25")["inputSchema"] == schema
    assert tool.description == "Upper-case."
    peer = Peer(server)
    peer.initialize()
    assert peer.call_tool("shout", {"text": "hi"})["content"][0]["text"] == "HI"


def test_without_a_schema_the_hints_still_give_one():
    server = MCPServer("schemas")
    server.tool()(contact)
    listed = listed_schema(server)
    assert "$schema" not in listed and "allOf" not in listed
    assert set(listed["properties"]) == {"name", "address", "contactMethod"}


def test_a_schema_with_no_properties_fits_a_function_without_required_parameters():
    def ping() -> str:
        return "pong"

    server = MCPServer("schemas")
    server.add_tool(ping, input_schema={"type": "object"})
    assert listed_schema(server) == {"type": "object"}


def f_required(city: str, days: int = 3) -> str:
    return city


@pytest.mark.parametrize(("schema", "fragment"), [
    ({"type": "array", "items": {}}, "must be a JSON object schema (\"type\": \"object\"), not 'array'"),
    ({"properties": {"city": {}}}, "not None"),
    ({"type": ["object"], "properties": {"city": {}}}, "not ['object']"),
    ("{\"type\": \"object\"}", "not str"),
    ({"type": "object", "properties": {"city": {"default": {1, 2}}}}, "input_schema is not JSON"),
    ({"type": "object", "properties": ["city"]}, "input_schema properties must be an object"),
    ({"type": "object", "properties": {"city": {}, "country": {}}},
     "input_schema properties ['country'] are not parameters of the function (it takes ['city', 'days'])"),
    ({"type": "object", "properties": {"days": {}}},
     "required parameters ['city'] are not in input_schema properties"),
])
def test_a_schema_no_client_could_use_fails_at_registration_in_one_line(schema, fragment):
    server = MCPServer("schemas")
    with pytest.raises(TypeError) as caught:
        server.add_tool(f_required, "forecast", input_schema=schema)
    message = str(caught.value)
    assert message.startswith("tool 'forecast': ")
    assert fragment in message
    assert "\n" not in message
    with pytest.raises(KeyError):  # nothing was registered
        server.remove_tool("forecast")
