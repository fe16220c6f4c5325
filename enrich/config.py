"""YAML config -> validated, frozen ``Config``.

Everything a run needs is checked here, before any request: unknown keys (with a
"did you mean"), types, ``${VAR}`` lookups, templates and field paths (compiled
once). Errors name the file, the line and the key, and say what would fix them.

    >>> cfg = load_config("configs/demo.yaml")          # doctest: +SKIP
    >>> cfg.request.method, cfg.concurrency             # doctest: +SKIP
    ('GET', 16)

The secrets among the config's values (``redact.py`` says which) are registered with the
config's ``Redactor``, and ``repr(config)`` never shows them; the request is compiled
twice, as sent and as shown (each secret as ``***``). The ``auth:`` block is parsed in
``auth_config.py``, and the small validators both loaders share are in ``checks.py``;
their public names are importable from here too.
"""

from __future__ import annotations

import difflib
import os
import random
import re
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .auth_config import (
    AUTH_KEYS,
    AUTH_TYPE_KEYS,
    AUTH_TYPES,
    SIGNING_ALGORITHMS,
    STATIC_AUTH_TYPES,
    AuthConfig,
    RefreshOn,
    _auth,
    client_basic,
)
from .checks import _ENV, _HEADER_NAME, METHODS, _check_keys, _check_url, _Locator, _method, _number, _path, _string_map
from .errors import ConfigError
from .extract import FieldPath, compile_fields
from .redact import MASK, Redactor, secret_name, secret_position
from .template import Template, compile_json_text, compile_template, compile_url, json_body

# The auth config's public names and METHODS are re-exported: callers import every config name from here.
__all__ = [
    "ATTEMPTS_COLUMN",
    "AUTH_KEYS",
    "AUTH_TYPES",
    "AUTH_TYPE_KEYS",
    "ERRORS_COLUMNS",
    "ERROR_COLUMN",
    "INPUT_TYPES",
    "LATENCY_COLUMN",
    "MAX_ATTEMPTS",
    "MAX_CONCURRENCY",
    "MAX_RESPONSE_BYTES",
    "METHODS",
    "REQUEST_COLUMNS",
    "REQUEST_KEYS",
    "RESPONSE_COLUMN",
    "RETRY_KEYS",
    "ROW_COLUMN",
    "SIGNING_ALGORITHMS",
    "STATIC_AUTH_TYPES",
    "STATUS_COLUMN",
    "TLS_KEYS",
    "TOP_KEYS",
    "AuthConfig",
    "Config",
    "Rate",
    "RefreshOn",
    "RequestConfig",
    "RetryConfig",
    "TLSConfig",
    "client_basic",
    "config_from_dict",
    "format_size",
    "load_config",
    "parse_duration",
    "parse_rate",
    "parse_size",
]

