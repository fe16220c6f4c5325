"""How a config key is declared: once, as a field of a section, with everything about it.

A *section* is a frozen pydantic model: ``Config`` (the top level), ``RequestConfig``,
``RetryConfig``, ``TLSConfig``, ``SharedRate``, ``RefreshOn`` and one class per kind of auth.
Its fields with a description are its keys, in the order messages list them; a key's
``Annotated`` metadata says how its value is parsed (one validator, the only copy of that
parsing) and what the editor schema says of it (``enrich schema``, the docs' reference)::

    concurrency: Annotated[int, number(minimum=1, maximum=MAX_CONCURRENCY), about("Requests in flight.")] = 16
    url: Annotated[str, Parsed(_url, {"type": "string"}, missing="`auth.url` is missing; ..."), about(...)] = NEEDED

Keys are checked in that order; the first wrong one is the one the message names. A field
without a description is *derived*: set by the loader (a compiled path, the request
as shown), never read from the file. Loading runs ``Config.model_validate(data, context=Load(...))``:
the context knows the file's lines (so a message says "demo.yaml, line 3: concurrency"), the
``${VAR}``s and the redactor. A validator raises ``ConfigError`` with the message the user sees;
what pydantic finds itself is put in our words by ``translate``. Built from Python
(``RetryConfig(attempts=3)``), without a context, a section takes its values as given.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import core_schema

from .checks import ENV_TEXT, METHODS, _check_keys, _Locator, _method, _number
from .errors import ConfigError, Where
from .redact import Redactor

Schema = dict[str, Any]


class Load:
    """What validating one config needs besides its data: the validation's context."""

    def __init__(self, where: _Locator, redactor: Redactor, env: Mapping[str, str]) -> None:
        self.where = where
        self.redactor = redactor
        self.env = env
        self.raw: Mapping[str, Any] = {}  # the config before ${VAR} expansion: auth messages name the variable
        self.data: Mapping[str, Any] = {}  # the config after it
        self.vars: Any = None  # config_env.Env: the ${VAR} lookups, once `secrets` is known
        self.literal: Callable[[str], str] = str  # how a request template's literal text gets its ${VAR}s
        self.sections: list[tuple[str, ...]] = [()]  # the path of the section being validated
        self.given: list[frozenset[str]] = [frozenset()]  # the keys it was given
        self.fields: Mapping[str, Any] = {}  # its keys validated so far (a key may depend on an earlier one)
        self.pending: Any = None  # what a section's prepare leaves for its finish

    def at(self, *keys: str) -> Where:
        """Where a key of the current section is: ``demo.yaml, line 14: request.url``."""
        return self.where(*self.sections[-1], *keys)


@dataclass(frozen=True)
class Parsed:
    """A key's validator and the schema of what the file may hold there, as one ``Annotated`` item.

    ``parse(value, where)`` (or ``parse(value, where, load)``) returns the loaded value or raises
    ``ConfigError``. ``schema`` is what an editor checks while you type; the field's description
    and default are added to it.
    """

    parse: Callable[..., Any]
    schema: Schema | Callable[[], Schema] = field(default_factory=dict)
    load: bool = False  # the parser needs the Load (the redactor, the ${VAR}s)
    missing: str = ""  # the key must be given; what to say when it is not
    blank_is_missing: bool = False  # "" counts as not given

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.with_info_plain_validator_function(self._validate)

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Schema:
        return dict(self.schema() if callable(self.schema) else self.schema)

    def _validate(self, value: Any, info: ValidationInfo) -> Any:
        load = info.context
        if not isinstance(load, Load):
            return value  # built from Python: the values are what they should be
        if self.missing and (value is None or (self.blank_is_missing and not value)):
            raise ConfigError(f"{load.where(*load.sections[-1])}: {self.missing}")
        load.fields = info.data
        where = load.at(info.field_name or "")
        return self.parse(value, where, load) if self.load else self.parse(value, where)


def about(description: str, **schema: Any) -> Any:
    """A key: its description, and schema keywords to add (``examples``, a ``default`` as written)."""
    return Field(description=description, json_schema_extra=schema or None)


# The default of a key that must be given: its validator still runs (in the order of the keys),
# and says it is missing. In the schema the key is required.
NEEDED: Any = Field(default=None, validate_default=True)


def derived(**kwargs: Any) -> Any:
    """A field the loader sets (never a key of the file): left out of keys, schema and repr."""
    return Field(repr=False, **kwargs)


T = TypeVar("T")
Derived = Annotated[T, SkipJsonSchema()]  # the type of a derived field: `x: Derived[str] = derived(default="")`


