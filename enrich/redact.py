"""Keep secrets out of everything enrich prints, and never touch the user's data.

**Which values are secrets** (decided here, once):

- every token enrich is issued or signs;
- the credentials of ``auth``: ``token``, ``password``, ``client_secret``, the signing
  ``key`` (or the key file's text), and the Basic and client-credentials encodings of them;
- every value of the login request's ``auth.body``, whatever its key, except the keys that
  name who logs in (``IDENTITY_KEYS``: ``username``, ``email``, ``client_id``, ...), and
  the ``auth.headers`` whose name is a credential's;
- in ``request``: a fixed value (no ``{{column}}``) under a credential's name, as a header
  (``X-API-Key``, ``Authorization``), a query parameter (``api_key``, ``token``) or a body
  key (``secret``), and the ``${VAR}``s in such a value;
- a ``${VAR}`` whose name is a credential's (``${API_KEY}``, ``${ACME_PASSWORD}``), and
  every one listed in the config's ``secrets: [VAR, ...]``;
- the password of a URL enrich is given (a Redis journal, an input table), or its user name
  when it has no password (``https://TOKEN@host/``), and the values of its query parameters
  named like a credential (``?token=``, ``&X-Amz-Signature=``): ``url_secrets``, ``masked_url``.

A credential's name has one of the words of ``SECRET_WORDS`` (``key``, ``token``,
``secret``, ``password``, ...). Any other ``${VAR}`` (a tenant, a host, a user name) is
not a secret: it shows in dry runs and messages as it is.

**Where they are masked.** By provenance where enrich put them: the request shown by a dry
run, ``preview`` and the errors file is rendered from a twin of the request templates with
each secret replaced by ``***``, and the auth header or query parameter shown as ``***``.
Everything else enrich prints (errors, logs, the JSON log, ``--debug``) passes
``Redactor.redact``, which finds each secret in any form an API may echo it in (as is,
percent-encoded, JSON-escaped with ``\\/`` or ``\\u002B``, repr-escaped), as a last line of
defence. The data is never masked: the output table, the journal's answers and
``extract`` hold exactly what the API sent, and row values pass through untouched.

    >>> r = Redactor(["s3cr3t/value"])
    >>> r.redact('login with s3cr3t\\\\/value failed')
    'login with *** failed'
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

from .template import URL_LITERAL_SAFE, quote_query

MASK = "***"
# Shorter values would mask ordinary words ("1", "yes"); they are not secrets worth the name.
MIN_SECRET_LENGTH = 4
TOKENS_KEPT = 8  # issued tokens remembered (the current one and the few before it)

# A name (a header, a query parameter, a body key, an environment variable) that has one of
# these words names a credential: X-API-Key, api_key, access_token, ACME_PASSWORD, sig.
SECRET_WORDS = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "credential",
        "credentials",
        "jwt",
        "key",
        "pass",
        "passphrase",
        "passwd",
        "password",
        "pin",
        "private",
        "pwd",
        "secret",
        "session",
        "sig",
        "signature",
        "token",
    }
)
# Keys of a login body that say who logs in, not how: their values are not secrets.
IDENTITY_KEYS = frozenset(
    {
        "account",
        "account_id",
        "audience",
        "client_id",
        "email",
        "grant_type",
        "locale",
        "login",
        "org",
        "organization",
        "response_type",
        "scope",
        "tenant",
        "tenant_id",
        "type",
        "user",
        "user_id",
        "user_name",
        "username",
    }
)
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
# Words long enough to name a credential inside another word too: ACME_APITOKEN, SECRETKEY.
_SECRET_PARTS = re.compile(r"token|secret|passw|apikey|credential|signature|bearer|privatekey|cookie", re.IGNORECASE)
# The credentials of `auth`, whatever their value looks like.
_AUTH_CREDENTIALS = frozenset({"token", "password", "client_secret", "key"})


def secret_name(name: str) -> bool:
    """Whether ``name`` names a credential: ``X-API-Key``, ``api_key``, ``ACME_PASSWORD``,
    ``ACME_APITOKEN``; not ``author`` or ``monkey``."""
    words = {w.lower() for w in _WORD.findall(name)}
    return bool(words & SECRET_WORDS) or _SECRET_PARTS.search(name) is not None


def secret_position(path: tuple[str, ...]) -> bool:
    """Whether a value at this place of the config (``("auth", "body", "pw")``) is a credential."""
    if len(path) < 2:
        return False
    section, key = path[0], path[1]
    if section == "auth":
        if key in _AUTH_CREDENTIALS:
            return True
        if key == "body":
            keys = [p for p in path[2:] if not p.isdigit()]
            return not keys or keys[-1].lower() not in IDENTITY_KEYS
        return key == "headers" and len(path) > 2 and secret_name(path[2])
    if section == "request" and key in ("headers", "params", "body"):
        return any(secret_name(p) for p in path[2:] if not p.isdigit())
    return False


def _forms(secret: str) -> set[str]:
    """A secret as it appears in text: as is, escaped by repr() or JSON, percent-encoded in a URL."""
    forms = {
        secret,
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret, safe=URL_LITERAL_SAFE),
        quote_plus(secret, safe=""),
        quote_query(secret),  # as a query value is sent: `/` kept, `+` as %2B, space as +
    }
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def _hex(text: str) -> str:
    """A regex of hex digits in either case: ``2b`` -> ``2[bB]``."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in text)