INPUT_TYPES = ("str", "int", "float", "bool")
RESPONSE_COLUMN = "response"
MAX_RESPONSE_BYTES = 10 * 1024 * 1024
# More workers than this only hold memory and file descriptors: no API answers 10,000 calls at
# once from one process (shard the run instead).
MAX_CONCURRENCY = 10_000
MAX_ATTEMPTS = 100
STATUS_COLUMN = "_http_status"
ERROR_COLUMN = "_error"
ATTEMPTS_COLUMN = "_attempts"  # diagnostics: HTTP attempts the row's call took
LATENCY_COLUMN = "_latency_ms"  # diagnostics: the last attempt's time to the full response
ROW_COLUMN = "_row"  # the input row number, in shard outputs (so `enrich merge` can restore order)
# The errors file (`errors_out`): the row number, the columns the request reads, then these.
REQUEST_COLUMNS = ("_request_method", "_request_url", "_request_headers", "_request_body")
ERRORS_COLUMNS = (ROW_COLUMN, *REQUEST_COLUMNS, STATUS_COLUMN, ERROR_COLUMN, ATTEMPTS_COLUMN)
_RATE = re.compile(
    # The unit is optional: a bare number is per second (`--rate-limit 20` and `${RATE}` give text).
    r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?:(?:/|per)\s*(?P<unit>s|sec|second|m|min|minute|h|hr|hour)s?)?\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hr": 3600, "hour": 3600}


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``period`` seconds, e.g. ``Rate(20, 1)`` for ``20/s``; with ``shared``
    (a Redis URL) one limit for every process using the same Redis and ``key``."""

    count: float
    period: float
    burst: int = 0  # starts allowed ahead of the pace (shared limits)
    shared: str | None = field(default=None, repr=False)  # redis://host:port/db (may hold a password)
    key: str = "enrich"

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = {1: "s", 60: "min", 3600: "h"}.get(int(self.period), f"{self.period}s")
        text = f"{self.count:g}/{unit}"
        if self.burst:
            text += f", burst {self.burst}"
        return text + (f", shared in Redis (key {self.key})" if self.shared else "")


@dataclass(frozen=True, slots=True)
class RequestConfig:
    """How each row becomes a request; every part is a compiled template."""

    method: str
    url: Template
    params: Template | None
    headers: Template | None
    body: Template | None
    remove_nulls: bool
    follow_redirects: bool = True  # within the API's origin only; false: a 3xx ends the row
    idempotency_key: Template | None = None  # sent as `idempotency_header`; makes POST/PATCH safe to retry
    idempotency_header: str = "Idempotency-Key"
    # The same request with each secret it holds replaced by `***` (redact.py says which): what a
    # dry run, preview and the errors file show. None: the request holds no secret.
    shown: RequestConfig | None = field(default=None, repr=False, compare=False)
    # What the journal's fingerprint is made of: the shown request, with the `${VAR}`s of the URL's
    # origin (`${API_BASE}/v1/...`, `https://${HOST}/...`) masked too, so a rotated key or an API
    # that moved keeps the journal; every other value is the request's own. None: the request itself.
    fingerprinted: RequestConfig | None = field(default=None, repr=False, compare=False)
    url_text: str = ""  # the URL as written, ${VAR}s put in (secrets as ***), for `validate`

    @property
    def for_display(self) -> RequestConfig:
        """The request to render for showing it: secrets masked where they were put."""
        return self.shown or self


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """When and how long to retry a call."""

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    max_retry_after: float = 300.0  # a longer Retry-After stops the run (resumable) instead of sleeping
    non_idempotent: bool = False  # retry POST/PATCH after a 5xx, a timeout or a dropped connection too

    def backoff_for(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, full jitter."""
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """How the API's certificate is checked, and the client certificate to present (mutual TLS)."""

    verify: bool = True
    ca_bundle: Path | None = None  # PEM file of the CAs to trust instead of the system's
    client_cert: Path | None = None  # PEM certificate (it may hold the key too)
    client_key: Path | None = None

    @property
    def is_default(self) -> bool:
        return self == TLSConfig()

    def context(self, where: Callable[[str], str] = "tls.{}".format) -> ssl.SSLContext | bool:
        """The SSL context for the session's connector (``True``: aiohttp's default, verified).
        Raises ``ConfigError`` naming the key (``where(key)``) when a file is not what it should be."""
        if self.is_default:
            return True
        try:
            ctx = ssl.create_default_context(cafile=self.ca_bundle)
        except OSError as exc:
            raise ConfigError(
                f"{where('ca_bundle')}: {self.ca_bundle} is not a PEM file of CA certificates ({_ssl_reason(exc)})."
            ) from None
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            asked: list[bool] = []

            def no_password() -> bytes:  # never let OpenSSL prompt on the terminal of a scheduled job
                asked.append(True)
                return b""

            try:
                ctx.load_cert_chain(self.client_cert, self.client_key, password=no_password)
            except OSError as exc:
                if asked:
                    raise ConfigError(
                        f"{where('client_key' if self.client_key else 'client_cert')}: "
                        f"{self.client_key or self.client_cert} holds an encrypted key; give enrich the key unencrypted "
                        "(`openssl pkey -in key.pem -out plain.pem`) and keep the file private."
                    ) from None
                key = f"the key in {self.client_key}" if self.client_key else "a key in the same file"
                raise ConfigError(
                    f"{where('client_cert')}: {self.client_cert} and {key} are not a PEM certificate and its "
                    f"private key ({_ssl_reason(exc)})."
                ) from None
        return ctx


