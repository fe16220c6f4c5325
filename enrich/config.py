"""YAML config -> validated, frozen ``Config``.

Everything a run needs is checked here, before any request: unknown keys (with a
"did you mean"), types, ``${VAR}`` lookups, templates and field paths (compiled
once). Errors name the file, the line and the key, and say what would fix them.

    >>> cfg = load_config("configs/demo.yaml")          # doctest: +SKIP
    >>> cfg.request.method, cfg.concurrency             # doctest: +SKIP
    ('GET', 16)

``${VAR}`` values and the auth credentials are registered with the config's
``Redactor``, and ``repr(config)`` never shows them.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import os
import random
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, Where
from .extract import FieldPath, compile_fields, compile_path
from .redact import Redactor
from .template import Template, compile_json_text, compile_template, compile_url

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
INPUT_TYPES = ("str", "int", "float", "bool")
RESPONSE_COLUMN = "response"
MAX_RESPONSE_BYTES = 10 * 1024 * 1024
STATUS_COLUMN = "_http_status"
ERROR_COLUMN = "_error"
ATTEMPTS_COLUMN = "_attempts"  # diagnostics: HTTP attempts the row's call took
LATENCY_COLUMN = "_latency_ms"  # diagnostics: the last attempt's time to the full response
ROW_COLUMN = "_row"  # the input row number, in shard outputs (so `enrich merge` can restore order)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEY = re.compile(r"pass|secret|token|key|credential|auth|signature", re.IGNORECASE)
_RATE = re.compile(
    # The unit is optional: a bare number is per second (`--rate-limit 20` and `${RATE}` give text).
    r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?:(?:/|per)\s*(?P<unit>s|sec|second|m|min|minute|h|hr|hour)s?)?\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hr": 3600, "hour": 3600}


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``period`` seconds, e.g. ``Rate(20, 1)`` for ``20/s``."""

    count: float
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = {1: "s", 60: "min", 3600: "h"}.get(int(self.period), f"{self.period}s")
        return f"{self.count:g}/{unit}"


AUTH_TYPES = ("login", "bearer", "header", "basic", "oauth2_client_credentials", "jwt_signed")
SIGNING_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "ES256")
STATIC_AUTH_TYPES = frozenset({"bearer", "header", "basic"})  # a fixed secret: nothing to fetch, nothing to refresh


