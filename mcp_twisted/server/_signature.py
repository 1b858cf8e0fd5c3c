"""Turn a handler's signature into a JSON Schema and a validator, once.

pydantic does the work: it reads type hints (including ``Optional``,
``Literal``, ``Enum``, ``TypedDict``, dataclasses and its own models), emits
JSON Schema 2020-12 and validates arguments in compiled code, converting
them to the annotated types. Everything here runs at registration time; a
call only pays for ``validate``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pydantic
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import SchemaValidator, core_schema
from typing_extensions import is_typeddict

from mcp_twisted.jsonrpc import clip
from mcp_twisted.server._context import Context
from mcp_twisted.server._results import ToolResult

_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Returns|Return|Raises|Yields|Examples?|Notes?):\s*$"
)
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


class _PlainSchema(GenerateJsonSchema):
    """JSON Schema without pydantic's generated titles (noise for a model reading it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def generate(self, schema: Any, mode: Any = "validation") -> dict[str, Any]:
        result = super().generate(schema, mode)
        result.pop("title", None)
        for definition in result.get("$defs", {}).values():
            if isinstance(definition, dict) and "properties" in definition:
                definition.pop("title", None)
        return result


def json_schema(adapter: TypeAdapter[Any] | type[pydantic.BaseModel]) -> dict[str, Any]:
    if isinstance(adapter, TypeAdapter):
        return adapter.json_schema(schema_generator=_PlainSchema)
    return adapter.model_json_schema(schema_generator=_PlainSchema)


def parse_docstring(fn: Callable[..., Any]) -> tuple[str | None, dict[str, str]]:
    """The description and per-argument text of a Google-style docstring."""
    doc = inspect.getdoc(fn)
    if not doc:
        return None, {}
    summary: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in doc.splitlines():
        header = _SECTION.match(line.strip()) if not line.startswith(" ") else None
        if header:
            section, current = header.group(1), None
            continue
        if section is None:
            summary.append(line)
        elif section in ("Args", "Arguments", "Parameters", "Params"):
            stripped = line.strip()
            match = _ARG_LINE.match(stripped)
            indent = len(line) - len(line.lstrip())
            if match and (current is None or indent <= 4):
                current = match.group(1).lstrip("*")
                args[current] = match.group(3).strip()
            elif current is not None and stripped:
                args[current] = f"{args[current]} {stripped}".strip()
    description = "\n".join(summary).strip() or None
    return description, args


def _is_context(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, Context):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_context(arg) for arg in typing.get_args(annotation))
    return False


def _is_object_type(annotation: Any) -> bool:
    """Whether a return annotation describes a JSON object (gets an outputSchema)."""
    origin = typing.get_origin(annotation) or annotation
    if origin in (dict, Mapping, typing.Mapping):
        return True
    if not isinstance(origin, type):
        return False
    if issubclass(origin, ToolResult):
        return False  # the tool shapes its own result; ToolResult is not its output
    return (
        # typing.is_typeddict misses typing_extensions.TypedDict, which pydantic
        # requires before Python 3.12.
        is_typeddict(origin)
        or dataclasses.is_dataclass(origin)
        or issubclass(origin, pydantic.BaseModel)
    )


class ArgumentError(Exception):
    """Arguments that do not match the handler's signature; the text says why."""