def _ssl_reason(exc: OSError) -> str:
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", exc.strerror or str(exc)) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, validated run configuration."""

    request: RequestConfig
    auth: AuthConfig | None = None
    input: Path | None = None
    output: Path | None = None
    fields: tuple[FieldPath, ...] | None = None
    concurrency: int = 16
    rate_limit: Rate | None = None
    retry: RetryConfig = field(default_factory=RetryConfig)
    timeout: float = 30.0
    input_types: Mapping[str, str] = field(default_factory=dict)
    key: tuple[str, ...] = ()  # columns that identify a row, for --shard (default: the rendered request)
    journal: Path | str | None = None  # None: beside the output, `<output>.journal`; str: a redis:// URL
    use_journal: bool = True
    when: str | None = None  # a polars SQL predicate: rows that do not match get no call
    skip_if_filled: tuple[str, ...] = ()  # rows whose listed columns all hold values get no call
    diagnostics: bool = True  # the `_attempts` and `_latency_ms` columns
    max_error_rate: float | None = None  # a larger share of failed rows makes the run exit 1
    errors_out: Path | None = None  # failed rows, with their request, go to this table
    escape_formulas: bool = True  # CSV output: API values that Excel would run as formulas get a '
    tls: TLSConfig = field(default_factory=TLSConfig)
    max_response_bytes: int = MAX_RESPONSE_BYTES  # a larger response is cut off and fails its row
    warnings: tuple[str, ...] = field(default=(), compare=False)  # found at load time; the CLI shows them
    source: str = "<config>"
    redactor: Redactor = field(default_factory=Redactor, compare=False)
    # Where each template came from, for errors found once the input is known.
    template_sites: tuple[tuple[str, Template], ...] = field(default=(), repr=False, compare=False)

    def __repr__(self) -> str:
        parts = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        return self.redactor.redact(f"Config({parts})")

    @property
    def field_columns(self) -> tuple[str, ...]:
        """The columns of extracted values, in order."""
        return tuple(f.name for f in self.fields) if self.fields else (RESPONSE_COLUMN,)

    @property
    def output_columns(self) -> tuple[str, ...]:
        """The columns the run adds to the table, in order."""
        diagnostics = (ATTEMPTS_COLUMN, LATENCY_COLUMN) if self.diagnostics else ()
        return (*self.field_columns, STATUS_COLUMN, ERROR_COLUMN, *diagnostics)

    @property
    def columns_used(self) -> frozenset[str]:
        """Every input column some template reads."""
        return frozenset().union(*(t.columns for _, t in self.template_sites))

    @property
    def columns_read(self) -> frozenset[str]:
        """Every input column the run reads a value of: templates, `when`, `skip_if_filled`, `key`."""
        when = self.when_expr().meta.root_names() if self.when is not None else ()
        return self.columns_used | frozenset(when) | frozenset(self.skip_if_filled) | frozenset(self.key)

    @property
    def selects_rows(self) -> bool:
        """Whether `when` or `skip_if_filled` may leave rows without a call."""
        return self.when is not None or bool(self.skip_if_filled)

    def when_expr(self) -> Any:
        """The `when` predicate as a polars expression (null counts as false), or None."""
        if self.when is None:
            return None
        import polars as pl

        return pl.sql_expr(self.when).fill_null(False)

    def call_mask(self) -> Any:
        """A polars expression: True for the rows that get a call (`when` and `skip_if_filled`)."""
        import polars as pl

        mask = pl.lit(True)
        if self.when is not None:
            mask = self.when_expr()
        if self.skip_if_filled:
            filled = pl.all_horizontal(
                [pl.col(c).is_not_null() & (pl.col(c).cast(pl.String) != "") for c in self.skip_if_filled]
            )
            mask = mask & ~filled
        return mask

    def check_columns(self, columns: list[str], table: str) -> None:
        """Fail if a template reads a column the table lacks, or a new column would overwrite one."""
        present = set(columns)

        def missing(col: str, what: str, hint: str = "{!r}") -> ConfigError:
            shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
            close = difflib.get_close_matches(col, columns, n=1)
            fix = f" Did you mean {hint.format(close[0])}?" if close else ""
            return ConfigError(f"{what}, which is not a column of {table} (columns: {shown}).{fix}")

        for where, template in self.template_sites:
            for col in sorted(template.columns - present):
                raise missing(col, f"{where} uses {{{{{col}}}}}", hint="{{{{{}}}}}")
        for col in self.key:
            if col not in present:
                raise missing(col, f"{self.source}: `key` names {col!r}")
        for col in self.skip_if_filled:
            if col not in present:
                raise missing(col, f"{self.source}: `skip_if_filled` names {col!r}")
        for col in self.when_expr().meta.root_names() if self.when is not None else ():
            if col not in present:
                raise missing(col, f"{self.source}: `when` uses {col!r}")
        for name in self.output_columns:
            if name in present and not self.skip_if_filled:
                raise ConfigError(
                    f"{self.source}: the output column {name!r} is already a column of {table}. "
                    "Name the fields differently with the mapping form (`fields: {new_name: path}`), or list "
                    "the columns in `skip_if_filled` to fill only the rows that lack them."
                )

    def check_schema(self, schema: Mapping[str, Any], table: str) -> None:
        """``check_columns``, then what needs the column types: `when` must be a true/false
        condition that polars can evaluate on them (``id > 'x'`` fails here, before any call,
        not halfway through the run), and `skip_if_filled` columns must hold single values."""
        import polars as pl

        self.check_columns(list(schema), table)
        for col in self.skip_if_filled:
            if schema[col].is_nested():
                raise ConfigError(
                    f"{self.source}: `skip_if_filled` names {col!r}, a {schema[col]} column of {table}; "
                    "it can name only columns that hold single values (text, numbers, dates). Leave it out of "
                    "`skip_if_filled`, or give the output column another name in `fields`."
                )
        if self.when is None:
            return
        probe = pl.DataFrame([pl.Series(name, [None, None], dtype=dtype) for name, dtype in schema.items()])
        try:
            result = probe.select(pl.sql_expr(self.when).alias("when"))
        except pl.exceptions.PolarsError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(
                f"{self.source}: `when: {self.when}` cannot be evaluated on {table}: {first}. "
                "Compare columns with values of their type (text in single quotes)."
            ) from None
        if result.height != probe.height or result.schema["when"] != pl.Boolean:
            kind = "one value for the whole table" if result.height != probe.height else result.schema["when"]
            raise ConfigError(
                f"{self.source}: `when: {self.when}` gives {kind}, not true or false for each row. "
                'Write a condition, e.g. "email IS NOT NULL" or "employees > 100".'
            )


