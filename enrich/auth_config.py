"""The ``auth:`` block: one model per kind of auth, looked up by ``type`` (absent: ``login``).

Each kind declares the keys it takes (a key of another kind is refused, naming the kinds
that take it) and owns its behaviour: how it describes itself, how it gets a token, and
what to say when the API rejects one. ``AuthConfig`` is what every kind comes down to: a
token, and where each call carries it (a header, a cookie, a query parameter). Every secret
is registered with the config's ``Redactor`` as it is read, and a signing key is parsed
(and tried) once, here. ``config.py`` calls ``parse_auth`` for the ``auth:`` block::

    >>> from enrich.checks import _Locator
    >>> from enrich.model import Load
    >>> load = Load(_Locator("demo.yaml", {}), Redactor(), {})
    >>> parse_auth({"type": "bearer", "token": "s3cret"}, "demo.yaml: auth", load).describe()
    'a fixed token (auth.token in the config), sent as Authorization: Bearer <token>'
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol

from pydantic import Field

from .checks import _ENV, _HEADER_NAME, _check_keys, _check_url, _path, _string_map
from .errors import ConfigError, child_of
from .extract import compile_path
from .model import (
    NEEDED,
    Derived,
    Load,
    Parsed,
    Schema,
    Section,
    about,
    derived,
    did_you_mean,
    http_method,
    number,
    validate,
)
from .redact import Redactor, secret_position

if TYPE_CHECKING:
    import aiohttp

SIGNING_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "ES256")
_CLIENT_AUTH = ("basic", "body")
SECRET = Field(repr=False)  # a key whose value is a credential: never in repr


# --- refresh_on ---------------------------------------------------------------------------------


def _refresh_statuses(value: Any, where: str) -> frozenset[int]:
    statuses = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(statuses, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
    ):
        raise ConfigError(f"{where} must be a list of HTTP status codes, e.g. [403], got {statuses!r}.")
    return frozenset(statuses)


def _refresh_body(value: Any, where: str) -> re.Pattern[bytes] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f'{where} must be a regular expression in quotes, e.g. "token expired|invalid_token", got {value!r}.'
        )
    try:
        return re.compile(value.encode("utf-8"))  # searched in the raw body: no decoding per call
    except re.error as exc:
        raise ConfigError(
            f"{where}: {value!r} is not a regular expression ({exc}). "
            "Escape special characters with a backslash, e.g. `token\\.expired`."
        ) from None


class RefreshOn(Section):
    """Responses that mean "token rejected" besides a 401 (``auth.refresh_on``).

    With both keys a response must have one of ``statuses`` *and* a body that ``body``
    finds (a 403 that says `token expired`, not every 403); with one key, that one decides.
    """

    PATH = ("auth", "refresh_on")

    statuses: Annotated[
        frozenset[int],
        Parsed(
            _refresh_statuses,
            {
                "type": ["array", "integer"],
                "items": {"type": "integer", "minimum": 100, "maximum": 599},
                "minimum": 100,
                "maximum": 599,
            },
        ),
        about("HTTP statuses that mean the token was rejected, e.g. [403]."),
    ] = frozenset()
    body: Annotated[
        re.Pattern[bytes] | None,
        Parsed(_refresh_body, {"type": "string", "minLength": 1}),
        about(
            "A regular expression searched in the first 4 KiB of the response body.",
            examples=["token expired|invalid_token"],
        ),
    ] = None

    def finish(self, load: Load) -> RefreshOn:
        success = sorted(s for s in self.statuses if 200 <= s < 300)
        if success and self.body is None:
            raise ConfigError(
                f"{load.where('auth', 'refresh_on', 'statuses')} lists {success[0]}, a success: every such answer "
                "would count as a rejected token. Add `body:` with a pattern of the API's error, e.g. "
                "`body: token expired`."
            )
        if not self.statuses and self.body is None:
            raise ConfigError(
                f'{load.where("auth", "refresh_on")} is empty. Give `statuses: [403]`, `body: "token expired"` or '
                "both (401 always counts)."
            )
        return self


def _refresh_on(value: Any, where: str, load: Load) -> RefreshOn:
    return RefreshOn() if value is None else validate(RefreshOn, value, load)


RefreshOnKey = Annotated[
    RefreshOn,
    Parsed(_refresh_on, lambda: {**RefreshOn.model_json_schema(), "minProperties": 1}, load=True),
    about(
        "Responses besides 401 that mean the token was rejected: a listed status, a body the pattern finds, or "
        "(with both) a listed status whose body the pattern finds."
    ),
    Field(default_factory=RefreshOn),
]


# --- the kinds of value auth keys hold ------------------------------------------------------------


def _text(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where} must be a string, got {value!r}.")
    return str(value)


TEXT = Parsed(_text, {"type": "string", "minLength": 1})


def _header_name(value: Any, where: str) -> str | None:
    name = _text(value, where)
    if name is not None and not _HEADER_NAME.match(name):
        raise ConfigError(f"{where}: {name!r} is not an HTTP header name (e.g. X-Auth-Token).")
    return name


def _cookie_name(value: Any, where: str) -> str | None:
    name = _text(value, where)
    if name is not None and not _HEADER_NAME.match(name):
        raise ConfigError(f"{where}: {name!r} is not a cookie name (e.g. session).")
    return name


def _url(value: Any, where: str) -> str:
    _check_url(str(value), where)
    return str(value)


def _scope(value: Any, where: str) -> str | None:
    """``scope: read write`` or a list, sent space-separated (RFC 6749 3.3)."""
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return " ".join(value)
    if isinstance(value, str):
        return value
    raise ConfigError(f"{where} must be text (`read write`) or a list of scopes, got {value!r}.")


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def secret(example: str, *, empty_ok: bool = False, is_secret: bool = True, control_ok: bool = False) -> Parsed:
    """A credential: present, text, no line breaks; registered with the redactor unless it is a name
    (a user name or client id is no secret: see redact.py for which values are)."""

    def parse(value: Any, where: str, load: Load) -> str:
        if isinstance(value, (dict, list, bool)):
            raise ConfigError(f"{where} must be text, e.g. `{example}`.")
        value = str(value)
        if not value and not empty_ok:
            raise ConfigError(f"{where} is empty. Check the environment variable it reads, e.g. `{example}`.")
        if _CONTROL_CHARS.search(value) and not control_ok:
            raise ConfigError(
                f"{where} holds a line break or control character, which cannot go in an HTTP request. "
                "Check the value (a trailing newline from a file?)."
            )
        if is_secret:
            load.redactor.add(value)
        return value

    name = example.split(":")[0]
    return Parsed(
        parse,
        {"type": "string"} if empty_ok else {"type": "string", "minLength": 1},
        load=True,
        missing=f"`auth.{name}` is missing. Add it, e.g. `{example}`.",
    )


def _token_type(value: Any, where: str) -> str:
    return "" if value is None else str(value)


TOKEN_TYPE = Parsed(_token_type, {"type": ["string", "null"]})
HEADER = Parsed(_header_name, {"type": "string", "minLength": 1})
_HEADER_DOC = "The header the token goes in (type header: the header the API reads its key from)."
_TOKEN_TYPE_DOC = (
    'Put before the token in the auth header; "" (or null) sends the bare token. Default Bearer; for type header, "".'
)
_TOKEN_PATH_DOC = (
    "Where the token is in the login (or token URL's) response: a dot path (data.session.jwt) or a JSONPath "
    "($.data.token). Default for oauth2_client_credentials and jwt_signed: access_token."
)
_EXPIRES_DOC = (
    "Where the token's lifetime in seconds is in the login response; else the JWT's exp claim is read. The token "
    "is fetched again shortly before it ends. Default for oauth2_client_credentials and jwt_signed with token_url: "
    "expires_in."
)
_TOKEN_URL_DOC = (
    "oauth2_client_credentials: the token endpoint. jwt_signed: exchange the signed JWT there for an access token "
    "(RFC 7523)."
)
_SCOPE_DOC = (
    "oauth2_client_credentials, jwt_signed with token_url: the scopes to ask for, as text (space-separated) or a list."
)
_TOKEN_DOC = 'bearer / header: the fixed token or API key, from the environment: "${API_KEY}".'
_QUERY_DOC = "bearer / header: send the token as this query parameter instead of a header."
SCOPE = Parsed(_scope, {"type": ["string", "array"], "items": {"type": "string"}})
TokenPath = Annotated[str, TEXT, about(_TOKEN_PATH_DOC, examples=["access_token", "data.session.jwt"])]
ExpiresInPath = Annotated[str | None, TEXT, about(_EXPIRES_DOC, examples=["expires_in", "data.expires_in"])]
TokenType = Annotated[str, TOKEN_TYPE, about(_TOKEN_TYPE_DOC)]
Header = Annotated[str, HEADER, about(_HEADER_DOC, examples=["Authorization", "X-API-Key"])]
Scope = Annotated[str | None, SCOPE, about(_SCOPE_DOC)]
QueryParam = Annotated[str | None, TEXT, about(_QUERY_DOC, examples=["api_key"])]


def _token_url(missing: str = "") -> Parsed:
    return Parsed(_url, {"type": "string", "minLength": 1}, missing=missing, blank_is_missing=True)


def _unless(*others: str, then: str) -> Schema:
    """Schema: ``then`` is required unless one of ``others`` is there (the error names ``then``)."""
    # "type" makes jsonschema's best_match rank a missing key no higher than an unknown one.
    return {
        "if": {"not": {"anyOf": [{"required": [o]} for o in others]}},
        "then": {"type": "object", "required": [then]},
    }


# --- what the kinds share --------------------------------------------------------------------------


class TokenSource(Protocol):
    """What a kind needs of the token manager to get a token (``auth.TokenManager``)."""

    logins: int

    def now(self) -> float: ...

    def remember(self, token: str) -> None: ...

    async def exchange(
        self, session: aiohttp.ClientSession, *, headers: dict[str, str], json: Any = None, data: Any = None
    ) -> tuple[str, float | None]: ...


class AuthConfig(Section):
    """How to get the token and how each call carries it: what every kind of auth comes down to.

    ``url`` is the login URL, or the token URL of ``oauth2_client_credentials`` and of
    ``jwt_signed`` with ``token_url``; it is ``""`` for the kinds that fetch nothing.
    """

    PATH = ("auth",)
    kind: ClassVar[str] = ""
    static: ClassVar[bool] = (
        False  # a fixed token, key or password: nothing to fetch, refreshing cannot fix a rejection
    )
    # The schema rules of the kind besides its required keys (JSON Schema; the loader checks them too).
    schema_rules: ClassVar[tuple[Schema, ...]] = ()
    # For messages: what is requested and which key says where; what to check when it fails
    # (``{at}``: where the auth block is, `auth`, or `auths.acme` with steps).
    requested_as: ClassVar[tuple[str, str]] = ("token request", "{at}.token_url")
    credentials_hint: ClassVar[str] = (
        "Check the credentials in {at}.body and {at}.headers, and the environment variables they use."
    )

    type: Annotated[
        str,
        Parsed(lambda value, where: value, lambda: {"enum": list(AUTH_TYPES)}),
        about(
            "login (log in for a token), bearer / header (a fixed token or API key), basic (user and password), "
            "oauth2_client_credentials, jwt_signed (a JWT signed here)."
        ),
    ] = "login"
    # What every kind comes down to, in the order `auth` keys are listed (AUTH_KEYS).
    url: Derived[str] = derived(default="")
    method: Derived[str] = derived(default="POST")
    at: Derived[str] = derived(default="auth")  # where the block is in the config, for messages
    body: Derived[Any] = derived(default=None)  # credentials
    headers: Derived[Mapping[str, str]] = derived(default_factory=dict)
    token_path: Derived[str] = derived(default="")
    token_header: Derived[str | None] = derived(default=None)  # the login response header that holds the token
    token_cookie: Derived[str | None] = derived(default=None)  # the cookie that holds the token
    expires_in_path: Derived[str | None] = derived(default=None)
    refresh_on: Derived[RefreshOn] = derived(default_factory=RefreshOn)
    token_type: Derived[str] = derived(default="Bearer")
    # "Cookie": the token goes back as a cookie; "": it goes in the query string.
    header: Derived[str] = derived(default="Authorization")
    token: Derived[str | None] = derived(default=None)  # fixed tokens: the token (basic: base64 of user:password)
    query_param: Derived[str | None] = derived(default=None)  # fixed tokens: sent as this query parameter
    get_token: Derived[Any] = derived(default=None)
    get_expires_in: Derived[Any] = derived(default=None)
    secret_source: Derived[str] = derived(default="")  # for messages: where a fixed secret comes from

    @classmethod
    def prepare(cls, data: Any, load: Load) -> Any:
        data = _check_keys(data, cls.key_names(), load.where, cls.PATH)
        if data.get("refresh_on") is not None:  # every kind takes it: read first, before the kind's own keys
            data = {**data, "refresh_on": validate(RefreshOn, data["refresh_on"], load)}
        return super().prepare(data, load)

    @classmethod
    def kind_keys(cls) -> tuple[str, ...]:
        """The keys this kind takes besides ``type``."""
        return tuple(k for k in cls.key_names() if k != "type")

    def header_value(self, token: str) -> str:
        """The auth header's value: ``Bearer <token>``, the bare token when ``token_type`` is ``""``,
        or ``name=<token>`` when the token goes back as the cookie ``name``."""
        if self.header == "Cookie" and self.token_cookie:
            return f"{self.token_cookie}={token}"
        return f"{self.token_type} {token}" if self.token_type else token

    def sent_as(self, token: str) -> tuple[dict[str, str], dict[str, str]]:
        """The headers and query parameters a call carries, with ``token`` as the token (a mask for display).

        >>> HeaderAuth.model_construct(type="header", query_param="api_key").sent_as("***")
        ({}, {'api_key': '***'})
        """
        if self.query_param:
            return {}, {self.query_param: token}
        return {self.header: self.header_value(token)}, {}

    def sent_in(self) -> str:
        """Where a call carries the token, for messages."""
        if self.query_param:
            return f"the query parameter {self.query_param}"
        if self.header == "Cookie" and self.token_cookie:
            return f"the cookie {self.token_cookie}"
        return f"the {self.header} header"

    def _sent(self) -> str:
        headers, params = self.sent_as("<token>")
        if params:
            return f"query parameter {next(iter(params))}=<token>"
        return ", ".join(f"{k}: {v}" for k, v in headers.items())

    def _source(self) -> str:
        if self.token_path:
            return f"token at {self.token_path}"
        if self.token_header:
            return f"token in the {self.token_header} header"
        return f"token in the {self.token_cookie} cookie"

    def describe(self) -> str:
        """One line for ``enrich validate``: where the token comes from and how it is sent (no secret)."""
        return f"log in at {self.url}; {self._source()}; sent as {self._sent()}"

    async def fetch(self, tokens: TokenSource, session: aiohttp.ClientSession) -> tuple[str, float | None]:
        """A new token and the seconds it lives (None: unknown)."""
        raise NotImplementedError(f"auth type {self.type} fetches no token")

    def static_rejected(self) -> str:
        """What to say when the API rejects a fixed secret (``static`` kinds)."""
        raise NotImplementedError

    def fresh_rejected(self) -> str:
        """What to say when the API rejects a token just fetched."""
        fix = (
            f"that the API reads the token from {self.sent_in()} (set auth.header to send it in a header)"
            if self.header == "Cookie"
            else "auth.header and auth.token_type (the API may want another header, or the bare token with "
            '`token_type: ""`)'
        )
        return (
            "the API rejected a freshly issued token (HTTP 401 or an auth.refresh_on match right after getting a "
            f"new one from {self.url}). Check {fix}, and that this account may call request.url."
        )

    def _paths(self, load: Load, token_path: str, expires_in_path: str | None) -> dict[str, Any]:
        """The token's and its lifetime's paths, compiled (derived fields)."""
        out: dict[str, Any] = {"token_path": token_path, "expires_in_path": expires_in_path or None}
        out["get_token"] = compile_path(token_path, load.where("auth", "token_path")) if token_path else None
        if expires_in_path:
            out["get_expires_in"] = compile_path(expires_in_path, load.where("auth", "expires_in_path"))
        return out


# --- the kinds -------------------------------------------------------------------------------------


def _login_body(value: Any, where: str, load: Load) -> Any:
    if isinstance(value, str):
        import orjson

        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ConfigError(f"{where} is a string but not valid JSON; write it as a YAML mapping.") from None
    _register_secrets(value, load.redactor, ("auth", "body"))
    return value


def _login_headers(value: Any, where: str, load: Load) -> dict[str, str]:
    headers = {k: str(v) for k, v in _string_map(value, where).items()}
    _register_secrets(headers, load.redactor, ("auth", "headers"))
    return headers


class LoginAuth(AuthConfig):
    """``type: login`` (the default): log in at ``url`` for a token (Clay's JWT inputs)."""

    kind = "login"
    requested_as = ("login", "{at}.url")
    schema_rules = (_unless("token_header", "token_cookie", then="token_path"),)

    url: Annotated[
        str,
        _token_url("`auth.url` is missing; it is the login endpoint that returns the token."),
        about("login: the login endpoint that returns the token.", examples=["https://api.example.com/auth/token"]),
    ] = NEEDED
    method: Annotated[str, http_method("POST"), about("login: the login's HTTP method.")] = "POST"
    body: Annotated[
        Any,
        Parsed(_login_body, {"type": ["object", "array", "string"]}, load=True),
        about(
            "login: the login body, sent as JSON: a YAML mapping (or JSON text). Use ${VAR} for credentials: "
            '{client_id: "${API_CLIENT_ID}"}.'
        ),
        SECRET,
    ] = None
    headers: Annotated[
        Mapping[str, str],
        Parsed(
            _login_headers,
            {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
            load=True,
        ),
        about("login: extra headers for the login call."),
        SECRET,
    ] = Field(default_factory=dict)
    token_path: Annotated[
        str,
        Parsed(lambda value, where: str(value) if value else "", {"type": "string", "minLength": 1}),
        about(_TOKEN_PATH_DOC, examples=["access_token", "data.session.jwt"]),
    ] = ""
    token_header: Annotated[
        str | None,
        HEADER,
        about("login: the token is in this response header instead of the body.", examples=["X-Auth-Token"]),
    ] = None
    token_cookie: Annotated[
        str | None,
        Parsed(_cookie_name, {"type": "string", "minLength": 1}),
        about(
            "login: the token is in this cookie of the login response (unless token_path says otherwise), and goes "
            "back as `Cookie: <name>=<token>` unless `header` is set.",
            examples=["session"],
        ),
    ] = None
    expires_in_path: ExpiresInPath = None
    token_type: TokenType = "Bearer"
    # Not checked as a header name here, as it never was: only that it is text.
    header: Annotated[str, TEXT, about(_HEADER_DOC, examples=["Authorization", "X-API-Key"])] = "Authorization"
    refresh_on: RefreshOnKey

    def finish(self, load: Load) -> LoginAuth:
        where, given = load.where, self.model_fields_set
        if self.token_path and self.token_header:
            raise ConfigError(
                f"{where('auth', 'token_header')}: the token has one place: auth.token_path (in the JSON body) or "
                "auth.token_header (a response header), not both. Remove one."
            )
        if not self.token_path and not self.token_header and not self.token_cookie:
            raise ConfigError(
                f"{where('auth')}: `auth.token_path` is missing. Say where the token is in the login response, "
                "e.g. `token_path: access_token` or `token_path: data.session.jwt`."
            )
        as_cookie = self.token_cookie is not None and "header" not in given
        if as_cookie and "token_type" in given:
            raise ConfigError(
                f"{where('auth', 'token_type')}: the token goes back as the cookie {self.token_cookie} "
                f"(`Cookie: {self.token_cookie}=<token>`), which has no token type. Remove token_type, or set "
                "`header: Authorization` to send the token in a header instead."
            )
        return self.derive(
            token_type="" if as_cookie else self.token_type,
            header="Cookie" if as_cookie else self.header or "Authorization",
            **self._paths(load, self.token_path or "", self.expires_in_path),
        )

    async def fetch(self, tokens: TokenSource, session: aiohttp.ClientSession) -> tuple[str, float | None]:
        return await tokens.exchange(session, json=self.body, headers=dict(self.headers))


class StaticAuth(AuthConfig):
    """A fixed secret, checked and masked: nothing is fetched, nothing refreshed."""

    static = True

    def _secret_source(self, load: Load, keys: tuple[str, ...]) -> str:
        """Where the secrets of ``keys`` come from, for a message: the ${VAR}s, or the keys of the config."""
        raw = load.raw.get("auth")
        raw = raw if isinstance(raw, dict) else {}
        names = [n for k in keys for n, _ in _ENV.findall(str(raw.get(k, "")))]
        if names:
            listed = ", ".join(dict.fromkeys(names))
            return f"the environment variable{'s' if len(set(names)) > 1 else ''} {listed}"
        return " and ".join(f"auth.{k}" for k in keys) + " in the config"


class FixedTokenAuth(StaticAuth):
    """``bearer`` and ``header``: a fixed token or API key, in a header or the query string."""

    def finish(self, load: Load) -> FixedTokenAuth:
        given = self.model_fields_set
        if self.query_param is not None:
            if not self.query_param.strip():
                raise ConfigError(f"{load.where('auth', 'query_param')} is empty; name the parameter, e.g. `api_key`.")
            for key in ("header", "token_type"):
                if key in given:
                    raise ConfigError(
                        f"{load.where('auth', key)}: the token goes in the query parameter {self.query_param}, so "
                        f"there is no header to name or type. Remove {key}, or remove query_param to send the "
                        "token in a header."
                    )
        elif self.needs_header and "header" not in given:
            raise ConfigError(
                f"{load.where('auth')}: `type: header` sends the key in a header you name: add `header: X-API-Key` "
                "(the header the API reads), or `query_param: api_key` to send it in the URL."
            )
        return self.derive(
            token_type="" if self.query_param else self.token_type,
            header="" if self.query_param else self.header or "Authorization",
            secret_source=self._secret_source(load, ("token",)),
        )

    needs_header: ClassVar[bool] = False

    def describe(self) -> str:
        return f"a fixed token ({self.secret_source}), sent as {self._sent()}"

    def static_rejected(self) -> str:
        fix = (
            "and auth.query_param (the parameter the API reads)"
            if self.query_param
            else 'and auth.header and auth.token_type (the API may want another header, or `token_type: ""`)'
        )
        return (
            f"the API rejected the token sent in {self.sent_in()} (HTTP 401 or an auth.refresh_on match); a "
            f"fixed token cannot be refreshed. Check auth.token ({self.secret_source}) {fix}, and that the key "
            "may call request.url."
        )


class BearerAuth(FixedTokenAuth):
    """``type: bearer``: a fixed token, sent as ``Authorization: Bearer <token>`` unless said otherwise."""

    kind = "bearer"

    token: Annotated[str, secret('token: "${API_TOKEN}"'), about(_TOKEN_DOC, examples=["${API_KEY}"]), SECRET] = NEEDED
    header: Header = "Authorization"
    token_type: TokenType = "Bearer"
    query_param: QueryParam = None
    refresh_on: RefreshOnKey


class HeaderAuth(FixedTokenAuth):
    """``type: header``: a fixed API key in the header the API reads (or a query parameter)."""

    kind = "header"
    needs_header = True
    schema_rules = (_unless("query_param", then="header"),)

    token: Annotated[str, secret('token: "${API_KEY}"'), about(_TOKEN_DOC, examples=["${API_KEY}"]), SECRET] = NEEDED
    header: Header = "Authorization"
    token_type: TokenType = ""
    query_param: QueryParam = None
    refresh_on: RefreshOnKey


def _username(value: Any, where: str, load: Load) -> str:
    name = secret('username: "${API_USER}"', is_secret=False).parse(value, where, load)
    if ":" in name:
        raise ConfigError(
            f"{where} holds a colon, which HTTP Basic cannot carry in a user name (RFC 7617). Check the value."
        )
    return str(name)


class BasicAuth(StaticAuth):
    """``type: basic``: HTTP Basic, a user name and a password."""

    kind = "basic"

    username: Annotated[
        str,
        Parsed(
            _username,
            {"type": "string", "minLength": 1},
            load=True,
            missing='`auth.username` is missing. Add it, e.g. `username: "${API_USER}"`.',
        ),
        about("basic: the user name.", examples=["${API_USER}"]),
    ] = NEEDED
    password: Annotated[
        str,
        secret('password: "${API_PASSWORD}"', empty_ok=True),
        about("basic: the password.", examples=["${API_PASSWORD}"]),
        SECRET,
    ] = NEEDED
    refresh_on: RefreshOnKey

    def finish(self, load: Load) -> BasicAuth:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        load.redactor.add(token)  # `Basic <this>` carries both
        return self.derive(
            token=token, token_type="Basic", secret_source=self._secret_source(load, ("username", "password"))
        )

    def describe(self) -> str:
        return f"HTTP Basic ({self.secret_source}), sent as Authorization: Basic <credentials>"

    def static_rejected(self) -> str:
        return (
            f"the API rejected the Basic credentials (HTTP 401 or an auth.refresh_on match); a fixed password "
            f"cannot be refreshed. Check auth.username and auth.password ({self.secret_source}) and that this "
            "account may call request.url."
        )


def _client_auth(value: Any, where: str) -> str:
    if str(value) not in _CLIENT_AUTH:
        raise ConfigError(
            f"{where}: {str(value)!r} is not a way to send the client credentials. Use `basic` (an Authorization: "
            "Basic header, the standard way) or `body` (client_id and client_secret in the form body)."
        )
    return str(value)


def client_basic(client_id: str, client_secret: str) -> str:
    """RFC 6749 2.3.1: ``base64(urlencode(id):urlencode(secret))``, the value after `Basic `."""
    from urllib.parse import quote_plus

    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return base64.b64encode(pair.encode()).decode("ascii")


class OAuth2Auth(AuthConfig):
    """``type: oauth2_client_credentials`` (RFC 6749 4.4): client id and secret -> an access token."""

    kind = "oauth2_client_credentials"
    credentials_hint = (
        "Check {at}.client_id and {at}.client_secret (and the environment variables they use), "
        "{at}.client_auth (`basic` or `body`: the server may want the other), {at}.scope and {at}.audience."
    )

    token_url: Annotated[
        str,
        _token_url("`auth.token_url` is missing; it is the authorization server's token endpoint."),
        about(_TOKEN_URL_DOC, examples=["https://auth.example.com/oauth/token"]),
    ] = NEEDED
    client_id: Annotated[
        str,
        secret('client_id: "${API_CLIENT_ID}"', is_secret=False),
        about("oauth2_client_credentials: the client id.", examples=["${API_CLIENT_ID}"]),
    ] = NEEDED
    client_secret: Annotated[
        str,
        secret('client_secret: "${API_CLIENT_SECRET}"'),
        about("oauth2_client_credentials: the client secret.", examples=["${API_CLIENT_SECRET}"]),
        SECRET,
    ] = NEEDED
    client_auth: Annotated[
        str,
        Parsed(_client_auth, {"enum": list(_CLIENT_AUTH)}),
        about(
            "oauth2_client_credentials: send the client id and secret as HTTP Basic (basic) or in the form body (body)."
        ),
    ] = "basic"
    scope: Scope = None
    audience: Annotated[
        str | None, TEXT, about("oauth2_client_credentials: the audience to ask for (Auth0 and others).")
    ] = None
    token_path: TokenPath = "access_token"
    expires_in_path: ExpiresInPath = "expires_in"
    token_type: TokenType = "Bearer"
    header: Header = "Authorization"
    refresh_on: RefreshOnKey

    def finish(self, load: Load) -> OAuth2Auth:
        if self.client_auth == "basic":
            # RFC 6749 2.3.1: each part is form-encoded before the pair is base64-encoded.
            load.redactor.add(client_basic(self.client_id, self.client_secret))
        return self.derive(
            url=self.token_url,
            header=self.header or "Authorization",
            **self._paths(load, self.token_path or "access_token", self.expires_in_path),
        )

    def describe(self) -> str:
        return (
            f"client credentials ({self.client_auth}) exchanged at {self.url}; {self._source()}; sent as {self._sent()}"
        )

    def form(self) -> dict[str, str]:
        """The form of a client-credentials grant (RFC 6749 4.4.2)."""
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        if self.audience:
            form["audience"] = self.audience
        if self.client_auth == "body":
            form["client_id"] = self.client_id
            form["client_secret"] = self.client_secret
        return form

    def request_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.client_auth == "basic":
            headers["Authorization"] = f"Basic {client_basic(self.client_id, self.client_secret)}"
        return headers

    async def fetch(self, tokens: TokenSource, session: aiohttp.ClientSession) -> tuple[str, float | None]:
        return await tokens.exchange(session, data=self.form(), headers=self.request_headers())


JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 2.1
_ALGORITHM_FIX = "Use HS256, HS384 or HS512 (a shared secret in auth.key) or RS256, ES256 (a private key in PEM)."


def _algorithm(value: Any, where: str) -> str:
    if value not in SIGNING_ALGORITHMS:
        raise ConfigError(f"{where}: {value!r} is not an algorithm enrich signs with. {_ALGORITHM_FIX}")
    return str(value)


def _signing_secret(value: Any, where: str, load: Load) -> str | None:
    given = load.given[-1]
    if ("key" in given) == ("key_file" in given):
        raise ConfigError(
            f'{load.where("auth")}: give the signing key once: `key: "${{SIGNING_KEY}}"` (a secret or a PEM key '
            "from the environment) or `key_file: keys/service.pem`" + (", not both." if "key" in given else ".")
        )
    if "key" not in given:
        return None
    parsed = secret('key: "${SIGNING_KEY}"', control_ok=True)
    if value is None:
        raise ConfigError(f"{load.where('auth')}: {parsed.missing}")
    key = parsed.parse(value, where, load)
    if "-----BEGIN" in key and "\\n" in key and "\n" not in key.strip():
        key = key.replace("\\n", "\n")  # a PEM key squeezed onto one line for an environment variable
        load.redactor.add(key)
    return str(key)


def _claims(value: Any, where: str) -> dict[str, Any]:
    claims = _string_map(value, where)
    import json  # what PyJWT encodes the claims with

    try:
        json.dumps(claims)
    except TypeError as exc:
        raise ConfigError(
            f"{where}: a value is not JSON ({exc}). Quote dates and times, or give them as seconds since 1970."
        ) from None
    for reserved in ("iat", "exp"):
        if reserved in claims:
            raise ConfigError(
                f"{child_of(where, reserved)}: {reserved} is set when the token is signed, from auth.lifetime (seconds, "
                "default 300). Remove it from claims."
            )
    return claims


def _key_file(value: Any, where: str, load: Load) -> str:
    path = _path(value, where)
    try:
        key = path.read_text(encoding="utf-8") if path is not None else ""
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(
            f"{where}: cannot read {path} ({reason}). Check the path; it is relative to the folder you run enrich from."
        ) from None
    load.redactor.add(key)
    load.redactor.add(key.strip())
    return str(path)


def _only_with_token_url(parse: Parsed) -> Parsed:
    """A key about the token URL's answer: refused without ``token_url`` (then parsed as ``parse``)."""

    def only(value: Any, where: str, load: Load) -> Any:
        if not load.fields.get("token_url"):
            raise ConfigError(
                f"{where} applies only with auth.token_url (a signed JWT exchanged for an access token); without "
                "it the signed JWT itself is the token. Add `token_url:`, or remove the key."
            )
        return parse.parse(value, where)

    return Parsed(only, parse.schema, load=True)


class JwtSignedAuth(AuthConfig):
    """``type: jwt_signed``: a JWT signed here with ``key``: the token itself, or an assertion for
    ``token_url`` (RFC 7523)."""

    kind = "jwt_signed"
    credentials_hint = (
        "Check {at}.key and {at}.algorithm (the server must know the key) and {at}.claims "
        "(iss, sub and aud are what a token endpoint usually checks)."
    )
    schema_rules = (
        _unless("key_file", then="key"),
        {"not": {"required": ["key", "key_file"]}},
        # scope, token_path and expires_in_path are about the token URL's answer
        {"dependencies": {k: ["token_url"] for k in ("scope", "token_path", "expires_in_path")}},
    )

    algorithm: Annotated[
        str,
        Parsed(
            _algorithm,
            {"enum": list(SIGNING_ALGORITHMS)},
            missing=f"`auth.algorithm` is missing. {_ALGORITHM_FIX}",
        ),
        about("jwt_signed: HS256, HS384, HS512 (a shared secret) or RS256, ES256 (a private key)."),
    ] = NEEDED
    key: Annotated[
        str | None,
        Parsed(_signing_secret, {"type": "string", "minLength": 1}, load=True),
        about('jwt_signed: the signing key, from the environment: "${SIGNING_KEY}".'),
        SECRET,
    ] = Field(default=None, validate_default=True)
    key_file: Annotated[
        str | None,
        Parsed(_key_file, {"type": "string", "minLength": 1}, load=True),
        about("jwt_signed: a file holding the signing key (PEM for RS256 and ES256)."),
    ] = None
    claims: Annotated[
        Mapping[str, Any],
        Parsed(_claims, {"type": "object", "propertyNames": {"not": {"enum": ["iat", "exp"]}}}),
        about("jwt_signed: the token's claims (iss, sub, aud and your own); iat and exp are set when it is signed."),
        SECRET,
    ] = Field(default_factory=dict)
    lifetime: Annotated[
        float, number(minimum=1), about("jwt_signed: seconds from iat to exp; signed again before it ends.")
    ] = 300.0
    token_url: Annotated[
        str | None,
        Parsed(lambda value, where: _url(value, where) if value else None, {"type": "string", "minLength": 1}),
        about(_TOKEN_URL_DOC, examples=["https://auth.example.com/oauth/token"]),
    ] = None
    scope: Annotated[str | None, _only_with_token_url(SCOPE), about(_SCOPE_DOC)] = None
    token_path: Annotated[
        str, _only_with_token_url(TEXT), about(_TOKEN_PATH_DOC, examples=["access_token", "data.session.jwt"])
    ] = ""
    expires_in_path: Annotated[
        str | None, _only_with_token_url(TEXT), about(_EXPIRES_DOC, examples=["expires_in", "data.expires_in"])
    ] = None
    token_type: TokenType = "Bearer"
    header: Header = "Authorization"
    refresh_on: RefreshOnKey
    signing_key: Derived[Any] = derived(default=None)  # the key, parsed once

    def finish(self, load: Load) -> JwtSignedAuth:
        where = load.where
        key = Path(self.key_file).read_text(encoding="utf-8") if self.key_file else self.key or ""
        signing_key = _signing_key(key, self.algorithm, where("auth", "key_file" if self.key_file else "key"))
        paths = (
            self._paths(load, self.token_path or "access_token", self.expires_in_path or "expires_in")
            if self.token_url
            else {}
        )
        return self.derive(
            url=self.token_url or "", header=self.header or "Authorization", signing_key=signing_key, **paths
        )

    def describe(self) -> str:
        if not self.url:
            return f"a JWT signed here ({self.algorithm}, {self.lifetime:g}s), sent as {self._sent()}"
        return f"a JWT signed here ({self.algorithm}) exchanged at {self.url}; {self._source()}; sent as {self._sent()}"

    def fresh_rejected(self) -> str:
        if self.url:
            return super().fresh_rejected()
        return (
            "the API rejected a freshly issued token (HTTP 401 or an auth.refresh_on match right after signing a "
            f"new one ({self.algorithm})). Check auth.claims (iss, sub and aud must be what the API expects), "
            "auth.key and auth.algorithm (the API must know the key), and that this account may call request.url."
        )

    def sign(self, now: float) -> tuple[str, float]:
        """A new JWT from ``claims``, with ``iat`` now and ``exp`` ``lifetime`` later; its seconds left."""
        import warnings

        import jwt

        iat = int(now)  # a whole second, not after now: servers reject an `iat` in the future
        exp = iat + self.lifetime
        claims = {**self.claims, "iat": iat, "exp": int(exp) if exp.is_integer() else exp}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyJWT warns on short HMAC secrets; the API chose the secret
            token = jwt.encode(claims, self.signing_key, algorithm=self.algorithm)
        return token, exp - now

    async def fetch(self, tokens: TokenSource, session: aiohttp.ClientSession) -> tuple[str, float | None]:
        assertion, left = self.sign(tokens.now())
        tokens.remember(assertion)
        if not self.url:
            tokens.logins += 1
            return assertion, left
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
        if self.scope:
            form["scope"] = self.scope
        return await tokens.exchange(session, data=form, headers={"Accept": "application/json"})


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


# --- the kinds by name -----------------------------------------------------------------------------

AUTH_KINDS: dict[str, type[AuthConfig]] = {
    cls.kind: cls for cls in (LoginAuth, BearerAuth, HeaderAuth, BasicAuth, OAuth2Auth, JwtSignedAuth)
}
AUTH_TYPES = tuple(AUTH_KINDS)
STATIC_AUTH_TYPES = frozenset(name for name, cls in AUTH_KINDS.items() if cls.static)
# Which keys each kind takes besides `type`; any other key of AUTH_KEYS is refused for that kind.
AUTH_TYPE_KEYS: dict[str, tuple[str, ...]] = {name: cls.kind_keys() for name, cls in AUTH_KINDS.items()}
# `type`, what every kind comes down to (in AuthConfig's order), then the keys of one kind or two.
_TAKEN = {k for keys in AUTH_TYPE_KEYS.values() for k in keys}
AUTH_KEYS = (
    "type",
    *dict.fromkeys(
        [*(k for k in AuthConfig.model_fields if k in _TAKEN), *(k for ks in AUTH_TYPE_KEYS.values() for k in ks)]
    ),
)


def parse_auth(value: Any, where: str, load: Load) -> AuthConfig | None:
    """``auth:`` -> the model of its ``type``: the keys of that kind only, each checked; every secret registered."""
    if value is None:
        return None
    auth = _check_keys(value, AUTH_KEYS, load.where, ("auth",))
    kind = auth.get("type", "login")
    if not isinstance(kind, str) or kind not in AUTH_KINDS:
        close = did_you_mean(str(kind), AUTH_TYPES)
        raise ConfigError(
            f"{load.where('auth', 'type')}: {kind!r} is not a kind of auth. Use one of: {', '.join(AUTH_TYPES)}."
            + (f" Did you mean `type: {close}`?" if close else "")
        )
    for key in auth:
        if key != "type" and key not in AUTH_TYPE_KEYS[kind]:
            raise ConfigError(_not_for_type(key, kind, load))
    return validate(AUTH_KINDS[kind], auth, load)


def _not_for_type(key: str, kind: str, load: Load) -> str:
    takes = [t for t in AUTH_TYPES if key in AUTH_TYPE_KEYS[t]]
    fix = f" Remove it, or use `type: {takes[0]}`" + (f" (or {', '.join(takes[1:])})" if takes[1:] else "") + "."
    return (
        f"{load.where('auth', key)} does not apply to `type: {kind}`, which takes: "
        f"{', '.join(AUTH_TYPE_KEYS[kind])}.{fix if takes else ''}"
    )


def auth_schema() -> Schema:
    """The editor schema of ``auth:``: every kind's keys in one object, and per kind (``type``) its
    required keys, its own rules, and no key of another kind."""
    properties: Schema = {}
    rules = []
    for name, cls in AUTH_KINDS.items():
        own = cls.model_json_schema()
        for key in cls.key_names():
            properties.setdefault(key, own["properties"][key])
        # No `type` is `login`: `properties` passes when the key is absent.
        when: Schema = {"properties": {"type": {"const": name}}}
        if name != "login":
            when["required"] = ["type"]
        needed = [name for name, _ in cls.needed()]
        # "type" makes jsonschema's best_match rank a missing key no higher than an unknown one.
        required = [{"type": "object", "required": needed}] if needed else []
        # A key of another kind: "'client_id' is not one of ['type', 'token', ...]", the keys this kind takes.
        names = {"propertyNames": {"enum": ["type", *cls.kind_keys()]}}
        rules.append({"if": when, "then": {"allOf": [*required, *cls.schema_rules, names]}})
    return {
        "type": "object",
        "additionalProperties": False,
        "allOf": rules,
        "properties": {k: properties[k] for k in AUTH_KEYS},
    }


def _register_secrets(value: Any, redactor: Redactor, path: tuple[str, ...]) -> None:
    """Register the values at credential places of the login request (redact.py says which)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _register_secrets(v, redactor, (*path, str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _register_secrets(v, redactor, (*path, str(i)))
    elif isinstance(value, str) and secret_position(path):
        redactor.add(value)
