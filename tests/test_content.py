"""Content block helpers, alone and as they travel in tool results and prompt messages."""

import base64
from typing import Any

import pytest

from mcp_twisted import content
from mcp_twisted.server import MCPServer
from tests.support import initialized

ANNOTATIONS = {"audience": ["user", "assistant"], "priority": 0.7, "lastModified": "2025-01-12T15:00:58Z"}
META = {"example.com/trace": "abc"}
PNG = b"\x89PNG\r\n\x1a\n\x00"
PNG_B64 = base64.b64encode(PNG).decode()


def ask(server: MCPServer, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Initialize a fresh session, send one request, return its result."""
    return initialized(server).result(method, params)  # type: ignore[no-any-return]


# -- the helpers -------------------------------------------------------------

def test_text():
    assert content.text("hi") == {"type": "text", "text": "hi"}
    assert content.text("hi", annotations=ANNOTATIONS, meta=META) == {
        "type": "text", "text": "hi", "annotations": ANNOTATIONS, "_meta": META,
    }


def test_empty_annotations_and_meta_are_left_out():
    assert content.text("hi", annotations={}, meta={}) == {"type": "text", "text": "hi"}


@pytest.mark.parametrize("helper", [content.image, content.audio])
def test_binary_media_encode_bytes_and_pass_base64_through(helper):
    kind = helper.__name__
    assert helper(PNG, "x/y") == {"type": kind, "data": PNG_B64, "mimeType": "x/y"}
    assert helper(PNG_B64, "x/y") == {"type": kind, "data": PNG_B64, "mimeType": "x/y"}
    assert helper(PNG, "x/y", annotations={"priority": 1}, meta=META) == {
        "type": kind, "data": PNG_B64, "mimeType": "x/y", "annotations": {"priority": 1}, "_meta": META,
    }


def test_resource_link():
    assert content.resource_link("file:///a.txt", "a.txt") == {
        "type": "resource_link", "uri": "file:///a.txt", "name": "a.txt",
    }
    assert content.resource_link(
        "file:///a.txt", "a.txt", title="A", description="The A file", mime_type="text/plain", size=0,
        annotations=ANNOTATIONS, meta=META,
    ) == {
        "type": "resource_link", "uri": "file:///a.txt", "name": "a.txt", "title": "A",
        "description": "The A file", "mimeType": "text/plain", "size": 0,
        "annotations": ANNOTATIONS, "_meta": META,
    }


def test_resource_contents_text_and_blob():
    assert content.resource_contents("a://1", "text") == {"uri": "a://1", "text": "text"}
    assert content.resource_contents("a://1", PNG, "image/png", meta=META) == {
        "uri": "a://1", "mimeType": "image/png", "blob": PNG_B64, "_meta": META,
    }


def test_embedded_resource_text_and_blob():
    assert content.embedded_resource("a://1", "hello", "text/plain") == {
        "type": "resource", "resource": {"uri": "a://1", "mimeType": "text/plain", "text": "hello"},
    }
    assert content.embedded_resource("a://2", PNG, annotations=ANNOTATIONS, meta=META) == {
        "type": "resource", "resource": {"uri": "a://2", "blob": PNG_B64},
        "annotations": ANNOTATIONS, "_meta": META,
    }


def test_is_content():
    for block in (content.text("x"), content.image(b"", "a/b"), content.audio(b"", "a/b"),
                  content.resource_link("a://", "a"), content.embedded_resource("a://", "x")):
        assert content.is_content(block)
    for other in ({"type": "tool_use"}, {"role": "user"}, "text", None, ["x"], {"text": "x"}):
        assert not content.is_content(other)


def test_helpers_return_fresh_dicts():
    first = content.text("x")
    first["text"] = "changed"
    assert content.text("x")["text"] == "x"


# -- through tools and prompts -------------------------------------------------

def every_block() -> list[dict[str, Any]]:
    return [
        content.text("plain"),
        content.text("noted", annotations=ANNOTATIONS, meta=META),
        content.image(PNG, "image/png", annotations={"audience": ["user"]}),
        content.audio(b"RIFF", "audio/wav", meta=META),
        content.resource_link("file:///r.txt", "r.txt", title="R", mime_type="text/plain", size=3),
        content.embedded_resource("mem://text", "embedded", "text/plain", annotations={"priority": 0.1}),
        content.embedded_resource("mem://blob", PNG, "image/png", meta=META),
    ]


EXPECTED_BLOCKS = [
    {"type": "text", "text": "plain"},
    {"type": "text", "text": "noted", "annotations": ANNOTATIONS, "_meta": META},
    {"type": "image", "data": PNG_B64, "mimeType": "image/png", "annotations": {"audience": ["user"]}},
    {"type": "audio", "data": "UklGRg==", "mimeType": "audio/wav", "_meta": META},
    {"type": "resource_link", "uri": "file:///r.txt", "name": "r.txt", "title": "R",
     "mimeType": "text/plain", "size": 3},
    {"type": "resource", "resource": {"uri": "mem://text", "mimeType": "text/plain", "text": "embedded"},
     "annotations": {"priority": 0.1}},
    {"type": "resource", "resource": {"uri": "mem://blob", "mimeType": "image/png", "blob": PNG_B64},
     "_meta": META},
]


def test_every_block_type_from_a_tool():
    server = MCPServer("s")
    server.add_tool(every_block, "blocks")
    assert ask(server, "tools/call", {"name": "blocks"}) == {"content": EXPECTED_BLOCKS}


@pytest.mark.parametrize("index", range(len(EXPECTED_BLOCKS)))
def test_a_single_block_from_a_tool(index):
    server = MCPServer("s")
    server.add_tool(lambda: every_block()[index], "one")
    assert ask(server, "tools/call", {"name": "one"}) == {"content": [EXPECTED_BLOCKS[index]]}


def test_every_block_type_from_a_prompt():
    server = MCPServer("s")
    server.add_prompt(every_block, "blocks")
    result = ask(server, "prompts/get", {"name": "blocks"})
    assert result == {"messages": [{"role": "user", "content": block} for block in EXPECTED_BLOCKS]}


def test_prompt_message_dicts_keep_their_role_and_content():
    server = MCPServer("s")
    server.add_prompt(lambda: [
        {"role": "assistant", "content": content.audio(b"RIFF", "audio/wav")},
        {"role": "user", "content": content.embedded_resource("mem://x", "x")},
    ], "chat")
    assert ask(server, "prompts/get", {"name": "chat"})["messages"] == [
        {"role": "assistant", "content": {"type": "audio", "data": "UklGRg==", "mimeType": "audio/wav"}},
        {"role": "user", "content": {"type": "resource", "resource": {"uri": "mem://x", "text": "x"}}},
    ]


def test_resource_read_returning_resource_contents_with_meta():
    server = MCPServer("s")
    server.add_resource(lambda: [content.resource_contents("mem://a", "A", "text/markdown", meta=META)],
                        "mem://a", name="a")
    assert ask(server, "resources/read", {"uri": "mem://a"}) == {
        "contents": [{"uri": "mem://a", "mimeType": "text/markdown", "text": "A", "_meta": META}],
    }
