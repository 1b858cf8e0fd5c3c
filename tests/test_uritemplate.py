"""Unit tests for the RFC 6570 (levels 1-2) matcher behind resource templates."""

import pytest

from mcp_twisted.server._uritemplate import URITemplate


def test_simple_variable_matches_one_segment():
    template = URITemplate("users://{user_id}/profile")
    assert template.variables == ["user_id"]
    assert template.match("users://42/profile") == {"user_id": "42"}
    assert template.match("users://42/settings") is None
    assert template.match("users://4/2/profile") is None  # a simple value never holds "/"
    assert template.match("users://42/profile/extra") is None  # anchored at the end
    assert template.match("xusers://42/profile") is None  # anchored at the start


def test_several_variables_and_literal_regex_characters():
    template = URITemplate("db://{schema}.{table}/rows?{x}")
    assert template.variables == ["schema", "table", "x"]
    assert template.match("db://public.users/rows?1") == {"schema": "public", "table": "users", "x": "1"}
    # "." and "?" in the literal part are not regex metacharacters.
    assert template.match("db://publicXusers/rows?1") is None
    assert template.match("db://public.users/rowsX1") is None


def test_simple_values_are_percent_decoded():
    template = URITemplate("users://{name}/profile")
    assert template.match("users://J%C3%BCrgen%20K%C3%B6/profile") == {"name": "Jürgen Kö"}


def test_a_simple_value_is_one_non_empty_segment_even_when_encoded():
    """%2F must not smuggle a path ("../../etc/passwd") into a one-segment variable."""
    template = URITemplate("file:///srv/docs/{name}")
    assert template.match("file:///srv/docs/..%2F..%2Fetc%2Fpasswd") is None
    assert template.match("file:///srv/docs/") is None
    assert URITemplate("file:///srv/{+path}").match("file:///srv/a%2Fb") == {"path": "a/b"}


def test_simple_value_stops_at_reserved_separators():
    template = URITemplate("search://{q}")
    for uri in ("search://a?b", "search://a#b", "search://a,b"):
        assert template.match(uri) is None, uri


def test_reserved_expansion_spans_slashes():
    template = URITemplate("file:///{+path}")
    assert template.match("file:///etc/hosts") == {"path": "etc/hosts"}
    assert template.match("file:///a%20b/c.txt") == {"path": "a b/c.txt"}


def test_reserved_variable_followed_by_literal():
    template = URITemplate("repo://{owner}/{+path}/raw")
    assert template.match("repo://me/src/a/b.py/raw") == {"owner": "me", "path": "src/a/b.py"}
    assert template.match("repo://me/src/a/b.py") is None


def test_fragment_expansion_expects_hash():
    template = URITemplate("doc://page{#section}")
    assert template.match("doc://page#intro/part") == {"section": "intro/part"}
    assert template.match("doc://pageintro") is None


def test_expand_is_the_inverse_of_match():
    template = URITemplate("users://{name}/files/{+path}")
    uri = template.expand(name="a b,c", path="x/y z.txt")
    assert uri == "users://a%20b%2Cc/files/x/y%20z.txt"
    assert template.match(uri) == {"name": "a b,c", "path": "x/y z.txt"}


def test_expand_converts_values_to_strings():
    assert URITemplate("users://{id}/profile").expand(id=7) == "users://7/profile"  # type: ignore[arg-type]


def test_expand_fragment():
    assert URITemplate("doc://page{#section}").expand(section="a/b") == "doc://page#a/b"


def test_is_template():
    assert URITemplate.is_template("users://{id}")
    assert not URITemplate.is_template("config://app")


@pytest.mark.parametrize("template", [
    "search://{?q}",  # query expansion (level 3)
    "path://{/segments}",  # path segment expansion
    "list://{a,b}",  # several variables in one expression
    "short://{name:3}",  # prefix modifier (level 4)
    "explode://{list*}",  # explode modifier (level 4)
    "label://{.ext}",  # label expansion
    "empty://{}",
    "dash://{bad-name}",
])
def test_unsupported_expressions_raise_value_error(template):
    with pytest.raises(ValueError, match="Unsupported URI template expression"):
        URITemplate(template)


def test_repeated_variable_raises():
    with pytest.raises(ValueError, match="appears twice"):
        URITemplate("x://{a}/{a}")


def test_template_without_variables_raises():
    with pytest.raises(ValueError, match="no variables"):
        URITemplate("config://app")


class _NoRegex:
    def match(self, uri: str) -> None:
        raise AssertionError("the regex ran on a URI whose fixed text cannot match")


@pytest.mark.parametrize("uri", [
    "files://" + "a/" * 4000,  # no ".json" at the end
    "other://a/b.json",  # another scheme
])
def test_uris_whose_fixed_text_differs_never_reach_the_regex(uri):
    # Several {+var} in a row make a failing regex match quadratic in the
    # URI's length; the prefix and suffix checks turn most of those away first.
    template = URITemplate("files://{+a}/{+b}.json")
    template._pattern = _NoRegex()  # type: ignore[assignment]
    assert template.match(uri) is None


def test_prefix_and_suffix_checks_keep_matches():
    template = URITemplate("files://{+a}/{+b}.json")
    assert template.match("files://x/y/z.json") == {"a": "x", "b": "y/z"}
    assert URITemplate("{+path}").match("anything") == {"path": "anything"}
    assert URITemplate("docs://{#section}").match("docs://#intro") == {"section": "intro"}