# --- loading -----------------------------------------------------------------------------


def _key_lines(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            out[path] = key_node.start_mark.line + 1
            _key_lines(value_node, path, out)


# A config is a few hundred values; far more means YAML anchors and aliases that multiply (an
# "alias bomb": a few lines that expand to billions of values), which would take the machine.
MAX_CONFIG_VALUES = 100_000


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {path}. Check the path, or run from the folder it is relative to."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None and _expanded_size(root) > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{path}: the YAML expands to more than {MAX_CONFIG_VALUES:,} values through its anchors and "
                "aliases (&name / *name), far more than any config holds. Write the values out, or remove the "
                "aliases that repeat other aliases."
            )
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}{at}: the YAML is malformed: {exc.problem}. Check the indentation and quote "
            "values that contain `: `, `#` or start with `{`, `[`, `*` or `&`."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: the YAML is malformed: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML is nested too deeply to be a config.") from None
    finally:
        loader.dispose()
    lines: dict[tuple[str, ...], int] = {}
    if root is not None:
        _key_lines(root, (), lines)
    return data, lines


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds once every alias is expanded, counted without
    expanding them (each node is counted once and reused: linear in the file's size)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            if known < 0:  # still being counted: the node contains itself
                raise yaml.YAMLError("an alias refers to a value that contains it (a loop), which no config needs")
            return known
        sizes[id(node)] = -1
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in node.value)
        else:
            total = 1
        sizes[id(node)] = total = min(total, MAX_CONFIG_VALUES + 1)
        return total

    return size(root)


class _Env:
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


RATE_KEYS = ("rate", "burst", "shared", "key")


def _shared_rate(value: Mapping[str, Any], where: _Locator, redactor: Redactor) -> Rate | None:
    """``{rate: 1000/s, burst: 50, shared: redis://..., key: acme-api}``."""
    limit = _check_keys(value, RATE_KEYS, where, ("rate_limit",))
    rate = parse_rate(limit.get("rate"), where("rate_limit", "rate"))
    if rate is None:
        raise ConfigError(f"{where('rate_limit', 'rate')} is missing: say how many calls, e.g. `rate: 1000/s`.")
    burst = int(
        _number(limit.get("burst", 0), where("rate_limit", "burst"), minimum=0, integer=True, what="a whole number")
    )
    shared = limit.get("shared")
    if shared is not None:
        from yarl import URL

        url = URL(str(shared))
        if url.scheme not in ("redis", "rediss", "unix") or not (url.host or url.path):
            raise ConfigError(
                f"{where('rate_limit', 'shared')}: {redactor.redact(str(shared))!r} is not a Redis URL. "
                "Write it as redis://host:6379/0 (rediss:// for TLS)."
            )
        redactor.add(url.password)
        shared = str(shared)
    key = limit.get("key", "enrich")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where('rate_limit', 'key')} must be a name such as acme-api, got {key!r}.")
    return replace(rate, burst=burst, shared=shared, key=key)


def parse_rate(value: Any, loc: str) -> Rate | None:
    """Parse ``20/s``, ``1200/min``, ``100/h`` or a bare number (per second); null means unlimited."""
    if value is None or value == 0:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{loc} must be positive, got {value!r}.")
        return Rate(float(value), 1.0)
    match = _RATE.match(str(value))
    if not match or float(match.group("n")) <= 0:
        raise ConfigError(
            f"{loc}: {value!r} is not a rate. Write it as N/s, N/min or N/h (e.g. `20/s`, `600/min`), "
            "or leave it out for no limit."
        )
    unit = match.group("unit")
    return Rate(float(match.group("n")), float(_UNIT_SECONDS[unit.lower()]) if unit else 1.0)


_DURATION = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d|w)\s*$", re.IGNORECASE)
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``12h``, ``7d`` or ``2w``; ``ValueError`` for anything else."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected an age such as 30m, 12h, 7d or 2w, got {text!r}")
    return float(match.group("n")) * _DURATION_SECONDS[match.group("unit").lower()]


_TEMPLATE_KEYS = ("url", "params", "headers", "body", "idempotency_key")


