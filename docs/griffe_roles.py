"""A griffe extension for the API reference (mkdocs.yml): docstrings here are written with
Sphinx cross-reference roles and reST literal blocks; the reference renders them as Markdown.

- ``:class:`~channels.socket.Socket``` becomes ```Socket```, ``:meth:`text <target>``` becomes
  ```text```, any other ``:role:`name``` becomes ```name```;
- a paragraph ending in ``::`` (a reST literal block follows, indented) ends in ``:``;
- an attribute documented by ``#:`` comment lines right above it (Sphinx's convention, used
  for the class attributes in this code) gets them as its docstring.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|data|mod|exc|obj|const):`([^`]+)`")
_LITERAL = re.compile(r"(?<=\S)::$", re.MULTILINE)
_BARE_LITERAL = re.compile(r"^\s*::\s*$", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    text = match.group(1)
    if text.endswith(">") and " <" in text:  # :meth:`text <target>`
        text = text[: text.rindex(" <")]
    elif text.startswith("~"):  # :class:`~a.b.C` shows C
        text = text[1:].rsplit(".", 1)[-1]
    return f"`{text}`"


def to_markdown(text: str) -> str:
    """The docstring ``text`` with Sphinx roles and ``::`` turned into Markdown."""
    text = _ROLE.sub(_role, text)
    text = _BARE_LITERAL.sub("", text)
    return _LITERAL.sub(":", text)


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring once it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        if attr.docstring is not None or attr.lineno is None:
            return
        lines = attr.module.lines
        comments: list[str] = []
        i = attr.lineno - 2  # the line above the attribute
        while i >= 0 and lines[i].lstrip().startswith("#:"):
            comments.insert(0, lines[i].lstrip()[2:].strip())
            i -= 1
        if comments:
            attr.docstring = griffe.Docstring(to_markdown("\n".join(comments)),
                                              lineno=i + 2, endlineno=attr.lineno - 1,
                                              parent=attr)