@dataclass(frozen=True, slots=True)
class RefreshOn:
    """Responses that mean "token rejected" besides a 401 (``auth.refresh_on``).

    With both keys a response must have one of ``statuses`` *and* a body that ``body``
    finds (a 403 that says `token expired`, not every 403); with one key, that one decides.
    """

    statuses: frozenset[int] = frozenset()
    body: re.Pattern[bytes] | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """How to get the token and how each call carries it (``auth.type``; ``login`` is Clay's JWT inputs).

    ``url`` is the login URL, or the token URL of ``oauth2_client_credentials`` and of
    ``jwt_signed`` with ``token_url``; it is ``""`` for the kinds that fetch nothing.
    """

    url: str
    method: str
    body: Any = field(repr=False)  # credentials
    headers: Mapping[str, str] = field(repr=False)
    token_path: str
    token_type: str
    header: str  # "Cookie" when the token goes back as a cookie; "" when it goes in the query string
    get_token: Any = field(repr=False, compare=False)
    type: str = "login"
    token_header: str | None = None  # the login response header that holds the token
    token_cookie: str | None = None  # the cookie that holds the token
    expires_in_path: str | None = None
    get_expires_in: Any = field(default=None, repr=False, compare=False)
    refresh_on: RefreshOn = field(default_factory=RefreshOn)
    query_param: str | None = None  # static kinds: send the token as this query parameter
    token: str | None = field(default=None, repr=False)  # static kinds: the token (basic: base64 of user:password)
    client_id: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)
    client_auth: str = "basic"
    scope: str | None = None
    audience: str | None = None
    algorithm: str | None = None
    signing_key: Any = field(default=None, repr=False, compare=False)  # jwt_signed: the key, parsed once
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)
    lifetime: float = 300.0  # jwt_signed: seconds from iat to exp
    secret_source: str = ""  # for messages: where a static secret comes from ("the environment variable X")

    @property
    def static(self) -> bool:
        """A fixed token, key or password: nothing to fetch, and refreshing cannot fix a rejection."""
        return self.type in STATIC_AUTH_TYPES

    def header_value(self, token: str) -> str:
        """The auth header's value: ``Bearer <token>``, the bare token when ``token_type`` is ``""``,
        or ``name=<token>`` when the token goes back as the cookie ``name``."""
        if self.header == "Cookie" and self.token_cookie:
            return f"{self.token_cookie}={token}"
        return f"{self.token_type} {token}" if self.token_type else token

    def sent_as(self, token: str) -> tuple[dict[str, str], dict[str, str]]:
        """The headers and query parameters a call carries, with ``token`` as the token (a mask for display).

        >>> AuthConfig("", "GET", None, {}, "", "", "", None, type="header", query_param="api_key").sent_as("***")
        ({}, {'api_key': '***'})
        """
        if self.query_param:
            return {}, {self.query_param: token}
        return {self.header: self.header_value(token)}, {}

    def describe(self) -> str:
        """One line for ``enrich validate``: where the token comes from and how it is sent (no secret)."""
        headers, params = self.sent_as("<token>")
        sent = (
            f"query parameter {next(iter(params))}=<token>"
            if params
            else ", ".join(f"{k}: {v}" for k, v in headers.items())
        )
        if self.type in ("bearer", "header"):
            return f"a fixed token ({self.secret_source}), sent as {sent}"
        if self.type == "basic":
            return f"HTTP Basic ({self.secret_source}), sent as Authorization: Basic <credentials>"
        if self.type == "jwt_signed" and not self.url:
            return f"a JWT signed here ({self.algorithm}, {self.lifetime:g}s), sent as {sent}"
        if self.type == "jwt_signed":
            got = f"a JWT signed here ({self.algorithm}) exchanged at {self.url}"
        elif self.type == "oauth2_client_credentials":
            got = f"client credentials ({self.client_auth}) exchanged at {self.url}"
        else:
            got = f"log in at {self.url}"
        source = (
            f"token at {self.token_path}"
            if self.token_path
            else f"token in the {self.token_header} header"
            if self.token_header
            else f"token in the {self.token_cookie} cookie"
        )
        return f"{got}; {source}; sent as {sent}"


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
    journal: Path | None = None  # None: beside the output, `<output>.journal`
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
                    "list columns that hold single values (text, numbers, dates)."
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


