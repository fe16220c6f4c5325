"""The ``auth:`` block -> a validated, frozen ``AuthConfig`` (how to get the token, how calls carry it).

Each ``auth.type`` takes its own keys (``AUTH_TYPE_KEYS``); a key of another type is
refused with the type that takes it. Every secret is registered with the config's
``Redactor`` as it is read, and a signing key is parsed (and tried) once, here.
``config.py`` calls ``_auth`` for the ``auth:`` block of a config:

    >>> from enrich.checks import _Locator
    >>> auth = _auth({"type": "bearer", "token": "s3cret"}, _Locator("demo.yaml", {}), Redactor())
    >>> auth.describe()
    'a fixed token (auth.token in the config), sent as Authorization: Bearer <token>'
"""

from __future__ import annotations

import base64
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .checks import _ENV, _HEADER_NAME, _check_keys, _check_url, _Locator, _method, _number, _path, _str, _string_map
from .errors import ConfigError
from .extract import compile_path
from .redact import Redactor, secret_position

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
    _register_secrets(body, redactor, ("auth", "body"))
    _register_secrets(headers, redactor, ("auth", "headers"))
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
    """A credential: present, text, no line breaks; registered with the redactor unless it is a name
    (a user name or client id is no secret: see redact.py for which values are)."""
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