def _request(
    raw: dict[str, Any], where: _Locator, vars_: _Env, redactor: Redactor
) -> tuple[RequestConfig, list[tuple[str, Template]]]:
    """``request:`` -> the request to send with its twins to show (each secret as ``***``) and to
    fingerprint, and where each template came from."""
    if not raw.get("url"):
        raise ConfigError(f"{where('request')}: `request.url` is missing; it is the endpoint each row calls.")
    settings = vars_.expand({k: v for k, v in raw.items() if k not in _TEMPLATE_KEYS}, ("request",))
    templates = {k: raw[k] for k in _TEMPLATE_KEYS if raw.get(k) is not None}
    # Every variable looked up once here (an unset one named with its place), and the secrets
    # among them registered.
    vars_.expand(templates, ("request",))
    for name in ("params", "headers"):
        _string_map(templates.get(name), where("request", name))

    def parsed(literal: Callable[[str], str]) -> dict[str, Any]:  # a JSON-text body as its structure
        body = templates.get("body")
        return (
            {**templates, "body": json_body(body, where("request", "body"), literal)}
            if isinstance(body, str)
            else templates
        )

    sent_templates = parsed(vars_.literal)
    _register_fixed_secrets(sent_templates, redactor, vars_.literal)
    shown = _masked(parsed(vars_.shown))
    sent, sites = _compile_request(sent_templates, settings, where, vars_.literal)
    display, _ = _compile_request(shown, settings, where, vars_.shown)
    _check_url(
        sent.url.render({c: "x" for c in sent.url.columns}),
        where("request", "url"),
        allow_template_base=bool(sent.url.columns),
    )
    has_secret = shown != sent_templates or any(vars_.shown(t) != vars_.literal(t) for t in _strings(sent_templates))
    url_text = vars_.shown(str(shown["url"]))
    origin = _ORIGIN.match(str(shown["url"]))
    if origin is not None and _ENV.search(origin.group()):
        fp_templates = {**shown, "url": _ENV.sub(MASK, origin.group()) + str(shown["url"])[origin.end() :]}
        fingerprinted, _ = _compile_request(fp_templates, settings, where, vars_.shown)
    else:
        fingerprinted = display
    return (
        replace(
            sent,
            shown=display if has_secret else None,
            fingerprinted=fingerprinted if has_secret or fingerprinted is not display else None,
            url_text=url_text,
        ),
        sites,
    )


# The origin part of a URL template: a variable it starts with, or the scheme and host.
_ORIGIN = re.compile(r"^(?:\$\{[^}]*\}|[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*)")


def _compile_request(
    templates: Mapping[str, Any], settings: Mapping[str, Any], where: _Locator, literal: Callable[[str], str]
) -> tuple[RequestConfig, list[tuple[str, Template]]]:
    sites: list[tuple[str, Template]] = []
    url = compile_url(str(templates["url"]), where("request", "url"), literal)
    sites.append((where("request", "url"), url))
    compiled: dict[str, Template | None] = {}
    for key in ("params", "headers"):
        mapping = _string_map(templates.get(key), where("request", key))
        compiled[key] = (
            compile_template(mapping, where("request", key), typed=False, literal=literal) if mapping else None
        )
    body = _body(templates.get("body"), where("request", "body"), literal)
    for key, tmpl in (("params", compiled["params"]), ("headers", compiled["headers"]), ("body", body)):
        if tmpl is not None:
            sites.append((where("request", key), tmpl))
    remove_nulls = settings.get("remove_nulls", False)
    if not isinstance(remove_nulls, bool):
        raise ConfigError(f"{where('request', 'remove_nulls')} must be true or false, got {remove_nulls!r}.")
    idempotency_key = _idempotency_key(templates.get("idempotency_key"), where("request", "idempotency_key"), literal)
    if idempotency_key is not None:
        sites.append((where("request", "idempotency_key"), idempotency_key))
    request = RequestConfig(
        method=_method(settings.get("method"), where("request", "method"), "GET"),
        url=url,
        params=compiled["params"],
        headers=compiled["headers"],
        body=body,
        remove_nulls=remove_nulls,
        follow_redirects=_bool(settings.get("follow_redirects", True), where("request", "follow_redirects")),
        idempotency_key=idempotency_key,
        idempotency_header=_idempotency_header(
            settings.get("idempotency_header", "Idempotency-Key"), where("request", "idempotency_header")
        ),
    )
    return request, sites


# A query parameter of a URL template: `name=value`, up to the next & or #.
_QUERY_PARAM = re.compile(r"(?P<lead>[?&](?P<name>[^=&#]*)=)(?P<value>[^&#]*)")


def _masked(templates: Mapping[str, Any]) -> dict[str, Any]:
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


def _register_fixed_secrets(templates: Mapping[str, Any], redactor: Redactor, literal: Callable[[str], str]) -> None:
    """Register the fixed values (no ``{{column}}``) in a credential's place of the request; a
    ``${VAR}`` there was registered when it was looked up, but in the URL's query."""
    shown = _masked(templates)

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


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _secrets(data: Mapping[str, Any], where: _Locator) -> frozenset[str]:
    """``secrets: [VAR, ...]``: the ``${VAR}``s to treat as secrets besides those redact.py names;
    each must be a variable the config uses."""
    value = data.get("secrets")
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) for v in value
    ):
        raise ConfigError(
            f"{where('secrets')} must be a list of environment variable names, e.g. [API_USER], got {value!r}."
        )
    used = {
        m.group(1) for text in _strings({k: v for k, v in data.items() if k != "secrets"}) for m in _ENV.finditer(text)
    }
    for name in value:
        if name not in used:
            close = difflib.get_close_matches(name, sorted(used), n=1)
            fix = f" Did you mean {close[0]}?" if close else f" The config uses: {', '.join(sorted(used)) or 'none'}."
            raise ConfigError(f"{where('secrets')} lists {name}, which no ${{...}} in the config uses.{fix}")
    return frozenset(value)


