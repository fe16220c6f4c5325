"""Keep secrets out of everything a user or a log can see.

A ``Redactor`` holds the secret strings of one run: every ``${VAR}`` value from the
config and every token the API hands out. ``redact(text)`` replaces each of them
with ``***``. The CLI passes all it prints through it; the engine passes every row
error through it before it reaches the output table.

    >>> r = Redactor(["s3cr3t-value"])
    >>> r.redact("login with s3cr3t-value failed")
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


class Redactor:
    """A growing set of secrets and a function that hides them in text."""

    __slots__ = ("_bytes_pattern", "_pattern", "_secrets", "_tokens")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        # The newest issued tokens only: a long run with short-lived tokens gets thousands, and
        # every one kept would slow every masking; tokens this old have long expired.
        self._tokens: deque[str] = deque(maxlen=TOKENS_KEPT)
        self._pattern: re.Pattern[str] | None = None
        self._bytes_pattern: re.Pattern[bytes] | None = None
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
        ordered = sorted(set().union(*map(_forms, (*self._secrets, *self._tokens))), key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
        self._bytes_pattern = re.compile(b"|".join(re.escape(s.encode()) for s in ordered))

    def only_in(self, texts: Iterable[str]) -> Redactor:
        """A redactor of just the secrets that occur (in any form) in ``texts``: often none, so free."""
        texts = list(texts)
        return Redactor(s for s in self._secrets if any(f in t for f in _forms(s) for t in texts))

    def redact(self, text: str) -> str:
        """Return ``text`` with every known secret replaced by ``***``."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def redact_bytes(self, data: bytes) -> bytes:
        """``data`` (a response body) with every known secret replaced by ``***``; the same object
        when it holds none, which is the common case and costs one scan (``is not data`` tells)."""
        if self._bytes_pattern is None or not data or not self._bytes_pattern.search(data):
            return data
        return self._bytes_pattern.sub(MASK.encode(), data)

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

    def __contains__(self, secret: object) -> bool:
        return secret in self._secrets or secret in self._tokens

    def __len__(self) -> int:
        return len(self._secrets) + len(self._tokens)

    def __repr__(self) -> str:
        return f"Redactor({len(self)} secrets)"
