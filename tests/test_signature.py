"""Unit tests for turning handler signatures into JSON Schema and validators.

Types are declared at module level: ``typing.get_type_hints`` must resolve
them. ``TypedDict`` comes from ``typing_extensions`` because pydantic refuses
``typing.TypedDict`` before Python 3.12.
"""

import dataclasses
import enum
import sys
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional

import pytest
from pydantic import Field
from typing_extensions import TypedDict

from mcp_twisted.server import Context, ToolResult
from mcp_twisted.server._signature import ArgumentError, compile_signature, parse_docstring


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Point(TypedDict):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    width: int
    height: int = 1


def schema_of(fn: Any) -> dict[str, Any]:
    return compile_signature(fn, fn.__name__).input_schema


def property_of(annotation: Any) -> dict[str, Any]:
    """The schema of one required parameter annotated ``annotation``."""

    def fn(value): ...

    fn.__annotations__ = {"value": annotation}
    schema = schema_of(fn)
    assert schema["required"] == ["value"]
    return schema["properties"]["value"]


# -- schemas from hints ------------------------------------------------------

@pytest.mark.parametrize(("annotation", "expected"), [
    (str, {"type": "string"}),
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (bool, {"type": "boolean"}),
    (None, {"type": "null"}),
    (list[int], {"type": "array", "items": {"type": "integer"}}),
    (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
    (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
    (Literal["only"], {"type": "string", "const": "only"}),
])
def test_primitive_schemas(annotation, expected):
    assert property_of(annotation) == expected


@pytest.mark.parametrize("annotation", [Optional[int], int | None])  # noqa: UP045 (Optional on purpose)
def test_optional_is_nullable_and_still_required_without_default(annotation):
    assert property_of(annotation) == {"anyOf": [{"type": "integer"}, {"type": "null"}]}


def test_enum_typeddict_and_dataclass_go_to_defs():
    def fn(color: Color, point: Point, box: Box): ...

    schema = schema_of(fn)
    assert schema["properties"] == {
        "color": {"$ref": "#/$defs/Color"},
        "point": {"$ref": "#/$defs/Point"},
        "box": {"$ref": "#/$defs/Box"},
    }
    defs = schema["$defs"]
    assert defs["Color"]["enum"] == ["red", "green"]
    assert defs["Point"]["properties"] == {"x": {"type": "integer"}, "y": {"type": "integer"}}
    assert defs["Point"]["required"] == ["x", "y"]
    assert defs["Box"]["properties"]["height"] == {"type": "integer", "default": 1}
    assert defs["Box"]["required"] == ["width"]


def test_object_schema_shape_required_and_defaults():
    def fn(a: int, b: str = "x", c: Optional[int] = None, d: list[str] | None = None): ...  # noqa: UP045

    schema = schema_of(fn)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["a"]
    assert schema["properties"]["b"] == {"type": "string", "default": "x"}
    assert schema["properties"]["c"]["default"] is None
    assert schema["properties"]["d"]["default"] is None
    assert "title" not in schema
    assert all("title" not in prop for prop in schema["properties"].values())


def test_no_parameters_gives_empty_object_schema():
    def fn(): ...

    assert schema_of(fn) == {"type": "object", "properties": {}, "additionalProperties": False}


def test_property_order_follows_the_signature():
    def fn(zeta: int, alpha: int, mid: int = 0): ...

    assert list(schema_of(fn)["properties"]) == ["zeta", "alpha", "mid"]


def test_parameters_named_like_basemodel_attributes():
    def fn(schema: str, json: int, model_fields: bool = False, copy: str = "c"):
        return schema, json, model_fields, copy

    signature = compile_signature(fn, "fn")
    assert list(signature.input_schema["properties"]) == ["schema", "json", "model_fields", "copy"]
    assert signature.input_schema["required"] == ["schema", "json"]
    assert signature.validate({"schema": "s", "json": 3}) == {
        "schema": "s", "json": 3, "model_fields": False, "copy": "c",
    }


def test_star_args_are_refused():
    def fn(*args: int): ...

    def gn(**kwargs: int): ...

    for bad in (fn, gn):
        with pytest.raises(TypeError, match=r"\*args and \*\*kwargs"):
            compile_signature(bad, "bad")


def test_annotated_field_constraints_and_description_survive():
    def fn(count: Annotated[int, Field(ge=1, description="how many")]): ...

    expected = {"type": "integer", "minimum": 1, "description": "how many"}
    assert schema_of(fn)["properties"]["count"] == expected


def test_docstring_argument_beats_annotated_description():
    def fn(count: Annotated[int, Field(description="from Field")]):
        """Args:
        count: from the docstring
        """

    assert schema_of(fn)["properties"]["count"]["description"] == "from the docstring"


# -- docstrings --------------------------------------------------------------

def documented(city: str, days: int = 3, *, units: str = "metric") -> str:
    """Get the weather forecast.

    Uses the national service.

    Args:
        city (str): Name of the city,
            in English.
        days: How many days
            ahead to look.
        **units: Metric or imperial.

    Returns:
        A forecast, as text.
    """
    return city


def test_google_docstring_gives_description_and_argument_texts():
    description, args = parse_docstring(documented)
    assert description == "Get the weather forecast.\n\nUses the national service."
    assert args == {
        "city": "Name of the city, in English.",
        "days": "How many days ahead to look.",
        "units": "Metric or imperial.",
    }


def test_docstring_texts_land_in_the_schema():
    signature = compile_signature(documented, "documented")
    assert signature.description == "Get the weather forecast.\n\nUses the national service."
    properties = signature.input_schema["properties"]
    assert properties["city"]["description"] == "Name of the city, in English."
    assert properties["days"] == {
        "type": "integer", "default": 3, "description": "How many days ahead to look.",
    }
    assert properties["units"]["description"] == "Metric or imperial."


def test_other_argument_section_names_and_no_docstring():
    def params(a: int):
        """Summary.

        Parameters:
            a: the a
        """

    def bare(a: int): ...

    assert parse_docstring(params) == ("Summary.", {"a": "the a"})
    assert parse_docstring(bare) == (None, {})
    assert "description" not in schema_of(bare)["properties"]["a"]


def test_sections_after_args_do_not_leak_into_arguments():
    def fn(a: int):
        """Do it.

        Args:
            a: the a
        Raises:
            ValueError: never
        """

    assert parse_docstring(fn) == ("Do it.", {"a": "the a"})


# -- the Context parameter ---------------------------------------------------

def ctx_first(ctx: Context, a: int): ...


def ctx_middle(a: int, the_request: Context, b: str = ""): ...


def ctx_optional_last(a: int, c: Optional[Context] = None): ...  # noqa: UP045


def ctx_union(a: int, context: Context | None = None): ...


class MyContext(Context):
    __slots__ = ()


def ctx_subclass(a: int, whatever: MyContext): ...


@pytest.mark.parametrize(("fn", "name"), [
    (ctx_first, "ctx"), (ctx_middle, "the_request"), (ctx_optional_last, "c"),
    (ctx_union, "context"), (ctx_subclass, "whatever"),
])
def test_context_found_by_annotation_and_absent_from_schema(fn, name):
    signature = compile_signature(fn, fn.__name__)
    assert signature.context_parameter == name
    assert name not in signature.input_schema["properties"]
    assert "a" in signature.input_schema["properties"]
    assert name not in [p.name for p in signature.parameters]
    marker = object()
    assert signature.bind({"a": 1}, marker)[name] is marker  # type: ignore[arg-type]


def test_a_parameter_named_ctx_without_annotation_is_an_argument():
    def fn(ctx: str): ...

    signature = compile_signature(fn, "fn")
    assert signature.context_parameter is None
    assert signature.input_schema["properties"] == {"ctx": {"type": "string"}}


# -- validation --------------------------------------------------------------

def typed(color: Color, box: Box, point: Point, when: Literal["now", "later"] = "now", n: float = 0.5):
    return color, box, point, when, n


def test_validate_converts_to_declared_types():
    kwargs = compile_signature(typed, "typed").validate(
        {"color": "green", "box": {"width": 2}, "point": {"x": 1, "y": 2}, "n": 3}
    )
    assert kwargs["color"] is Color.GREEN
    assert kwargs["box"] == Box(width=2, height=1)
    assert isinstance(kwargs["box"], Box)
    assert kwargs["point"] == {"x": 1, "y": 2}
    assert kwargs["when"] == "now"
    assert kwargs["n"] == 3.0
    assert isinstance(kwargs["n"], float)


@pytest.mark.parametrize(("arguments", "fragments"), [
    ({"box": {"width": 1}, "point": {"x": 1, "y": 2}}, ["color", "required"]),
    ({"color": "blue", "box": {"width": 1}, "point": {"x": 1, "y": 2}}, ["color", "'red'", "'green'"]),
    ({"color": "red", "box": {"width": "wide"}, "point": {"x": 1, "y": 2}}, ["box.width", "integer"]),
    ({"color": "red", "box": {"width": 1}, "point": {"x": 1}}, ["point.y", "required"]),
    ({"color": "red", "box": {"width": 1}, "point": {"x": 1, "y": 2}, "extra": 1},
     ["extra", "not permitted"]),
    ({"color": "red", "box": {"width": 1}, "point": {"x": 1, "y": 2}, "when": "soon"}, ["when"]),
])
def test_validate_errors_are_readable(arguments, fragments):
    with pytest.raises(ArgumentError) as caught:
        compile_signature(typed, "typed").validate(arguments)
    text = str(caught.value)
    assert text.startswith("Invalid arguments: ")
    for fragment in fragments:
        assert fragment in text
    assert "Traceback" not in text
    assert "p0" not in text and "p1" not in text  # internal field names never show


def test_validate_reports_every_error():
    def fn(a: int, b: str): ...

    with pytest.raises(ArgumentError) as caught:
        compile_signature(fn, "fn").validate({"a": "x"})
    assert "a: " in str(caught.value)
    assert "b: Field required" in str(caught.value)


def test_strings_are_not_coerced_from_numbers():
    def fn(name: str): ...

    with pytest.raises(ArgumentError, match="name"):
        compile_signature(fn, "fn").validate({"name": 5})


# -- output schemas ----------------------------------------------------------

def returns_point() -> Point: ...


def returns_box() -> Box: ...


def returns_mapping() -> dict[str, int]: ...


def returns_str() -> str: ...


def returns_list() -> list[int]: ...


def returns_nothing(): ...


def returns_tool_result() -> ToolResult: ...


def test_object_return_annotations_give_an_output_schema():
    point = compile_signature(returns_point, "p", output=True).output_schema
    assert point == {
        "type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
        "required": ["x", "y"],
    }
    box = compile_signature(returns_box, "b", output=True).output_schema
    assert box is not None and box["type"] == "object" and box["required"] == ["width"]
    mapping = compile_signature(returns_mapping, "m", output=True).output_schema
    assert mapping == {"type": "object", "additionalProperties": {"type": "integer"}}


@pytest.mark.parametrize("fn", [returns_str, returns_list, returns_nothing, returns_tool_result])
def test_non_object_return_annotations_give_none(fn):
    signature = compile_signature(fn, fn.__name__, output=True)
    assert signature.output_schema is None
    assert signature.output_adapter is None


def test_output_schema_only_when_asked():
    assert compile_signature(returns_point, "p").output_schema is None


# -- hints that cannot become a schema: one line, naming the handler and the parameter --

class Opaque:
    """Not a JSON type, a pydantic model, a TypedDict or a dataclass."""


NO_SCHEMA = ("cannot be described as JSON Schema "
             "(use a JSON type, a pydantic model, a TypedDict or a dataclass)")


@pytest.mark.parametrize(("annotation", "shown"), [
    (Opaque, "Opaque"),
    (list[Opaque], "list[Opaque]"),
    (Optional[Opaque], "Optional[Opaque]"),  # noqa: UP045 (how typing spells it)
    (Opaque | None, "Opaque | None"),
    (Callable[[int], int], "Callable[[int], int]"),  # pydantic validates it, but has no schema for it
])
def test_a_parameter_without_a_schema_is_a_one_line_type_error(annotation, shown):
    def search(query: str, where): ...

    search.__annotations__ = {"query": str, "where": annotation}
    with pytest.raises(TypeError) as raised:
        compile_signature(search, "search", output=True)
    assert str(raised.value) == f"tool 'search': parameter 'where': type {shown} {NO_SCHEMA}"
    assert raised.value.__suppress_context__  # pydantic's paragraphs are not chained on


def test_a_return_type_without_a_schema_is_a_one_line_type_error():
    def lookup(key: str) -> dict[str, Opaque]: ...

    with pytest.raises(TypeError) as raised:
        compile_signature(lookup, "lookup", output=True)
    assert str(raised.value) == f"tool 'lookup': return value: type dict[str, Opaque] {NO_SCHEMA}"


def test_registration_fails_with_the_tool_and_prompt_names():
    from mcp_twisted.server import MCPServer

    def find(thing: Opaque) -> str: ...

    with pytest.raises(TypeError, match=r"^tool 'find': parameter 'thing': type Opaque cannot be described"):
        MCPServer("opaque", "1.0.0").tool()(find)
    with pytest.raises(TypeError, match=r"^prompt 'find': parameter 'thing': type Opaque cannot be"):
        MCPServer("opaque", "1.0.0").prompt()(find)
    with pytest.raises(TypeError, match=r"^resource 'find': parameter 'thing': type Opaque cannot be"):
        MCPServer("opaque", "1.0.0").resource("things://{thing}")(find)


def test_unresolvable_hints_are_a_one_line_type_error():
    def fn(value): ...

    fn.__annotations__ = {"value": "NoSuchType"}  # a string hint naming nothing in scope
    with pytest.raises(TypeError) as raised:
        compile_signature(fn, "fn")
    assert str(raised.value) == ("handler 'fn': cannot resolve its type hints: name 'NoSuchType' is not "
                                 "defined (define the types they name at module level)")


class StdlibTypedDict(typing.TypedDict):
    x: int


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="pydantic accepts typing.TypedDict from 3.12")
def test_stdlib_typeddict_before_312_says_what_to_use():
    def fn(point: StdlibTypedDict): ...

    with pytest.raises(TypeError) as raised:
        compile_signature(fn, "fn", output=True)
    assert str(raised.value) == (
        "tool 'fn': parameter 'point': type StdlibTypedDict cannot be used: Please use "
        "`typing_extensions.TypedDict` instead of `typing.TypedDict` on Python < 3.12.")