def _body(value: Any, loc: str, literal: Callable[[str], str]) -> Template | None:
    if value is None:
        return None
    if isinstance(value, str):
        return compile_json_text(value, loc, literal)
    if isinstance(value, (dict, list)):
        return compile_template(value, loc, literal=literal)
    raise ConfigError(f"{loc} must be a mapping (YAML) or a JSON string, got {value!r}.")


TOP_KEYS = (
    "input",
    "output",
    "journal",
    "auth",
    "request",
    "fields",
    "concurrency",
    "rate_limit",
    "retry",
    "timeout",
    "input_types",
    "key",
    "when",
    "skip_if_filled",
    "diagnostics",
    "max_error_rate",
    "errors_out",
    "escape_formulas",
    "tls",
    "max_response_bytes",
    "secrets",
)
REQUEST_KEYS = (
    "method",
    "url",
    "params",
    "headers",
    "body",
    "remove_nulls",
    "follow_redirects",
    "idempotency_key",
    "idempotency_header",
)
RETRY_KEYS = ("attempts", "backoff", "max_backoff", "statuses", "max_retry_after", "non_idempotent")
TLS_KEYS = ("verify", "ca_bundle", "client_cert", "client_key")


def load_config(
    path: str | Path, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read, expand and validate a config file; ``overrides`` replace top-level keys (CLI flags)."""
    path = Path(path)
    data, lines = _read_yaml(path)
    where = _Locator(str(path), lines)
    if data is None:
        raise ConfigError(f"{path}: the config file is empty. Start from configs/demo.yaml.")
    data = dict(_check_keys(data, TOP_KEYS, where, ()))
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
            where.overridden.add((key,))
    return config_from_dict(data, where, env=os.environ if env is None else env)


def config_from_dict(
    data: Mapping[str, Any], where: _Locator | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Validate a config given as a mapping (the library entry point uses this directly)."""
    where = where or _Locator("<config>", {})
    redactor = Redactor()
    try:
        return _validate(data, where, redactor, env)
    except ConfigError as exc:
        # A message may quote a value that came from ${VAR}; never show it.
        raise ConfigError(redactor.redact(str(exc))) from None


def _validate(data: Mapping[str, Any], where: _Locator, redactor: Redactor, env: Mapping[str, str] | None) -> Config:
    data = dict(_check_keys(dict(data), TOP_KEYS, where, ()))
    raw_auth = data.get("auth")  # before ${VAR} expansion: auth errors name the variable to check
    if "request" not in data:
        raise ConfigError(
            f"{where.source}: `request` is missing. Add at least `request: {{url: https://api.example.com/v1/{{{{id}}}}}}`."
        )
    vars_ = _Env(env if env is not None else os.environ, where, _secrets(data, where), redactor)
    # Everything but the request's templates gets its ${VAR}s now; the templates get them as values
    # when they are compiled (a value holding `{{id}}` is sent as it is, never rendered).
    raw_request = _check_keys(data.pop("request"), REQUEST_KEYS, where, ("request",))
    data = vars_.expand(data)
    request, sites = _request(raw_request, where, vars_, redactor)
    url = request.url

    auth = _auth(data.get("auth"), where, redactor, raw_auth)
    fields_ = compile_fields(data["fields"], where("fields")) if data.get("fields") is not None else None
    retry = _retry(data.get("retry"), where)
    input_types = _input_types(data.get("input_types"), where)
    tls = _tls(data.get("tls"), where)
    warnings = _plain_http_warnings(data, url, where)
    refresh_on = auth.refresh_on if auth is not None else None
    if refresh_on is not None and refresh_on.statuses and refresh_on.body is None:
        listed = ", ".join(map(str, sorted(refresh_on.statuses)))
        warnings.append(
            f"{where('auth', 'refresh_on')} lists HTTP {listed} with no `body` pattern: such an answer is taken for "
            "a rejected token until the calls sent after it get through, so a record the API refuses waits for "
            "them (and may cost a login). Add `body:` with what the API says for an expired token "
            '(e.g. body: "token expired") to tell the two apart at once.'
        )
    if not tls.verify:
        warnings.append(
            f"{where('tls', 'verify')} is false: the API's certificate is not checked, so anyone on the network "
            "path can read and change the calls, and take the token and keys they carry."
        )

    return Config(
        request=request,
        auth=auth,
        input=Path(str(data["input"])) if data.get("input") else None,
        output=Path(str(data["output"])) if data.get("output") else None,
        fields=fields_,
        concurrency=_number(
            data.get("concurrency", 16),
            where("concurrency"),
            minimum=1,
            maximum=MAX_CONCURRENCY,
            integer=True,
            what="a whole number",
        ),
        rate_limit=(
            _shared_rate(data["rate_limit"], where, redactor)
            if isinstance(data.get("rate_limit"), Mapping)
            else parse_rate(data.get("rate_limit"), where("rate_limit"))
        ),
        retry=retry,
        timeout=float(_number(data.get("timeout", 30), where("timeout"), minimum=0.001, what="a number of seconds")),
        input_types=input_types,
        key=_columns(data.get("key"), where("key")),
        journal=_journal_path(data.get("journal", True), where("journal"), redactor),
        use_journal=data.get("journal", True) is not False,
        when=_when(data.get("when"), where("when")),
        skip_if_filled=_columns(data.get("skip_if_filled"), where("skip_if_filled")),
        diagnostics=_bool(data.get("diagnostics", True), where("diagnostics")),
        max_error_rate=_error_rate(data.get("max_error_rate"), where("max_error_rate")),
        errors_out=_path(data.get("errors_out"), where("errors_out")),
        escape_formulas=_bool(data.get("escape_formulas", True), where("escape_formulas")),
        tls=tls,
        max_response_bytes=parse_size(data.get("max_response_bytes", MAX_RESPONSE_BYTES), where("max_response_bytes")),
        warnings=tuple(warnings),
        source=where.source,
        redactor=redactor,
        template_sites=tuple(sites),
    )


_SIZE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[kmg]i?b?|b|bytes?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: Any, loc: str) -> int:
    """Bytes in ``10MB``, ``512KB``, ``1GB`` (binary: 1 MB = 1,048,576 bytes) or a number of bytes."""
    match = None if isinstance(value, bool) else _SIZE.match(str(value))
    size = float(match.group("n")) * _SIZE_UNITS[(match.group("unit") or "")[:1].lower()] if match else 0
    if size < 1:
        raise ConfigError(f"{loc} must be a size such as 10MB, 512KB or a number of bytes, got {value!r}.")
    return int(size)