@dataclasses.dataclass(slots=True)
class Signature:
    """What is known about a handler, computed once at registration."""

    fn: Callable[..., Any]
    description: str | None
    parameters: list[inspect.Parameter]
    parameter_docs: dict[str, str]
    context_parameter: str | None
    model: type[pydantic.BaseModel]
    input_schema: dict[str, Any]
    output_adapter: TypeAdapter[Any] | None
    output_schema: dict[str, Any] | None
    # The compiled validator, kept here so a call does no lookups through
    # pydantic's Python layer (see _arguments_validator).
    _validate: Callable[[Any], dict[str, Any]] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self._validate = _arguments_validator(self.model, [p.name for p in self.parameters])

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Check and convert arguments into keyword arguments for ``fn``."""
        try:
            return self._validate(arguments)
        except ValidationError as e:
            raise ArgumentError(_describe_errors(e)) from None
        except RecursionError:  # from a Python validator walking a deeply nested value
            raise ArgumentError("Invalid arguments: nested too deeply") from None

    def bind(self, arguments: Mapping[str, Any], context: Context | None) -> dict[str, Any]:
        kwargs = self.validate(arguments)
        if self.context_parameter is not None:
            kwargs[self.context_parameter] = context
        return kwargs


def _arguments_validator(
    model: type[pydantic.BaseModel], names: list[str]
) -> Callable[[Any], dict[str, Any]]:
    """The model's checks, answering a dict of keyword arguments.

    The model's own field schemas (and definitions, and config: extra
    arguments are refused) under a typed-dict schema keyed by parameter name,
    each field read through the model's alias: the same validation without
    building a model instance and renaming its fields (p0, p1...) back, which
    took two thirds of a validated call's time.
    """
    schema: Any = model.__pydantic_core_schema__
    definitions = None
    if schema["type"] == "definitions":
        definitions, schema = schema["definitions"], schema["schema"]
    fields = schema["schema"]["fields"].values()  # model -> model-fields, in declaration order
    arguments: core_schema.CoreSchema = core_schema.typed_dict_schema(
        {name: core_schema.typed_dict_field(field["schema"], required=field["schema"]["type"] != "default",
                                            validation_alias=field.get("validation_alias"))
         for name, field in zip(names, fields, strict=True)},
        extra_behavior="forbid",
    )
    if definitions is not None:
        arguments = core_schema.definitions_schema(arguments, definitions)
    return SchemaValidator(arguments, schema.get("config")).validate_python


# Errors listed in an ArgumentError; a list of a million bad items has a million.
MAX_LISTED_ERRORS = 5


def _describe_errors(error: ValidationError) -> str:
    # The client's keys are in "loc" and a message may quote its value: both
    # are clipped, so the text stays short whatever was sent.
    items = error.errors(include_url=False, include_context=False, include_input=False)
    parts = []
    for item in items[:MAX_LISTED_ERRORS]:
        where = ".".join(str(p) for p in item["loc"]) or "arguments"
        parts.append(f"{clip(where, 60)}: {clip(item['msg'])}")
    if len(items) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(items) - MAX_LISTED_ERRORS} more")
    return "Invalid arguments: " + "; ".join(parts)


# Prefixes such as "mypkg.models." or "test_x.<locals>." in a type's repr.
_QUALIFIER = re.compile(r"(?<![\w.'\"])(?:[A-Za-z_]\w*\.|<locals>\.)+(?=[A-Za-z_])")
_SCHEMA_ADVICE = "use a JSON type, a pydantic model, a TypedDict or a dataclass"


def _type_name(annotation: Any) -> str:
    """``list[Foo]``, not ``list[mypkg.models.Foo]`` or ``<class 'mypkg.models.Foo'>``."""
    if isinstance(annotation, type):
        return annotation.__name__
    return _QUALIFIER.sub("", repr(annotation))


def _schema_error(annotation: Any) -> pydantic.PydanticUserError | None:
    """Why pydantic cannot validate ``annotation`` or describe it as JSON Schema, if it cannot."""
    try:
        json_schema(TypeAdapter(annotation))
    except pydantic.PydanticUserError as e:
        return e
    return None


def _unschemable(what: str, subject: str, annotation: Any, error: pydantic.PydanticUserError) -> TypeError:
    """One line naming the handler, the parameter and the type, for pydantic's paragraphs."""
    if isinstance(error, (pydantic.PydanticSchemaGenerationError, pydantic.PydanticInvalidForJsonSchema)):
        reason = f"cannot be described as JSON Schema ({_SCHEMA_ADVICE})"
    else:  # e.g. typing.TypedDict before Python 3.12: pydantic's first line says what to do
        reason = f"cannot be used: {str(error).splitlines()[0]}"
    return TypeError(f"{what}: {subject}: type {_type_name(annotation)} {reason}")


