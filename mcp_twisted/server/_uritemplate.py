"""Match URIs against RFC 6570 templates (levels 1 and 2: ``{var}``, ``{+var}``, ``{#var}``).

Servers need the reverse of expansion: given ``users://42/profile`` and
``users://{id}/profile``, find ``id="42"``. The template is compiled to one
anchored regular expression at registration.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

_EXPRESSION = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
# A simple expansion percent-encodes everything outside the unreserved set,
# so an expanded value never holds "/", "?", "#" or ",".
_SIMPLE_VALUE = r"[^/?#,]*"
_RESERVED_VALUE = r".*?"


class URITemplate:
    """A compiled template: ``match(uri)`` gives the variables or ``None``."""

    __slots__ = ("_pattern", "_prefix", "_reserved", "_suffix", "template", "variables")

    def __init__(self, template: str) -> None:
        self.template = template
        self.variables: list[str] = []
        self._reserved: set[str] = set()
        parts: list[str] = []
        position = 0
        for match in _EXPRESSION.finditer(template):
            parts.append(re.escape(template[position:match.start()]))
            position = match.end()
            expression = match.group(1)
            operator = expression[:1] if expression[:1] in "+#" else ""
            name = expression[len(operator):]
            if not _NAME.match(name):
                raise ValueError(
                    f"Unsupported URI template expression {{{expression}}} in {template!r}: "
                    "use {name}, {+name} or {#name}"
                )
            if name in self.variables:
                raise ValueError(f"Variable {name!r} appears twice in {template!r}")
            self.variables.append(name)
            if operator:
                self._reserved.add(name)
            prefix = "#" if operator == "#" else ""
            value = _RESERVED_VALUE if operator else _SIMPLE_VALUE
            parts.append(f"{re.escape(prefix)}(?P<{name}>{value})")
        if not self.variables:
            raise ValueError(f"{template!r} has no variables; register it as a plain resource")
        parts.append(re.escape(template[position:]))
        self._pattern = re.compile("".join(parts) + r"\Z", re.DOTALL)
        # The fixed text around the variables: checked before the regex, so
        # most URIs that cannot match cost no backtracking (several {+var}
        # in a row make a failing match quadratic in the URI's length).
        self._prefix = template[:template.index("{")]
        self._suffix = template[position:]

    @staticmethod
    def is_template(uri: str) -> bool:
        return _EXPRESSION.search(uri) is not None

    def match(self, uri: str) -> dict[str, str] | None:
        if not (uri.startswith(self._prefix) and uri.endswith(self._suffix)):
            return None
        found = self._pattern.match(uri)
        if found is None:
            return None
        variables = {}
        for name, value in found.groupdict().items():
            value = unquote(value)
            # A simple {var} is one path segment: "%2F" must not smuggle in
            # "../../etc/passwd", and an empty segment is no value.
            if name not in self._reserved and ("/" in value or not value):
                return None
            variables[name] = value
        return variables

    def expand(self, **values: str) -> str:
        """The URI for the given values (the inverse of ``match``)."""

        def substitute(match: re.Match[str]) -> str:
            expression = match.group(1)
            operator = expression[:1] if expression[:1] in "+#" else ""
            value = values[expression[len(operator):]]
            safe = ":/?#[]@!$&'()*+,;=" if operator else ""
            return ("#" if operator == "#" else "") + quote(str(value), safe=safe)

        return _EXPRESSION.sub(substitute, self.template)

    def __repr__(self) -> str:
        return f"URITemplate({self.template!r})"