def format_size(size: int) -> str:
    """``10 MB``, ``512 KB``, ``1,500 bytes``: the largest unit that divides ``size``."""
    for unit, name in ((1024**3, "GB"), (1024**2, "MB"), (1024, "KB")):
        if size % unit == 0:
            return f"{size // unit:,} {name}"
    return f"{size:,} bytes"


def _idempotency_header(value: Any, loc: str) -> str:
    if not isinstance(value, str) or not _HEADER_NAME.match(value):
        raise ConfigError(f"{loc} must be an HTTP header name such as Idempotency-Key, got {value!r}.")
    return value


def _idempotency_key(value: Any, loc: str, literal: Callable[[str], str]) -> Template | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f'{loc} must be a template that gives each row its own key, e.g. "{{{{id}}}}" or "order-{{{{order_id}}}}", '
            f"got {value!r}."
        )
    return compile_template(value, loc, typed=False, literal=literal)


def _tls(value: Any, where: _Locator) -> TLSConfig:
    if value is None:
        return TLSConfig()
    tls = _check_keys(value, TLS_KEYS, where, ("tls",))
    files: dict[str, Path | None] = {}
    for key in ("ca_bundle", "client_cert", "client_key"):
        path = tls.get(key)
        if path is None:
            files[key] = None
            continue
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"{where('tls', key)} must be the path of a PEM file, got {path!r}.")
        if not Path(path).is_file():
            raise ConfigError(
                f"{where('tls', key)}: {path} is not a file. Check the path (relative paths start from the "
                "folder you run enrich from)."
            )
        files[key] = Path(path)
    if files["client_key"] is not None and files["client_cert"] is None:
        raise ConfigError(
            f"{where('tls', 'client_key')} needs tls.client_cert, the certificate that goes with the key."
        )
    out = TLSConfig(
        verify=_bool(tls.get("verify", True), where("tls", "verify")),
        ca_bundle=files["ca_bundle"],
        client_cert=files["client_cert"],
        client_key=files["client_key"],
    )
    out.context(lambda key: where("tls", key))  # reads the files: one that is not PEM is found now
    return out