class Section(BaseModel):
    """A block of keys (a frozen model). ``PATH`` is where it sits in the file.

    ``prepare`` sees the block as written (check its keys, what each key needs of the others)
    and ``finish`` the validated section (checks across keys, derived fields); both run only
    when loading.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        arbitrary_types_allowed=True,
        validate_default=False,
        defer_build=True,
        json_schema_extra=lambda schema, cls: _required(schema, cls),
    )
    PATH: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Validate the keys in the order they are declared as keys, then the derived fields: a kind of
        auth checks its own keys in its own order, though its base declares some of their names first
        (pydantic keeps a base's order). The first key that is wrong is the one the message names."""
        super().__pydantic_init_subclass__(**kwargs)
        fields, keys = cls.__pydantic_fields__, cls.key_names()
        cls.__pydantic_fields__ = {**{k: fields[k] for k in keys}, **{k: f for k, f in fields.items() if k not in keys}}

    @classmethod
    def key_names(cls) -> tuple[str, ...]:
        """The section's keys, in the order they are declared (and listed in messages).

        A key is placed where it is declared as a key: a kind of auth that takes ``header``
        lists it among its own keys, though its base declares ``header`` as a derived field."""
        fields = cls.model_fields
        declared: dict[str, type] = {}
        for c in cls.__mro__:  # the most derived declaration of each name
            for name in inspect.get_annotations(c):
                declared.setdefault(name, c)
        return tuple(
            name
            for c in reversed(cls.__mro__)
            for name in inspect.get_annotations(c)
            if declared[name] is c and name in fields and fields[name].description
        )

    @classmethod
    def needed(cls) -> Iterator[tuple[str, Parsed]]:
        """The keys that must be given, each with what to say when it is not."""
        for name in cls.key_names():
            parsed = next((m for m in cls.model_fields[name].metadata if isinstance(m, Parsed)), None)
            if parsed is not None and parsed.missing:
                yield name, parsed

    @classmethod
    def prepare(cls, data: Any, load: Load) -> Any:
        return _check_keys(data, cls.key_names(), load.where, cls.PATH)

    def finish(self, load: Load) -> Section:
        return self

    def derive(self, **values: Any) -> Any:
        """The same section with derived fields set (no validation: the loader computed them)."""
        return self.model_copy(update=values)

    @model_validator(mode="wrap")
    @classmethod
    def _load(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        load = info.context
        if not isinstance(load, Load) or isinstance(data, cls):
            return handler(data)
        load.sections.append(cls.PATH)
        load.given.append(frozenset(data) if isinstance(data, dict) else frozenset())
        try:
            return handler(cls.prepare(data, load)).finish(load)
        finally:
            load.sections.pop()
            load.given.pop()


# --- kinds of value the sections share -------------------------------------------------------

# What the schema lets through as text: numbers from ${VAR} or a flag arrive as text.
_INTEGER_TEXT = rf"^\s*\+?\d+\s*$|{ENV_TEXT}"
_NUMBER_TEXT = rf"^\s*\+?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$|{ENV_TEXT}"
NOT_BLANK = r"\S"


def number(*, minimum: float, maximum: float | None = None, integer: bool = False, what: str = "") -> Parsed:
    """A whole number or a number of seconds (``what`` says which), from at least ``minimum``."""
    what = what or ("a whole number" if integer else "a number of seconds")

    def parse(value: Any, where: str) -> Any:
        n = _number(value, where, minimum=minimum, maximum=maximum, integer=integer, what=what)
        return int(n) if integer else float(n)

    schema: Schema = {
        "type": ["integer" if integer else "number", "string"],
        "minimum": minimum,
        "pattern": _INTEGER_TEXT if integer else _NUMBER_TEXT,
    }
    return Parsed(parse, schema if maximum is None else {**schema, "maximum": maximum})


CREDITS = number(minimum=0, what="a number of credits")  # a step's `cost`, `max_cost`


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}.")
    return value


FLAG = Parsed(_flag, {"type": "boolean"})


def http_method(default: str) -> Parsed:
    """An HTTP method, in any case."""
    # The enum offers the two cases that people write.
    return Parsed(
        lambda value, where: _method(value, where, default), {"enum": [*METHODS, *(m.lower() for m in METHODS)]}
    )


def _required(schema: Schema, section: Any) -> None:
    """The keys that must be given are required in the schema (their default only says "missing")."""
    needed = [name for name, _ in section.needed()]
    if needed:
        schema["required"] = needed


def validate(section: type[Section], data: Any, load: Load) -> Any:
    """``section.model_validate`` with the project's messages: a ``ConfigError`` saying where."""
    try:
        return section.model_validate(data, context=load)
    except ValidationError as exc:
        raise translate(exc, load) from None


def translate(exc: ValidationError, load: Load) -> ConfigError:
    """pydantic's first error in our words: where, what was received, what is allowed."""
    error = exc.errors(include_url=False)[0]
    path = tuple(str(p) for p in error["loc"] if not isinstance(p, int))
    where = load.where(*path) if path else load.where.source
    got = error.get("input")
    if error["type"] == "missing":
        return ConfigError(f"{load.where(*path[:-1])}: `{'.'.join(path)}` is missing.")
    if error["type"] in ("model_type", "model_attributes_type", "dict_type", "union_tag_not_found"):
        return ConfigError(f"{where}: {'.'.join(path)} must be a mapping of keys, got {got!r}.")
    if error["type"] == "extra_forbidden":
        return ConfigError(f"{where} is not a known key.")
    return ConfigError(f"{where}: {error['msg']}, got {got!r}.")


def did_you_mean(word: str, choices: tuple[str, ...]) -> str | None:
    """The choice closest to ``word``, or one it starts (``oauth`` -> ``oauth2_client_credentials``)."""
    close = difflib.get_close_matches(word, choices, n=1) or [c for c in choices if word and c.startswith(word.lower())]
    return close[0] if close else None
