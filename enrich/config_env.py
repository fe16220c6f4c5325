"""``${VAR}``s in a config, and which of the config's values are secrets: decided here once
(``redact.py`` names the rules), registered with the config's redactor, masked in the request
as it is shown."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .checks import _ENV, _VAR_NAME, _Locator
from .errors import ConfigError
from .redact import MASK, Redactor, secret_name, secret_position


class Env:
    """``${VAR}`` lookups for one config, and which of their values are secrets (``redact.py``
    says which: by the variable's name, by the place it is used, or listed in ``secrets``).
    Each secret is registered with the redactor as it is found."""

    def __init__(self, env: Mapping[str, str], where: _Locator, listed: frozenset[str], redactor: Redactor) -> None:
        self.env, self.where, self.listed, self.redactor = env, where, listed, redactor
        self.found: dict[str, str] = {}  # every variable the config uses that the environment sets

    def lookup(self, match: re.Match[str], path: tuple[str, ...]) -> str:
        name, default = match.group(1), match.group(2)
        found = self.env.get(name)
        if found is None:
            if default is not None:
                return default
            raise ConfigError(
                f"{self.where(*path)} uses ${{{name}}}, but the environment variable {name} is not set. "
                f"Set it (export {name}=...) or give a default with ${{{name}:-value}}."
            )
        self.found[name] = found
        if name in self.listed or secret_name(name) or secret_position(path):
            self.redactor.add(found)
        return found

    def expand(self, value: Any, path: tuple[str, ...] = ()) -> Any:
        """``value`` (a string, or a mapping or list of them) with every ``${VAR}`` put in."""
        if isinstance(value, str):
            return _ENV.sub(lambda m: self.lookup(m, path), value)
        if isinstance(value, dict):
            return {k: self.expand(v, (*path, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(v, (*path, str(i))) for i, v in enumerate(value)]
        return value

    def literal(self, text: str) -> str:
        """A template's literal text with its variables put in (they were looked up by ``expand``)."""
        return _ENV.sub(lambda m: self.env.get(m.group(1), m.group(2) or ""), text)

    def shown(self, text: str) -> str:
        """The same, with each secret variable as ``***``."""

        def value(m: re.Match[str]) -> str:
            found = self.env.get(m.group(1))
            if found is None:
                return m.group(2) or ""
            secret = m.group(1) in self.listed or secret_name(m.group(1)) or found in self.redactor
            return MASK if secret else found

        return _ENV.sub(value, text)


def used_vars(data: Any) -> set[str]:
    """The names of the ``${VAR}``s in ``data`` (every string in it, at any depth)."""
    return {m.group(1) for text in strings(data) for m in _ENV.finditer(text)}


def listed_secrets(data: Mapping[str, Any], where: _Locator) -> frozenset[str]:
    """``secrets: [VAR, ...]``: the ``${VAR}``s to treat as secrets besides those redact.py names;
    each must be a variable the config uses."""
    value = data.get("secrets")
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and _VAR_NAME.match(v) for v in value):
        raise ConfigError(
            f"{where('secrets')} must be a list of environment variable names, e.g. [API_USER], got {value!r}."
        )
    used = used_vars({k: v for k, v in data.items() if k != "secrets"})
    for name in value:
        if name not in used:
            close = difflib.get_close_matches(name, sorted(used), n=1)
            fix = f" Did you mean {close[0]}?" if close else f" The config uses: {', '.join(sorted(used)) or 'none'}."
            raise ConfigError(f"{where('secrets')} lists {name}, which no ${{...}} in the config uses.{fix}")
    return frozenset(value)


# A query parameter of a URL template: `name=value`, up to the next & or #.
_QUERY_PARAM = re.compile(r"(?P<lead>[?&](?P<name>[^=&#]*)=)(?P<value>[^&#]*)")


def masked_request(templates: Mapping[str, Any]) -> dict[str, Any]:
    """The request's templates with every fixed value in a credential's place (a header, query
    parameter or body key named like one) as ``***``; in a value that holds ``${VAR}``s or a
    ``{{column}}`` (the row's data), only the variables are masked."""

    def value(v: Any) -> Any:
        if isinstance(v, str):  # `Bearer ${TOKEN}` -> `Bearer ***`; a fixed key -> `***`
            return _ENV.sub(MASK, v) if "{{" in v or _ENV.search(v) else MASK
        if isinstance(v, dict):
            return {k: value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [value(x) for x in v]
        return v

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: value(x) if secret_name(str(k)) else walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    out = {k: walk(v) if k in ("params", "headers", "body") else v for k, v in templates.items()}
    out["url"] = _QUERY_PARAM.sub(
        lambda m: m.group("lead") + (value(m.group("value")) if secret_name(m.group("name")) else m.group("value")),
        str(templates["url"]),
    )
    return out


def register_fixed_secrets(templates: Mapping[str, Any], redactor: Redactor, literal: Callable[[str], str]) -> None:
    """Register the fixed values (no ``{{column}}``) in a credential's place of the request; a
    ``${VAR}`` there was registered when it was looked up, but in the URL's query."""
    shown = masked_request(templates)

    def pairs(a: Any, b: Any) -> Iterator[tuple[str, str]]:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in a:
                yield from pairs(a[k], b.get(k))
        elif isinstance(a, list) and isinstance(b, list):
            for x, y in zip(a, b, strict=False):
                yield from pairs(x, y)
        elif isinstance(a, str) and b == MASK and "${" not in a:
            yield a, b

    for original, _ in pairs(dict(templates), shown):
        redactor.add(original)
    for m in _QUERY_PARAM.finditer(str(templates["url"])):
        if secret_name(m.group("name")) and "{{" not in m.group("value"):
            redactor.add(literal(m.group("value")))


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
