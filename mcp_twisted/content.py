"""Content blocks for tool results, prompt messages and resources.

Each helper returns the plain dict the protocol sends, so results can be
composed, inspected in tests and serialised without conversion.
"""

from __future__ import annotations

import base64
from typing import Any

__all__ = [
    "CONTENT_TYPES",
    "audio",
    "embedded_resource",
    "image",
    "is_content",
    "resource_contents",
    "resource_link",
    "text",
]

Content = dict[str, Any]


def _extras(content: Content, annotations: dict[str, Any] | None, meta: dict[str, Any] | None) -> Content:
    if annotations:
        content["annotations"] = annotations
    if meta:
        content["_meta"] = meta
    return content


def _b64(data: bytes | str) -> str:
    # Already-encoded text is passed through so callers holding base64 need not decode it.
    return data if isinstance(data, str) else base64.b64encode(data).decode("ascii")


def text(value: str, *, annotations: dict[str, Any] | None = None,
         meta: dict[str, Any] | None = None) -> Content:
    return _extras({"type": "text", "text": value}, annotations, meta)


def image(data: bytes | str, mime_type: str, *, annotations: dict[str, Any] | None = None,
          meta: dict[str, Any] | None = None) -> Content:
    """An image; ``data`` is raw bytes or a base64 string."""
    return _extras({"type": "image", "data": _b64(data), "mimeType": mime_type}, annotations, meta)


def audio(data: bytes | str, mime_type: str, *, annotations: dict[str, Any] | None = None,
          meta: dict[str, Any] | None = None) -> Content:
    """Audio (2025-03-26 and later); ``data`` is raw bytes or a base64 string."""
    return _extras({"type": "audio", "data": _b64(data), "mimeType": mime_type}, annotations, meta)


def resource_link(uri: str, name: str, *, title: str | None = None,
                  description: str | None = None, mime_type: str | None = None,
                  size: int | None = None, annotations: dict[str, Any] | None = None,
                  meta: dict[str, Any] | None = None) -> Content:
    """A link to a resource the client may read later (2025-06-18 and later)."""
    link: Content = {"type": "resource_link", "uri": uri, "name": name}
    for key, value in (("title", title), ("description", description),
                       ("mimeType", mime_type), ("size", size)):
        if value is not None:
            link[key] = value
    return _extras(link, annotations, meta)


def resource_contents(uri: str, data: str | bytes, mime_type: str | None = None,
                      *, meta: dict[str, Any] | None = None) -> Content:
    """One entry of ``resources/read`` contents: text for ``str``, blob for ``bytes``."""
    contents: Content = {"uri": uri}
    if mime_type is not None:
        contents["mimeType"] = mime_type
    if isinstance(data, str):
        contents["text"] = data
    else:
        contents["blob"] = _b64(data)
    if meta:
        contents["_meta"] = meta
    return contents


def embedded_resource(uri: str, data: str | bytes, mime_type: str | None = None, *,
                      annotations: dict[str, Any] | None = None,
                      meta: dict[str, Any] | None = None) -> Content:
    """A resource carried inside a result (text for ``str``, blob for ``bytes``)."""
    return _extras({"type": "resource", "resource": resource_contents(uri, data, mime_type)},
                   annotations, meta)


CONTENT_TYPES = frozenset({"text", "image", "audio", "resource_link", "resource"})


def is_content(value: object) -> bool:
    return isinstance(value, dict) and value.get("type") in CONTENT_TYPES