class _Locator:
    """Turns a key path like ("request", "url") into "demo.yaml, line 14: request.url"."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]) -> None:
        self.source = source
        self.lines = lines
        self.overridden: set[tuple[str, ...]] = set()

    def __call__(self, *path: str) -> Where:
        return Where(self._text(path), child=lambda key: self(*path, key))

    def _text(self, path: tuple[str, ...]) -> str:
        key = ".".join(path)
        if path in self.overridden:
            return f"--{key.replace('_', '-')}"
        for depth in range(len(path), 0, -1):
            line = self.lines.get(path[:depth])
            if line is not None:
                return f"{self.source}, line {line}: {key}"
        return f"{self.source}: {key}"


def _key_lines(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            out[path] = key_node.start_mark.line + 1
            _key_lines(value_node, path, out)


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {path}. Check the path, or run from the folder it is relative to."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}{at}: the YAML is malformed: {exc.problem}. Check the indentation and quote "
            "values that contain `: `, `#` or start with `{`, `[`, `*` or `&`."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: the YAML is malformed: {exc}") from None
    lines: dict[tuple[str, ...], int] = {}
    if root is not None:
        _key_lines(root, (), lines)
    return data, lines


def _expand_env(value: Any, where: Any, path: tuple[str, ...], redactor: Redactor, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = env.get(name)
            if found is None:
                if default is not None:
                    return default
                raise ConfigError(
                    f"{where(*path)} uses ${{{name}}}, but the environment variable {name} is not set. "
                    f"Set it (export {name}=...) or give a default with ${{{name}:-value}}."
                )
            redactor.add(found)
            return found

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, where, (*path, str(k)), redactor, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, where, (*path, str(i)), redactor, env) for i, v in enumerate(value)]
    return value


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


def _number(value: Any, loc: str, *, minimum: float, integer: bool = False, what: str = "a number") -> Any:
    if isinstance(value, str):  # from ${VAR} or the command line: numbers arrive as text
        with contextlib.suppress(ValueError):
            value = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{loc} must be {what}, got {value!r}.")
    if value < minimum:
        raise ConfigError(f"{loc} must be at least {minimum:g}, got {value!r}.")
    return value


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


def _string_map(value: Any, loc: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{loc} must be a mapping of name: value, got {value!r}.")
    return {str(k): v for k, v in value.items()}


def _body(value: Any, loc: str) -> Template | None:
    if value is None:
        return None
    if isinstance(value, str):
        return compile_json_text(value, loc)
    if isinstance(value, (dict, list)):
        return compile_template(value, loc)
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
)
AUTH_KEYS = (
    "type",
    "url",
    "method",
    "body",
    "headers",
    "token_path",
    "token_header",
    "token_cookie",
    "expires_in_path",
    "refresh_on",
    "token_type",
    "header",
    "token",
    "query_param",
    "username",
    "password",
    "token_url",
    "client_id",
    "client_secret",
    "client_auth",
    "scope",
    "audience",
    "algorithm",
    "key",
    "key_file",
    "claims",
    "lifetime",
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
    raw_auth = data.get("auth")  # before ${VAR} expansion: auth errors name the variable to check
    data = _expand_env(
        dict(_check_keys(dict(data), TOP_KEYS, where, ())), where, (), redactor, env if env is not None else os.environ
    )
    sites: list[tuple[str, Template]] = []

    # request
    if "request" not in data:
        raise ConfigError(
            f"{where.source}: `request` is missing. Add at least `request: {{url: https://api.example.com/v1/{{{{id}}}}}}`."
        )
    req = _check_keys(data["request"], REQUEST_KEYS, where, ("request",))
    if not req.get("url"):
        raise ConfigError(f"{where('request')}: `request.url` is missing; it is the endpoint each row calls.")
    url = compile_url(str(req["url"]), where("request", "url"))
    _check_url(
        url.render({c: "x" for c in url.columns}), where("request", "url"), allow_template_base=bool(url.columns)
    )
    sites.append((where("request", "url"), url))
    templates: dict[str, Template | None] = {}
    for key in ("params", "headers"):
        mapping = _string_map(req.get(key), where("request", key))
        templates[key] = compile_template(mapping, where("request", key)) if mapping else None
    body = _body(req.get("body"), where("request", "body"))
    for key, tmpl in (("params", templates["params"]), ("headers", templates["headers"]), ("body", body)):
        if tmpl is not None:
            sites.append((where("request", key), tmpl))
    remove_nulls = req.get("remove_nulls", False)
    if not isinstance(remove_nulls, bool):
        raise ConfigError(f"{where('request', 'remove_nulls')} must be true or false, got {remove_nulls!r}.")
    idempotency_key = _idempotency_key(req.get("idempotency_key"), where("request", "idempotency_key"))
    if idempotency_key is not None:
        sites.append((where("request", "idempotency_key"), idempotency_key))
    request = RequestConfig(
        method=_method(req.get("method"), where("request", "method"), "GET"),
        url=url,
        params=templates["params"],
        headers=templates["headers"],
        body=body,
        remove_nulls=remove_nulls,
        follow_redirects=_bool(req.get("follow_redirects", True), where("request", "follow_redirects")),
        idempotency_key=idempotency_key,
        idempotency_header=_idempotency_header(
            req.get("idempotency_header", "Idempotency-Key"), where("request", "idempotency_header")
        ),
    )

    auth = _auth(data.get("auth"), where, redactor, raw_auth)
    fields_ = compile_fields(data["fields"], where("fields")) if data.get("fields") is not None else None
    retry = _retry(data.get("retry"), where)
    input_types = _input_types(data.get("input_types"), where)
    tls = _tls(data.get("tls"), where)
    warnings = _plain_http_warnings(data, url, where)
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
            data.get("concurrency", 16), where("concurrency"), minimum=1, integer=True, what="a whole number"
        ),
        rate_limit=parse_rate(data.get("rate_limit"), where("rate_limit")),
        retry=retry,
        timeout=float(_number(data.get("timeout", 30), where("timeout"), minimum=0.001, what="a number of seconds")),
        input_types=input_types,
        key=_columns(data.get("key"), where("key")),
        journal=_journal_path(data.get("journal", True), where("journal")),
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


def _idempotency_key(value: Any, loc: str) -> Template | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f'{loc} must be a template that gives each row its own key, e.g. "{{{{id}}}}" or "order-{{{{order_id}}}}", '
            f"got {value!r}."
        )
    return compile_template(value, loc)


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


def _path(value: Any, loc: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{loc} must be a file path such as out/failed.csv, got {value!r}.")
    return Path(value)


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


def _journal_path(value: Any, loc: str) -> Path | None:
    if value is True or value is None or value is False:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{loc} must be a file path, or false to keep no journal, got {value!r}.")
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


# Which keys each kind of auth takes besides `type`; any other key of AUTH_KEYS is refused for that kind.
_TOKEN_EXCHANGE_KEYS = ("token_path", "expires_in_path", "token_type", "header", "refresh_on")
AUTH_TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "login": (
        "url",
        "method",
        "body",
        "headers",
        "token_path",
        "token_header",
        "token_cookie",
        "expires_in_path",
        "token_type",
        "header",
        "refresh_on",
    ),
    "bearer": ("token", "header", "token_type", "query_param", "refresh_on"),
    "header": ("token", "header", "token_type", "query_param", "refresh_on"),
    "basic": ("username", "password", "refresh_on"),
    "oauth2_client_credentials": (
        "token_url",
        "client_id",
        "client_secret",
        "client_auth",
        "scope",
        "audience",
        *_TOKEN_EXCHANGE_KEYS,
    ),
    "jwt_signed": ("algorithm", "key", "key_file", "claims", "lifetime", "token_url", "scope", *_TOKEN_EXCHANGE_KEYS),
}
_CLIENT_AUTH = ("basic", "body")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)


def _auth(value: Any, where: _Locator, redactor: Redactor, raw: Any = None) -> AuthConfig | None:
    """``auth:`` -> ``AuthConfig``: the keys of its ``type`` only, each checked; every secret registered.

    ``raw`` is the block before ``${VAR}`` expansion, so that messages can name the variable to check.
    """
    if value is None:
        return None
    auth = _check_keys(value, AUTH_KEYS, where, ("auth",))
    kind = _auth_type(auth.get("type", "login"), where)
    for key in auth:
        if key != "type" and key not in AUTH_TYPE_KEYS[kind]:
            raise ConfigError(_not_for_type(key, kind, where))
    raw = raw if isinstance(raw, dict) else {}
    refresh_on = _refresh_on(auth.get("refresh_on"), where)
    if kind == "login":
        return _login_auth(auth, where, redactor, refresh_on)
    if kind in ("bearer", "header", "basic"):
        return _static_auth(kind, auth, where, redactor, raw, refresh_on)
    if kind == "oauth2_client_credentials":
        return _oauth2_auth(auth, where, redactor, refresh_on)
    return _jwt_signed_auth(auth, where, redactor, refresh_on)


def _auth_type(value: Any, where: _Locator) -> str:
    if value in AUTH_TYPES:
        return str(value)
    close = difflib.get_close_matches(str(value), AUTH_TYPES, n=1) or [
        t for t in AUTH_TYPES if str(value) and t.startswith(str(value).lower())
    ]
    fix = f" Did you mean `type: {close[0]}`?" if close else ""
    raise ConfigError(
        f"{where('auth', 'type')}: {value!r} is not a kind of auth. Use one of: {', '.join(AUTH_TYPES)}.{fix}"
    )


def _not_for_type(key: str, kind: str, where: _Locator) -> str:
    takes = [t for t in AUTH_TYPES if key in AUTH_TYPE_KEYS[t]]
    fix = f" Remove it, or use `type: {takes[0]}`" + (f" (or {', '.join(takes[1:])})" if takes[1:] else "") + "."
    return (
        f"{where('auth', key)} does not apply to `type: {kind}`, which takes: "
        f"{', '.join(AUTH_TYPE_KEYS[kind])}.{fix if takes else ''}"
    )


def _login_auth(auth: dict[str, Any], where: _Locator, redactor: Redactor, refresh_on: RefreshOn) -> AuthConfig:
    if not auth.get("url"):
        raise ConfigError(f"{where('auth')}: `auth.url` is missing; it is the login endpoint that returns the token.")
    _check_url(str(auth["url"]), where("auth", "url"))
    token_header = _header_name(auth, "token_header", where)
    token_cookie = _cookie_name(auth, where)
    if auth.get("token_path") and token_header:
        raise ConfigError(
            f"{where('auth', 'token_header')}: the token has one place: auth.token_path (in the JSON body) or "
            "auth.token_header (a response header), not both. Remove one."
        )
    if not auth.get("token_path") and not token_header and not token_cookie:
        raise ConfigError(
            f"{where('auth')}: `auth.token_path` is missing. Say where the token is in the login response, "
            "e.g. `token_path: access_token` or `token_path: data.session.jwt`."
        )
    token_path = str(auth["token_path"]) if auth.get("token_path") else ""
    body = auth.get("body")
    if isinstance(body, str):
        import orjson

        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ConfigError(
                f"{where('auth', 'body')} is a string but not valid JSON; write it as a YAML mapping."
            ) from None
    headers = {k: str(v) for k, v in _string_map(auth.get("headers"), where("auth", "headers")).items()}
    _register_secrets(body, redactor)
    _register_secrets(headers, redactor)
    as_cookie = token_cookie is not None and "header" not in auth
    if as_cookie and "token_type" in auth:
        raise ConfigError(
            f"{where('auth', 'token_type')}: the token goes back as the cookie {token_cookie} "
            f"(`Cookie: {token_cookie}=<token>`), which has no token type. Remove token_type, or set "
            "`header: Authorization` to send the token in a header instead."
        )
    return AuthConfig(
        url=str(auth["url"]),
        method=_method(auth.get("method"), where("auth", "method"), "POST"),
        body=body,
        headers=headers,
        token_path=token_path,
        token_type="" if as_cookie else _token_type(auth, "Bearer"),
        header="Cookie" if as_cookie else _str(auth, "header", where, ("auth",), "Authorization") or "Authorization",
        get_token=compile_path(token_path, where("auth", "token_path")) if token_path else None,
        token_header=token_header,
        token_cookie=token_cookie,
        **_expiry(auth, where, None),
        refresh_on=refresh_on,
    )


def _static_auth(
    kind: str, auth: dict[str, Any], where: _Locator, redactor: Redactor, raw: dict[str, Any], refresh_on: RefreshOn
) -> AuthConfig:
    """``bearer``, ``header`` and ``basic``: a fixed secret, checked and masked; nothing is fetched."""
    if kind == "basic":
        username = _secret(auth, "username", where, redactor, example='username: "${API_USER}"', secret=False)
        if ":" in username:
            raise ConfigError(
                f"{where('auth', 'username')} holds a colon, which HTTP Basic cannot carry in a user name "
                "(RFC 7617). Check the value."
            )
        password = _secret(auth, "password", where, redactor, example='password: "${API_PASSWORD}"', empty_ok=True)
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        redactor.add(token)  # `Basic <this>` carries both
        return AuthConfig(
            url="",
            method="GET",
            body=None,
            headers={},
            token_path="",
            token_type="Basic",
            header="Authorization",
            get_token=None,
            type=kind,
            refresh_on=refresh_on,
            token=token,
            secret_source=_source(raw, ("username", "password")),
        )
    example = 'token: "${API_TOKEN}"' if kind == "bearer" else 'token: "${API_KEY}"'
    token = _secret(auth, "token", where, redactor, example=example)
    query_param = _str(auth, "query_param", where, ("auth",))
    if query_param is not None:
        if not query_param.strip():
            raise ConfigError(f"{where('auth', 'query_param')} is empty; name the parameter, e.g. `api_key`.")
        for key in ("header", "token_type"):
            if key in auth:
                raise ConfigError(
                    f"{where('auth', key)}: the token goes in the query parameter {query_param}, so there is no "
                    f"header to name or type. Remove {key}, or remove query_param to send the token in a header."
                )
    elif kind == "header" and "header" not in auth:
        raise ConfigError(
            f"{where('auth')}: `type: header` sends the key in a header you name: add `header: X-API-Key` "
            "(the header the API reads), or `query_param: api_key` to send it in the URL."
        )
    return AuthConfig(
        url="",
        method="GET",
        body=None,
        headers={},
        token_path="",
        token_type="" if query_param else _token_type(auth, "Bearer" if kind == "bearer" else ""),
        header="" if query_param else _header_name(auth, "header", where) or "Authorization",
        get_token=None,
        type=kind,
        refresh_on=refresh_on,
        query_param=query_param,
        token=token,
        secret_source=_source(raw, ("token",)),
    )


def _oauth2_auth(auth: dict[str, Any], where: _Locator, redactor: Redactor, refresh_on: RefreshOn) -> AuthConfig:
    """RFC 6749 4.4: client id and secret -> an access token at ``token_url``."""
    url = _token_url(auth, where, "the authorization server's token endpoint", required=True) or ""
    client_id = _secret(auth, "client_id", where, redactor, example='client_id: "${API_CLIENT_ID}"', secret=False)
    client_secret = _secret(auth, "client_secret", where, redactor, example='client_secret: "${API_CLIENT_SECRET}"')
    client_auth = str(auth.get("client_auth", "basic"))
    if client_auth not in _CLIENT_AUTH:
        raise ConfigError(
            f"{where('auth', 'client_auth')}: {client_auth!r} is not a way to send the client credentials. Use "
            "`basic` (an Authorization: Basic header, the standard way) or `body` (client_id and client_secret "
            "in the form body)."
        )
    if client_auth == "basic":
        # RFC 6749 2.3.1: each part is form-encoded before the pair is base64-encoded.
        redactor.add(client_basic(client_id, client_secret))
    return AuthConfig(
        url=url,
        method="POST",
        body=None,
        headers={},
        token_path=_token_path(auth, where),
        token_type=_token_type(auth, "Bearer"),
        header=_header_name(auth, "header", where) or "Authorization",
        get_token=compile_path(_token_path(auth, where), where("auth", "token_path")),
        type="oauth2_client_credentials",
        **_expiry(auth, where, "expires_in"),
        refresh_on=refresh_on,
        client_id=client_id,
        client_secret=client_secret,
        client_auth=client_auth,
        scope=_scope(auth, where),
        audience=_str(auth, "audience", where, ("auth",)),
    )


def _jwt_signed_auth(auth: dict[str, Any], where: _Locator, redactor: Redactor, refresh_on: RefreshOn) -> AuthConfig:
    """A JWT signed here with ``auth.key``: the token itself, or an assertion for ``token_url`` (RFC 7523)."""
    algorithm = auth.get("algorithm")
    if algorithm not in SIGNING_ALGORITHMS:
        said = (
            f"{where('auth')}: `auth.algorithm` is missing"
            if algorithm is None
            else f"{where('auth', 'algorithm')}: {algorithm!r} is not an algorithm enrich signs with"
        )
        raise ConfigError(
            f"{said}. Use HS256, HS384 or HS512 (a shared secret in auth.key) or RS256, ES256 (a private key in PEM)."
        )
    if ("key" in auth) == ("key_file" in auth):
        raise ConfigError(
            f'{where("auth")}: give the signing key once: `key: "${{SIGNING_KEY}}"` (a secret or a PEM key from '
            "the environment) or `key_file: keys/service.pem`" + (", not both." if "key" in auth else ".")
        )
    if "key" in auth:
        key = _secret(auth, "key", where, redactor, example='key: "${SIGNING_KEY}"')
        if "-----BEGIN" in key and "\\n" in key and "\n" not in key.strip():
            key = key.replace("\\n", "\n")  # a PEM key squeezed onto one line for an environment variable
            redactor.add(key)
    else:
        key_file = _path(auth.get("key_file"), where("auth", "key_file"))
        assert key_file is not None
        try:
            key = key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigError(
                f"{where('auth', 'key_file')}: cannot read {key_file} ({reason}). Check the path; it is relative "
                "to the folder you run enrich from."
            ) from None
        redactor.add(key)
        redactor.add(key.strip())
    claims = _string_map(auth.get("claims"), where("auth", "claims"))
    import json  # what PyJWT encodes the claims with

    try:
        json.dumps(claims)
    except TypeError as exc:
        raise ConfigError(
            f"{where('auth', 'claims')}: a value is not JSON ({exc}). Quote dates and times, or give them as "
            "seconds since 1970."
        ) from None
    for reserved in ("iat", "exp"):
        if reserved in claims:
            raise ConfigError(
                f"{where('auth', 'claims', reserved)}: {reserved} is set when the token is signed, from "
                "auth.lifetime (seconds, default 300). Remove it from claims."
            )
    lifetime = float(
        _number(auth.get("lifetime", 300), where("auth", "lifetime"), minimum=1, what="a number of seconds")
    )
    signing_key = _signing_key(key, str(algorithm), where("auth", "key_file" if "key_file" in auth else "key"))
    token_url = _token_url(auth, where, "the token endpoint that takes the signed JWT", required=False)
    for key in ("scope", "token_path", "expires_in_path"):
        if key in auth and not token_url:
            raise ConfigError(
                f"{where('auth', key)} applies only with auth.token_url (a signed JWT exchanged for an access "
                "token); without it the signed JWT itself is the token. Add `token_url:`, or remove the key."
            )
    token_path = _token_path(auth, where) if token_url else ""
    return AuthConfig(
        url=token_url or "",
        method="POST",
        body=None,
        headers={},
        token_path=token_path,
        token_type=_token_type(auth, "Bearer"),
        header=_header_name(auth, "header", where) or "Authorization",
        get_token=compile_path(token_path, where("auth", "token_path")) if token_path else None,
        type="jwt_signed",
        **(_expiry(auth, where, "expires_in") if token_url else {}),
        refresh_on=refresh_on,
        scope=_scope(auth, where),
        algorithm=str(algorithm),
        signing_key=signing_key,
        claims=claims,
        lifetime=lifetime,
    )


def _signing_key(key: str, algorithm: str, loc: str) -> Any:
    """Parse the key once, and sign a test token with it: a wrong key fails here, not at the first call."""
    import warnings

    import jwt

    try:
        prepared = jwt.get_algorithm_by_name(algorithm).prepare_key(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyJWT warns on short HMAC secrets; the API chose the secret
            jwt.encode({"probe": True}, prepared, algorithm=algorithm)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        wanted = "a shared secret" if algorithm.startswith("HS") else "an RSA" if algorithm == "RS256" else "an EC"
        kind = "" if algorithm.startswith("HS") else " private key in PEM (-----BEGIN ... PRIVATE KEY-----)"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{loc}: not a key {algorithm} can sign with ({detail}); it needs {wanted}{kind}.") from None
    return prepared


def _secret(
    auth: dict[str, Any],
    key: str,
    where: _Locator,
    redactor: Redactor,
    *,
    example: str,
    empty_ok: bool = False,
    secret: bool = True,
) -> str:
    """A credential: present, text, no line breaks; registered with the redactor unless it is a name.

    A user name or client id written in the file is no secret, and masking it would mask it in
    the API's answers too; from ``${VAR}`` it is masked like every other variable.
    """
    if key not in auth or auth[key] is None:
        raise ConfigError(f"{where('auth')}: `auth.{key}` is missing. Add it, e.g. `{example}`.")
    value = auth[key]
    if isinstance(value, (dict, list, bool)):
        raise ConfigError(f"{where('auth', key)} must be text, e.g. `{example}`.")
    value = str(value)
    if not value and not empty_ok:
        raise ConfigError(f"{where('auth', key)} is empty. Check the environment variable it reads, e.g. `{example}`.")
    if _CONTROL_CHARS.search(value) and key != "key":
        raise ConfigError(
            f"{where('auth', key)} holds a line break or control character, which cannot go in an HTTP request. "
            "Check the value (a trailing newline from a file?)."
        )
    if secret:
        redactor.add(value)
    return value


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _source(raw: dict[str, Any], keys: tuple[str, ...]) -> str:
    """Where the secrets of ``keys`` come from, for a message: the ${VAR}s, or the keys of the config."""
    names = [n for k in keys for n, _ in _ENV.findall(str(raw.get(k, "")))]
    if names:
        listed = ", ".join(dict.fromkeys(names))
        return f"the environment variable{'s' if len(set(names)) > 1 else ''} {listed}"
    return " and ".join(f"auth.{k}" for k in keys) + " in the config"


def client_basic(client_id: str, client_secret: str) -> str:
    """RFC 6749 2.3.1: ``base64(urlencode(id):urlencode(secret))``, the value after `Basic `."""
    from urllib.parse import quote_plus

    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return base64.b64encode(pair.encode()).decode("ascii")


def _header_name(auth: dict[str, Any], key: str, where: _Locator) -> str | None:
    name = _str(auth, key, where, ("auth",))
    if name is not None and not _HEADER_NAME.match(name):
        raise ConfigError(f"{where('auth', key)}: {name!r} is not an HTTP header name (e.g. X-Auth-Token).")
    return name


def _cookie_name(auth: dict[str, Any], where: _Locator) -> str | None:
    name = _str(auth, "token_cookie", where, ("auth",))
    if name is not None and not _HEADER_NAME.match(name):
        raise ConfigError(f"{where('auth', 'token_cookie')}: {name!r} is not a cookie name (e.g. session).")
    return name


def _token_type(auth: dict[str, Any], default: str) -> str:
    token_type = auth.get("token_type", default)
    return "" if token_type is None else str(token_type)


def _token_path(auth: dict[str, Any], where: _Locator) -> str:
    path = _str(auth, "token_path", where, ("auth",), "access_token")
    return path or "access_token"


def _token_url(auth: dict[str, Any], where: _Locator, what: str, *, required: bool) -> str | None:
    if not auth.get("token_url"):
        if required:
            raise ConfigError(f"{where('auth')}: `auth.token_url` is missing; it is {what}.")
        return None
    url = str(auth["token_url"])
    _check_url(url, where("auth", "token_url"))
    return url


def _scope(auth: dict[str, Any], where: _Locator) -> str | None:
    """``scope: read write`` or a list, sent space-separated (RFC 6749 3.3)."""
    scope = auth.get("scope")
    if scope is None:
        return None
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        return " ".join(scope)
    if isinstance(scope, str):
        return scope
    raise ConfigError(f"{where('auth', 'scope')} must be text (`read write`) or a list of scopes, got {scope!r}.")


def _expiry(auth: dict[str, Any], where: _Locator, default: str | None) -> dict[str, Any]:
    """``expires_in_path`` and its compiled path, as AuthConfig keywords."""
    path = _str(auth, "expires_in_path", where, ("auth",), default)
    if not path:
        return {}
    return {"expires_in_path": path, "get_expires_in": compile_path(path, where("auth", "expires_in_path"))}


def _refresh_on(value: Any, where: _Locator) -> RefreshOn:
    """``refresh_on: {statuses: [403], body: "token expired"}``: what else means the token was rejected."""
    if value is None:
        return RefreshOn()
    spec = _check_keys(value, ("statuses", "body"), where, ("auth", "refresh_on"))
    statuses = spec.get("statuses", [])
    if isinstance(statuses, int) and not isinstance(statuses, bool):
        statuses = [statuses]
    if not isinstance(statuses, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
    ):
        raise ConfigError(
            f"{where('auth', 'refresh_on', 'statuses')} must be a list of HTTP status codes, e.g. [403], "
            f"got {statuses!r}."
        )
    body = spec.get("body")
    pattern = None
    if body is not None:
        if not isinstance(body, str) or not body:
            raise ConfigError(
                f"{where('auth', 'refresh_on', 'body')} must be a regular expression in quotes, e.g. "
                f'"token expired|invalid_token", got {body!r}.'
            )
        try:
            pattern = re.compile(body.encode("utf-8"))  # searched in the raw body: no decoding per call
        except re.error as exc:
            raise ConfigError(
                f"{where('auth', 'refresh_on', 'body')}: {body!r} is not a regular expression ({exc}). "
                "Escape special characters with a backslash, e.g. `token\\.expired`."
            ) from None
    success = sorted(s for s in statuses if 200 <= s < 300)
    if success and pattern is None:
        raise ConfigError(
            f"{where('auth', 'refresh_on', 'statuses')} lists {success[0]}, a success: every such answer would "
            "count as a rejected token. Add `body:` with a pattern of the API's error, e.g. `body: token expired`."
        )
    if not statuses and pattern is None:
        raise ConfigError(
            f'{where("auth", "refresh_on")} is empty. Give `statuses: [403]`, `body: "token expired"` or both '
            "(401 always counts)."
        )
    return RefreshOn(frozenset(statuses), pattern)


def _register_secrets(value: Any, redactor: Redactor, key: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _register_secrets(v, redactor, str(k))
    elif isinstance(value, list):
        for v in value:
            _register_secrets(v, redactor, key)
    elif isinstance(value, str) and _SECRET_KEY.search(key):
        redactor.add(value)


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
                retry["attempts"], where("retry", "attempts"), minimum=1, integer=True, what="a whole number"
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