def _plain_http_warnings(data: Mapping[str, Any], url: Template, where: _Locator) -> list[str]:
    """A warning for each configured URL that sends calls unencrypted to another machine."""
    from yarl import URL

    urls = [(where("request", "url"), url.render({c: "x" for c in url.columns}))]
    auth = data.get("auth")
    if isinstance(auth, dict):  # the login (or token) URLs: they carry the credentials
        urls += [(where("auth", str(k)), v) for k, v in auth.items() if str(k).endswith("url") and isinstance(v, str)]
    out = []
    for loc, text in urls:
        try:
            parsed = URL(text, encoded=True)
        except ValueError:
            continue
        if parsed.scheme == "http" and parsed.host and not _loopback(parsed.host):
            out.append(
                f"{loc} is plain http:// to {parsed.host}: the calls, and any token, password or key they carry, "
                "cross the network unencrypted. Use https:// unless that network is yours."
            )
    return out


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _columns(value: Any, loc: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{loc} must be a column name or a list of column names, e.g. [email], got {value!r}.")
    return tuple(value)


def _bool(value: Any, loc: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{loc} must be true or false, got {value!r}.")
    return value


def _error_rate(value: Any, loc: str) -> float | None:
    """A share of rows, 0.05, or a percentage, "5%"."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        rate = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        rate = -1.0
    if isinstance(value, bool) or not 0 <= rate <= 1:
        raise ConfigError(f"{loc} must be a share of rows between 0 and 1 (0.05) or a percentage (5%), got {value!r}.")
    return rate


def _when(value: Any, loc: str) -> str | None:
    """Check the `when` predicate parses as polars SQL; its columns are checked against the input later."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{loc} must be a SQL condition in quotes, e.g. \"email IS NOT NULL AND country = 'US'\".")
    import polars as pl

    try:
        pl.sql_expr(value)
    except pl.exceptions.PolarsError as exc:
        detail = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"{loc}: {value!r} is not a SQL condition polars understands ({detail}). Write it as a WHERE "
            "clause without WHERE, e.g. \"email IS NOT NULL AND country = 'US'\"."
        ) from None
    return value


def _journal_path(value: Any, loc: str, redactor: Redactor) -> Path | str | None:
    if value is True or value is None or value is False:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{loc} must be a file path or a redis:// URL, or false to keep no journal, got {value!r}.")
    return journal_location(value, loc, redactor)


def journal_location(value: str, loc: str, redactor: Redactor) -> Path | str:
    """A journal file path, or a ``redis://host:6379/0?prefix=NAME&ttl=30d`` URL (checked, its
    password registered with ``redactor``)."""
    if not value.startswith(("redis://", "rediss://")):
        return Path(value)
    from yarl import URL

    try:
        url = URL(value)
        host = url.host
    except ValueError:
        host = None
    if not host:
        raise ConfigError(
            f"{loc}: {redactor.redact(value)!r} is not a Redis URL. Write it as redis://host:6379/0 "
            "(rediss:// for TLS), optionally with ?prefix=NAME&ttl=30d."
        )
    redactor.add(url.password)
    ttl = url.query.get("ttl")
    if ttl is not None:
        try:
            seconds = parse_duration(ttl)
        except ValueError as exc:
            raise ConfigError(f"{loc}: ttl={ttl!r} in the journal URL: {exc}.") from None
        if seconds < 1:
            raise ConfigError(
                f"{loc}: ttl={ttl!r} in the journal URL is under a second, which Redis cannot keep. "
                "Give whole seconds or more (ttl=30d), or leave ttl out to keep entries for good."
            )
    return value


def _retry(value: Any, where: _Locator) -> RetryConfig:
    if value is None:
        return RetryConfig()
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"attempts": value}
    retry = _check_keys(value, RETRY_KEYS, where, ("retry",))
    out = RetryConfig()
    if "attempts" in retry:
        out = replace(
            out,
            attempts=_number(
                retry["attempts"],
                where("retry", "attempts"),
                minimum=1,
                maximum=MAX_ATTEMPTS,
                integer=True,
                what="a whole number",
            ),
        )

    def seconds(key: str, default: float) -> float:
        if key not in retry:
            return default
        return float(_number(retry[key], where("retry", key), minimum=0, what="a number of seconds"))

    out = replace(
        out,
        backoff=seconds("backoff", out.backoff),
        max_backoff=seconds("max_backoff", out.max_backoff),
        max_retry_after=seconds("max_retry_after", out.max_retry_after),
    )
    if "statuses" in retry:
        statuses = retry["statuses"]
        if not isinstance(statuses, list) or not all(isinstance(s, int) and 100 <= s <= 599 for s in statuses):
            raise ConfigError(
                f"{where('retry', 'statuses')} must be a list of HTTP status codes, e.g. [429, 503], got {statuses!r}."
            )
        out = replace(out, statuses=frozenset(statuses))
    if "non_idempotent" in retry:
        out = replace(out, non_idempotent=_bool(retry["non_idempotent"], where("retry", "non_idempotent")))
    return out


def _input_types(value: Any, where: _Locator) -> dict[str, str]:
    types = _string_map(value, where("input_types"))
    for col, kind in types.items():
        if kind not in INPUT_TYPES:
            raise ConfigError(
                f"{where('input_types', col)}: {kind!r} is not a type. Use one of: {', '.join(INPUT_TYPES)}."
            )
    return types