_HTML_NAMED = {"&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos|#39", "/": "sol"}


def _char_pattern(ch: str) -> str:
    """Every way text may carry one character of a secret: itself; escaped for JSON (``\\uXXXX``,
    a pair outside the BMP, ``\\/``, ``\\"``), repr or a JSON string inside a JSON string (one
    backslash or more); percent-encoded in any case, once or twice (``%2B``, ``%252B``); ``+``
    for a space; and as an HTML entity (``&#x2F;``, ``&#47;``, ``&quot;``)."""
    alts = [re.escape(ch)]
    utf16 = ch.encode("utf-16-be", "surrogatepass")
    alts.append(r"\\+u" + r"\\+u".join(_hex(utf16[i : i + 2].hex()) for i in range(0, len(utf16), 2)))
    alts.append("".join("%(?:25)*" + _hex(f"{b:02X}") for b in ch.encode("utf-8", "surrogatepass")))
    if ch in "/\"'\\":
        alts.append(r"\\+" + re.escape(ch))
    if ch == " ":
        alts.append(r"\+")
    code = ord(ch)
    alts.append(f"&#(?:[xX]0*{_hex(f'{code:x}')}|0*{code});")
    if ch in _HTML_NAMED:
        alts.append(f"&(?:{_HTML_NAMED[ch]});")
    return "(?:" + "|".join(alts) + ")"


class Redactor:
    """A growing set of secrets; ``redact`` hides them in any text enrich prints."""

    __slots__ = ("_pattern", "_secrets", "_tokens")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        # The newest issued tokens only: a long run with short-lived tokens gets thousands, and
        # every one kept would slow every masking; tokens this old have long expired.
        self._tokens: deque[str] = deque(maxlen=TOKENS_KEPT)
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Remember one more secret (a password, a key); short values are ignored."""
        if not secret or len(secret) < MIN_SECRET_LENGTH or secret in self._secrets:
            return
        self._secrets.add(secret)
        self._compile()

    def add_token(self, token: str | None) -> None:
        """Remember an issued token; only the newest ``TOKENS_KEPT`` are kept."""
        if not token or len(token) < MIN_SECRET_LENGTH or token in self._tokens or token in self._secrets:
            return
        self._tokens.append(token)
        self._compile()

    def _compile(self) -> None:
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted({*self._secrets, *self._tokens}, key=len, reverse=True)
        self._pattern = re.compile("|".join("".join(map(_char_pattern, s)) for s in ordered))

    def redact(self, text: str) -> str:
        """Return ``text`` with every known secret, in any form, replaced by ``***``."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def redact_json(self, value: Any) -> Any:
        """Parsed JSON with every string (keys included) redacted: still JSON, whatever a secret looks like."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact(str(k)): self.redact_json(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact_json(v) for v in value]
        return value

    def snippet(self, body: bytes, limit: int = 200) -> str:
        """The start of a response body for a message: secrets masked first, then cut to ``limit``."""
        # Masking before cutting: a secret cut in half no longer matches, and its first half would show.
        scanned = body[: limit + 4096]
        text = self.redact(scanned.decode("utf-8", "replace"))
        more = len(text) > limit or len(body) > len(scanned)
        return text[:limit].strip().replace("\n", " ") + ("..." if more else "")

    @property
    def secrets(self) -> frozenset[str]:
        """The secrets known from the config (tokens left out)."""
        return frozenset(self._secrets)

    def __contains__(self, secret: object) -> bool:
        return secret in self._secrets or secret in self._tokens

    def __len__(self) -> int:
        return len(self._secrets) + len(self._tokens)

    def __repr__(self) -> str:
        return f"Redactor({len(self)} secrets)"


def url_secrets(url: str) -> list[str]:
    """The secrets ``url`` carries: its password (or its user name when it has no password, as in
    ``https://TOKEN@host/``), and the values of its query parameters named like a credential.

    >>> url_secrets("https://ana:pa55word@example.com/t.csv?token=abc123&gid=0")
    ['pa55word', 'abc123']
    """
    from yarl import URL

    try:
        parsed = URL(url)
    except ValueError:
        return []
    found = [parsed.password or parsed.user or ""]
    found += [value for name, value in parsed.query.items() if secret_name(name)]
    return [secret for secret in found if secret]


def masked_url(url: str) -> str:
    """``url`` as enrich shows it: each of ``url_secrets`` as ``***`` where it is, whatever its length.

    >>> masked_url("https://ana:pa55word@example.com/t.csv?token=abc123&gid=0")
    'https://ana:***@example.com/t.csv?token=***&gid=0'
    """
    from yarl import URL

    try:
        parsed = URL(url)
    except ValueError:
        return url
    if parsed.password:
        parsed = parsed.with_password(MASK)
    elif parsed.user:
        parsed = parsed.with_user(MASK)
    if any(secret_name(name) for name in parsed.query):
        parsed = parsed.with_query([(k, MASK if secret_name(k) else v) for k, v in parsed.query.items()])
    return str(parsed)
