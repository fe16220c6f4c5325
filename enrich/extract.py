"""Compile field paths once; pull column values out of JSON responses.

Two kinds of path:

- dot paths: ``person.employment.title``, ``person.emails[0]``, ``person.emails.0``,
  ``items[-1].id``, ``data["odd key"]``. A missing step gives ``None``, never an error.
- JSONPath, any path starting with ``$`` (jsonpath-ng, with filters): ``$.person.tags[*]``.
  It yields the list of all matches (``[]`` when nothing matches).

    >>> f = compile_fields("person.name, person.emails[0]", "fields")
    >>> [p.name for p in f]
    ['person.name', 'person.emails[0]']
    >>> f[1].get({"person": {"emails": ["a@x.io", "b@x.io"]}})
    'a@x.io'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, child_of

Getter = Callable[[Any], Any]

_TOKEN = re.compile(
    r"""
    \[\s*(?P<index>-?\d+)\s*\]            # [0], [-1]
  | \[\s*(?P<q>["'])(?P<quoted>.*?)(?P=q)\s*\]   # ["odd key"]
  | (?P<name>[^.\[\]]+)                   # plain key (digits index a list)
  | (?P<dot>\.)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class FieldPath:
    """One output column: its name, the path it was written as, and a compiled getter."""

    name: str
    path: str
    get: Getter


def _dot_steps(path: str, where: str) -> list[str | int]:
    steps: list[str | int] = []
    pos = 0
    expect_key = True
    while pos < len(path):
        match = _TOKEN.match(path, pos)
        if match is None:
            raise ConfigError(f"{where}: cannot read the path {path!r} at position {pos}.")
        if match.group("dot"):
            if expect_key:
                raise ConfigError(f"{where}: the path {path!r} has an empty step (`..` or a leading `.`).")
            expect_key = True
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
            expect_key = False
        elif match.group("quoted") is not None:
            steps.append(match.group("quoted"))
            expect_key = False
        else:
            name = match.group("name").strip()
            steps.append(int(name) if name.lstrip("-").isdigit() else name)
            expect_key = False
        pos = match.end()
    if not steps or expect_key:
        raise ConfigError(f"{where}: the path {path!r} is empty or ends with `.`.")
    return steps


def _dot_getter(steps: list[str | int]) -> Getter:
    def get(doc: Any) -> Any:
        cur = doc
        for step in steps:
            if isinstance(cur, dict):
                cur = cur.get(step if isinstance(step, str) else str(step))
            elif isinstance(cur, list) and isinstance(step, int):
                if -len(cur) <= step < len(cur):
                    cur = cur[step]
                else:
                    return None
            else:
                return None
            if cur is None:
                return None
        return cur

    return get


def _jsonpath_getter(path: str, where: str) -> Getter:
    from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
    from jsonpath_ng.ext import parse

    try:
        expr = parse(path)
    except (JsonPathLexerError, JsonPathParserError, Exception) as exc:  # jsonpath-ng raises bare Exception too
        raise ConfigError(f"{where}: {path!r} is not a valid JSONPath ({exc}).") from None
    return lambda doc: [m.value for m in expr.find(doc)]


def compile_path(path: str, where: str) -> Getter:
    """Compile one path: JSONPath when it starts with ``$``, a dot path otherwise."""
    path = path.strip()
    if not path:
        raise ConfigError(f"{where}: a field path is empty.")
    if path.startswith("$"):
        return _jsonpath_getter(path, where)
    return _dot_getter(_dot_steps(path, where))


def compile_fields(spec: Any, where: str = "fields") -> tuple[FieldPath, ...]:
    """Compile ``fields``: a comma-separated string, a list of paths, or a mapping name -> path."""
    if isinstance(spec, str):
        pairs = [(p.strip(), p.strip()) for p in _split_commas(spec)]
    elif isinstance(spec, list):
        if not all(isinstance(p, str) for p in spec):
            raise ConfigError(f"{where}: a list of fields must hold path strings only.")
        pairs = [(p.strip(), p.strip()) for p in spec]
    elif isinstance(spec, Mapping):
        pairs = []
        for name, path in spec.items():
            if not isinstance(path, str):
                raise ConfigError(f"{child_of(where, name)}: expected a path string like `person.name`, got {path!r}.")
            pairs.append((str(name), path.strip()))
    else:
        raise ConfigError(
            f"{where}: expected a comma-separated string, a list or a mapping of column: path, "
            f"got {type(spec).__name__}."
        )
    if not pairs:
        raise ConfigError(f"{where}: no field paths given; leave `fields` out to keep the whole response.")
    seen: set[str] = set()
    out = []
    for name, path in pairs:
        if name in seen:
            raise ConfigError(f"{where}: the column {name!r} is named twice.")
        seen.add(name)
        out.append(FieldPath(name, path, compile_path(path, child_of(where, name) if name != path else where)))
    return tuple(out)


def _split_commas(spec: str) -> list[str]:
    """Split on commas that are not inside brackets or quotes (``$..a[1,2]`` stays whole)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(spec):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    return [p for p in parts if p.strip()]