def verbatim_schema(
    schema: Mapping[str, Any], what: str, parameters: list[inspect.Parameter]
) -> dict[str, Any]:
    """A JSON copy of an input schema given by hand, after checks that catch
    a tool no client could call; each failure is a one-line ``TypeError``.

    The schema must be a JSON object schema (``"type": "object"``, as MCP
    requires of ``inputSchema``). Its top-level ``properties`` must name
    parameters of the function, and list every parameter without a default:
    arguments are still validated by the function's hints, so a property
    with no parameter would always be refused, and a required parameter the
    schema does not show would never be sent. Everything else (``$schema``,
    ``$defs``, ``allOf``, ``if``/``then``/``else``...) is kept as written.
    The copy is taken now, so changing the dict later changes nothing.
    """
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        found = repr(schema.get("type")) if isinstance(schema, Mapping) else type(schema).__name__
        raise TypeError(f'{what}: input_schema must be a JSON object schema ("type": "object"), '
                        f"not {clip(found, 60)}")
    try:
        copy: dict[str, Any] = orjson.loads(orjson.dumps(dict(schema)))
    except TypeError as e:  # orjson.JSONEncodeError is a TypeError
        raise TypeError(f"{what}: input_schema is not JSON: {e}") from None
    properties = copy.get("properties", {})
    if not isinstance(properties, dict):
        raise TypeError(f"{what}: input_schema properties must be an object")
    names = [p.name for p in parameters]
    unknown = [key for key in properties if key not in names]
    if unknown:
        raise TypeError(f"{what}: input_schema properties {unknown} are not parameters "
                        f"of the function (it takes {names})")
    missing = [p.name for p in parameters if p.default is p.empty and p.name not in properties]
    if missing:
        raise TypeError(f"{what}: required parameters {missing} are not in input_schema properties")
    return copy


def compile_signature(
    fn: Callable[..., Any], name: str, *, output: bool = False, kind: str | None = None,
    input_schema: Mapping[str, Any] | None = None,
) -> Signature:
    """Read ``fn`` once: parameters, Context slot, input (and output) schema.

    Hints that cannot become a schema raise a one-line ``TypeError`` naming
    the handler (``kind`` and ``name``, e.g. "tool 'search'") and the parameter.
    ``kind`` defaults to "tool" when an output schema is asked for, else "handler".

    ``input_schema``, if given, is what clients are shown instead of the
    generated schema (see ``verbatim_schema``); the hints still validate.
    """
    what = f"{kind or ('tool' if output else 'handler')} {name!r}"
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except NameError as e:
        raise TypeError(f"{what}: cannot resolve its type hints: {e} "
                        "(define the types they name at module level)") from None
    description, parameter_docs = parse_docstring(fn)
    fields: dict[str, Any] = {}
    parameters: list[inspect.Parameter] = []
    context_parameter = None
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"{what}: *args and **kwargs cannot be described as a schema")
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise TypeError(f"{what}: parameter {parameter.name!r} is positional-only; "
                            "arguments are passed by name")
        annotation = hints.get(parameter.name, Any)
        if _is_context(annotation):
            context_parameter = parameter.name
            continue
        parameters.append(parameter)
        default = ... if parameter.default is parameter.empty else parameter.default
        # Fields get neutral names and the parameter name as alias, so a
        # parameter may be called "schema" or "json" without clashing with
        # BaseModel's own attributes.
        # A description=None would erase one given with Annotated[..., Field(description=...)].
        doc: dict[str, Any] = (
            {"description": parameter_docs[parameter.name]} if parameter.name in parameter_docs else {})
        field = Field(default, alias=parameter.name, **doc)
        fields[f"p{len(parameters) - 1}"] = (annotation, field)
    try:
        model = pydantic.create_model(
            f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        # A schema given verbatim replaces the generated one: the hints then
        # only need to validate, not to be describable.
        schema = json_schema(model) if input_schema is None else verbatim_schema(
            input_schema, what, parameters)
    except pydantic.PydanticUserError as e:
        # Only now, on failure, look at each parameter alone to name the culprit.
        for parameter, (annotation, _) in zip(parameters, fields.values(), strict=True):
            error = _schema_error(annotation)
            if error is not None:
                raise _unschemable(what, f"parameter {parameter.name!r}", annotation, error) from None
        raise TypeError(f"{what}: its parameters cannot be described as JSON Schema: "
                        f"{str(e).splitlines()[0]}") from None
    if input_schema is None:
        schema.setdefault("properties", {})
    output_adapter = output_schema = None
    returns = hints.get("return")
    if output and returns is not None and _is_object_type(returns):
        error = _schema_error(returns)
        if error is not None:
            raise _unschemable(what, "return value", returns, error) from None
        output_adapter = TypeAdapter(returns)
        output_schema = json_schema(output_adapter)
    return Signature(
        fn, description, parameters, parameter_docs, context_parameter, model,
        schema, output_adapter, output_schema,
    )
