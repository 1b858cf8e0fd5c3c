"""Registered tools, resources, templates and prompts, and how their results are shaped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError
from twisted.internet.defer import CancelledError, Deferred, FirstError, fail
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from mcp_twisted import content
from mcp_twisted.jsonrpc import RPCError, clip
from mcp_twisted.protocol import invalid_params, version_at_least
from mcp_twisted.server._context import Context
from mcp_twisted.server._results import ToolError, ToolResult
from mcp_twisted.server._signature import ArgumentError, Signature
from mcp_twisted.server._uritemplate import URITemplate
from mcp_twisted.session import as_deferred, new_error_id

log = Logger()

# How much of an exception's text a tool error or a log line shows: enough for
# any message written for people, bounded when it quotes a client's value.
EXCEPTION_TEXT_LENGTH = 1000


def _json_default(value: Any) -> Any:
    return str(value)


def to_json_text(value: Any) -> str:
    return orjson.dumps(value, default=_json_default).decode()


def _to_content_list(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [content.text(value)]
    if content.is_content(value):
        return [value]
    if isinstance(value, (list, tuple)):
        blocks: list[dict[str, Any]] = []
        for item in value:
            blocks.extend(_to_content_list(item) if isinstance(item, str) or content.is_content(item)
                          else [content.text(to_json_text(item))])
        return blocks
    return [content.text(to_json_text(value))]


def _error_result(message: str) -> dict[str, Any]:
    return {"content": [content.text(message)], "isError": True}


def _exception_text(error: BaseException) -> str:
    """``str(error)``, bounded: an exception may carry a client's value, which
    can be huge, or so deeply nested that its ``repr`` recurses too far."""
    try:
        return clip(str(error), EXCEPTION_TEXT_LENGTH)
    except RecursionError:
        return type(error).__name__


def _optional_fields(obj: dict[str, Any], **values: Any) -> dict[str, Any]:
    obj.update((key, value) for key, value in values.items() if value is not None)
    return obj


def _display_fields(
    entry: dict[str, Any], version: str, title: str | None, meta: dict[str, Any] | None,
    icons: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """Add ``title`` and ``_meta`` (2025-06-18+) and ``icons`` (2025-11-25+) to a list entry."""
    if version_at_least(version, "2025-06-18"):
        _optional_fields(entry, title=title, _meta=meta)
    if version_at_least(version, "2025-11-25") and icons:
        entry["icons"] = icons
    return entry


@dataclass(slots=True, eq=False)
class Tool:
    name: str
    signature: Signature
    title: str | None = None
    description: str | None = None
    annotations: dict[str, Any] | None = None
    icons: list[dict[str, Any]] | None = None
    meta: dict[str, Any] | None = None
    scopes: tuple[str, ...] = ()  # OAuth scopes a call needs (step-up when the token lacks one)
    # Callable without a request: no Context to give, no scopes to check (MCPServer.quick).
    quick: bool = field(init=False)

    def __post_init__(self) -> None:
        self.quick = self.signature.context_parameter is None and not self.scopes

    @property
    def fn(self) -> Callable[..., Any]:
        return self.signature.fn

    def definition(self, version: str) -> dict[str, Any]:
        """The ``tools/list`` entry, with only the fields ``version`` knows."""
        tool: dict[str, Any] = {"name": self.name, "inputSchema": self.signature.input_schema}
        if self.description:
            tool["description"] = self.description
        if version_at_least(version, "2025-03-26") and self.annotations:
            tool["annotations"] = self.annotations
        if version_at_least(version, "2025-06-18") and self.signature.output_schema is not None:
            tool["outputSchema"] = self.signature.output_schema
        return _display_fields(tool, version, self.title, self.meta, self.icons)

    def call(self, arguments: dict[str, Any], context: Context | None, version: str) -> Any:
        """Run the tool; a dict, or a Deferred of one. Failures become ``isError``."""
        try:
            kwargs = self.signature.bind(arguments, context)
            result = self.signature.fn(**kwargs)
        except ArgumentError as e:
            return _error_result(str(e))
        except Exception as e:
            # _failed hands RPCError and CancelledError back as a Failure: that
            # must reach the session as a failed Deferred, not as a result.
            outcome = self._failed(Failure(e))
            return fail(outcome) if isinstance(outcome, Failure) else outcome
        if type(result) is str and self.signature.output_adapter is None:
            return {"content": [{"type": "text", "text": result}]}  # the commonest result, in one step
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            d = as_deferred(result)
            return d.addCallbacks(self._shape, self._failed, (version,))
        return self._shape(result, version)

    def _shape(self, value: Any, version: str) -> dict[str, Any]:
        if isinstance(value, ToolResult):
            return value.to_dict()
        adapter = self.signature.output_adapter
        if adapter is None:
            return {"content": _to_content_list(value)}
        try:
            structured = adapter.dump_python(adapter.validate_python(value), mode="json")
        except ValidationError as e:
            log.error("Tool {tool!r} returned output that breaks its outputSchema: {error}",
                      tool=self.name, error=_exception_text(e))
            return _error_result(f"Tool {self.name!r} returned output that does not match "
                                 "its output schema")
        result: dict[str, Any] = {"content": [content.text(to_json_text(structured))]}
        if version_at_least(version, "2025-06-18"):
            result["structuredContent"] = structured
        return result

    def _failed(self, failure: Failure) -> dict[str, Any] | Failure:
        if _cancelled(failure):
            return failure  # cancellation is not a tool error: the session sends nothing
        if failure.check(ToolError):
            return _error_result(str(failure.value))
        if failure.check(RPCError):
            return failure
        # The client sees the message and an id; the traceback stays in the log.
        error_id = new_error_id()
        assert failure.value is not None  # a Failure always holds its exception
        # Error, not critical: the app's bug, and the server goes on serving.
        log.failure("Tool {tool!r} raised (error id {error_id})", failure, LogLevel.error, tool=self.name,
                    error_id=error_id)
        return _error_result(f"Error in tool {self.name!r}: {_exception_text(failure.value)} "
                             f"(error id {error_id})")


def _cancelled(failure: Failure) -> bool:
    """A cancellation, also one that reached the handler through
    ``gatherResults`` (several questions asked at once, then cancelled)."""
    if failure.check(FirstError):
        return bool(failure.value.subFailure.check(CancelledError))  # type: ignore[union-attr]
    return bool(failure.check(CancelledError))


@dataclass(slots=True, eq=False)
class _Readable:
    """What static resources and templates share: metadata and result shaping."""

    name: str
    signature: Signature
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None
    annotations: dict[str, Any] | None = None
    icons: list[dict[str, Any]] | None = None
    meta: dict[str, Any] | None = None
    cache: Any = None  # a CachePolicy for this resource's 2026-07-28 reads (None: the server's)
    scopes: tuple[str, ...] = ()  # OAuth scopes a read needs

    def _describe(self, entry: dict[str, Any], version: str) -> dict[str, Any]:
        _optional_fields(entry, description=self.description, mimeType=self.mime_type,
                         annotations=self.annotations)
        return _display_fields(entry, version, self.title, self.meta, self.icons)

    def read(self, uri: str, variables: dict[str, str], context: Context | None) -> Any:
        """Call the handler; a ``resources/read`` result, or a Deferred of one."""
        try:
            kwargs = self.signature.bind(variables, context)
        except ArgumentError as e:
            raise invalid_params(f"{clip(uri)}: {e}") from None
        return as_deferred(self.signature.fn(**kwargs)).addCallback(self._shape, uri)

    def _shape(self, value: Any, uri: str) -> dict[str, Any]:
        # An empty list is JSON data ("[]"), not an empty set of contents.
        if value and isinstance(value, list) and all(isinstance(v, dict) and "uri" in v for v in value):
            return {"contents": value}
        if isinstance(value, (str, bytes)):
            mime = self.mime_type or ("text/plain" if isinstance(value, str)
                                      else "application/octet-stream")
            return {"contents": [content.resource_contents(uri, value, mime)]}
        text = to_json_text(value)
        return {"contents": [content.resource_contents(uri, text, self.mime_type or "application/json")]}


@dataclass(slots=True, eq=False)
class Resource(_Readable):
    uri: str = ""
    size: int | None = None

    def definition(self, version: str) -> dict[str, Any]:
        return self._describe(_optional_fields({"uri": self.uri, "name": self.name},
                                               size=self.size), version)


@dataclass(slots=True, eq=False)
class ResourceTemplate(_Readable):
    template: URITemplate | None = None

    def definition(self, version: str) -> dict[str, Any]:
        assert self.template is not None
        return self._describe({"uriTemplate": self.template.template, "name": self.name}, version)


@dataclass(slots=True, eq=False)
class Prompt:
    name: str
    signature: Signature
    title: str | None = None
    description: str | None = None
    icons: list[dict[str, Any]] | None = None
    meta: dict[str, Any] | None = None
    scopes: tuple[str, ...] = ()  # OAuth scopes a get needs

    def definition(self, version: str) -> dict[str, Any]:
        arguments = []
        for parameter in self.signature.parameters:
            argument: dict[str, Any] = {
                "name": parameter.name, "required": parameter.default is parameter.empty,
            }
            _optional_fields(argument, description=self.signature.parameter_docs.get(parameter.name))
            arguments.append(argument)
        prompt = _optional_fields({"name": self.name, "arguments": arguments},
                                  description=self.description)
        return _display_fields(prompt, version, self.title, self.meta, self.icons)

    def get(self, arguments: dict[str, Any], context: Context | None) -> Deferred[dict[str, Any]]:
        try:
            kwargs = self.signature.bind(arguments, context)
        except ArgumentError as e:
            raise invalid_params(f"Prompt {self.name!r}: {e}") from None
        return as_deferred(self.signature.fn(**kwargs)).addCallback(self._shape)

    def _shape(self, value: Any) -> dict[str, Any]:
        items = value if isinstance(value, (list, tuple)) else [value]
        messages = []
        for item in items:
            if isinstance(item, dict) and "role" in item:
                messages.append(item)
            elif isinstance(item, str):
                messages.append({"role": "user", "content": content.text(item)})
            elif content.is_content(item):
                messages.append({"role": "user", "content": item})
            else:
                raise TypeError(f"Prompt {self.name!r} returned {type(item).__name__}; "
                                "expected str, a content block or a message dict")
        return _optional_fields({"messages": messages}, description=self.description)
