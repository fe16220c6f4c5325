"""Small validators shared by the config's sections (``config.py`` and ``auth_config.py``).

Each takes a value and where it came from, and returns it typed or raises ``ConfigError``
saying where, what was received and what is allowed. ``_Locator`` is the "where": it
turns a key path into the place a user finds in the file.

    >>> where = _Locator("demo.yaml", {("request",): 3})
    >>> where("request", "method")
    'demo.yaml, line 3: request.method'
    >>> _method("post", where("request", "method"), "GET"), _number("16", where("concurrency"), minimum=1)
    ('POST', 16)
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
from pathlib import Path
from typing import Any

from .errors import ConfigError, Where

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # an environment variable's name
_ENV = re.compile(r"\$\{(" + _VAR_NAME.pattern[1:-1] + r")(?::-([^}]*))?\}")  # ${VAR} or ${VAR:-default}
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)


def json_pattern(regex: re.Pattern[str]) -> str:
    r"""The loader's regex as a JSON Schema pattern (ECMA 262, which takes no flags): named groups
    unnamed, and under ``re.IGNORECASE`` each letter as both cases.

    >>> print(json_pattern(re.compile(r"^(?P<n>\d+)\s*[kmg]b$", re.IGNORECASE)))
    ^(\d+)\s*[kmgKMG][bB]$
    """
    text, fold, out, i = regex.pattern, bool(regex.flags & re.IGNORECASE), [], 0
    while i < len(text):
        if text[i] == "\\":
            out.append(text[i : i + 2])
            i += 2
        elif text.startswith("(?P<", i):
            out.append("(")
            i = text.index(">", i) + 1
        elif text[i] == "[":  # a class: its letters get their other case (no ranges of letters are folded)
            end = i + 1
            while text[end] != "]":
                end += 2 if text[end] == "\\" else 1
            chars = text[i + 1 : end]
            if fold:
                chars += "".join(c.swapcase() for c in chars if c.isalpha() and c.swapcase() not in chars)
            out.append(f"[{chars}]")
            i = end + 1
        else:
            out.append(f"[{text[i]}{text[i].swapcase()}]" if fold and text[i].isalpha() else text[i])
            i += 1
    return "".join(out)


ENV_TEXT = json_pattern(_ENV)  # a value that is a ${VAR}: the schema cannot know what it holds


class _Locator:
    """Turns a key path like ("request", "url") into "demo.yaml, line 14: request.url"."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]) -> None:
        self.source = source
        self.lines = lines
        self.overridden: set[tuple[str, ...]] = set()

    def __call__(self, *path: str) -> Where:
        return Where(self._text(path), child=lambda key: self(*path, key))

    def _text(self, path: tuple[str, ...]) -> str:
        key = "".join(f"[{p}]" if p.isdigit() and n else f".{p}" if n else p for n, p in enumerate(path))
        if path in self.overridden:
            return f"--{key.replace('_', '-')}"
        for depth in range(len(path), 0, -1):
            line = self.lines.get(path[:depth])
            if line is not None:
                return f"{self.source}, line {line}: {key}"
        return f"{self.source}: {key}"


def _check_keys(data: Any, allowed: tuple[str, ...], where: _Locator, path: tuple[str, ...]) -> dict[str, Any]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        name = ".".join(path) or "the config"
        raise ConfigError(f"{where(*path) if path else where.source}: {name} must be a mapping of keys, got {data!r}.")
    for key in data:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            fix = f"Did you mean `{hint[0]}`?" if hint else f"Allowed keys: {', '.join(allowed)}."
            raise ConfigError(f"{where(*path, str(key))} is not a known key. {fix}")
    return data


def _str(
    data: dict[str, Any], key: str, where: _Locator, path: tuple[str, ...], default: str | None = None
) -> str | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where(*path, key)} must be a string, got {value!r}.")
    return str(value)


def _method(value: Any, loc: str, default: str) -> str:
    method = str(value or default).upper()
    if method not in METHODS:
        raise ConfigError(f"{loc}: {value!r} is not an HTTP method. Use one of: {', '.join(METHODS)}.")
    return method


def _number(
    value: Any,
    loc: str,
    *,
    minimum: float,
    maximum: float | None = None,
    integer: bool = False,
    what: str = "a number",
) -> Any:
    """A finite number of at least ``minimum`` (and at most ``maximum``): ``.nan`` and ``.inf``
    are refused, since no setting means "no limit" by them (a NaN timeout would mean none)."""
    if isinstance(value, str):  # from ${VAR} or the command line: numbers arrive as text
        with contextlib.suppress(ValueError):
            value = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{loc} must be {what}, got {value!r}.")
    if not math.isfinite(value):
        raise ConfigError(f"{loc} must be {what}, got {value!r}, which is not a finite number.")
    if value < minimum:
        raise ConfigError(f"{loc} must be at least {minimum:g}, got {value!r}.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{loc} must be at most {maximum:,g}, got {value!r}.")
    return value


def _string_map(value: Any, loc: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{loc} must be a mapping of name: value, got {value!r}.")
    return {str(k): v for k, v in value.items()}


def _path(value: Any, loc: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{loc} must be a file path such as out/failed.csv, got {value!r}.")
    return Path(value)


def _check_url(url: str, loc: str, allow_template_base: bool = False) -> None:
    from yarl import URL

    if allow_template_base and "://" not in url:
        return  # the base URL comes from a column; checked per row
    try:
        parsed = URL(url, encoded=True)
    except ValueError as exc:
        raise ConfigError(f"{loc}: {url!r} is not a valid URL ({exc}).") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(
            f"{loc}: {url!r} is not an http(s) URL. Write it in full, like https://api.example.com/v1/..."
        )
