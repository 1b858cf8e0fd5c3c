"""What a tool may return or raise to shape its ``tools/call`` result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ToolError(Exception):
    """Raise from a tool to return ``isError: true`` with this message.

    Any other exception does the same (its text is shown, its traceback only
    logged); ``ToolError`` says the failure is expected and not worth a
    traceback in the log.
    """


@dataclass(slots=True)
class ToolResult:
    """Full control over a ``tools/call`` result."""

    content: list[dict[str, Any]] = field(default_factory=list)
    structured_content: Any = None
    is_error: bool = False
    meta: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"content": self.content}
        if self.structured_content is not None:
            result["structuredContent"] = self.structured_content
        if self.is_error:
            result["isError"] = True
        if self.meta:
            result["_meta"] = self.meta
        return result
