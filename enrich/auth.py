"""Get, hold and refresh the token; build the auth header.

One login at the start. When a call is rejected (401), ``refresh(seen)`` fetches a
new token once, however many workers ask: the others wait for that one login, and
a stale 401 for a token that was already replaced triggers nothing.

    tokens = TokenManager(config.auth, redactor)
    await tokens.login(session)
    generation, name, value = tokens.header()       # ("Authorization", "Bearer eyJ...")
    ...                                             # the call came back 401:
    await tokens.refresh(session, generation)
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from .config import AuthConfig, RetryConfig
from .errors import AuthError
from .redact import Redactor


class TokenManager:
    """Holds the current token and its generation; single-flight refresh."""

    def __init__(
        self, config: AuthConfig, redactor: Redactor, retry: RetryConfig | None = None, timeout: float = 30.0
    ) -> None:
        self.config = config
        self.redactor = redactor
        self.retry = retry or RetryConfig()
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.generation = 0
        self.logins = 0
        self._accepted = 0  # the newest generation a call got through with
        self._token: str | None = None
        self._lock = asyncio.Lock()

    def header(self) -> tuple[int, str, str]:
        """The token's generation, and the header name and value to send with a call."""
        if self._token is None:
            raise RuntimeError("TokenManager.header() before login()")
        return self.generation, self.config.header, self.config.header_value(self._token)

    async def login(self, session: aiohttp.ClientSession) -> None:
        """Fetch the first token; raise ``AuthError`` saying what went wrong."""
        async with self._lock:
            await self._fetch(session)

    def accepted(self, generation: int) -> None:
        """A call sent with this generation's token was not rejected."""
        if generation > self._accepted:
            self._accepted = generation

    async def refresh(self, session: aiohttp.ClientSession, seen_generation: int) -> None:
        """Replace the token that the caller saw rejected, unless another caller already did.

        A token fetched by a refresh and rejected before any call got through means
        logging in again cannot help: the run stops instead of looping.
        """
        async with self._lock:
            if self.generation != seen_generation:
                return
            if self.generation > 1 and self._accepted < self.generation:
                raise AuthError(
                    self.redactor.redact(
                        f"the API rejected a freshly issued token (HTTP 401 right after logging in again at "
                        f"{self.config.url}). Check auth.header and auth.token_type (the API may want another "
                        'header, or the bare token with `token_type: ""`) and that this account may call request.url.'
                    )
                )
            await self._fetch(session)

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        cfg = self.config
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                async with session.request(
                    cfg.method, cfg.url, json=cfg.body, headers=dict(cfg.headers), timeout=self.timeout
                ) as resp:
                    body = await resp.read()
                    status, reason = resp.status, resp.reason or ""
            except (TimeoutError, aiohttp.ClientError) as exc:
                if attempt < attempts:
                    await asyncio.sleep(self.retry.backoff_for(attempt))
                    continue
                what = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
                raise AuthError(
                    self.redactor.redact(
                        f"login failed: cannot reach auth.url {cfg.url} ({what}). "
                        "Check that the API is running and that the URL is right."
                    )
                ) from None
            if status in self.retry.statuses and attempt < attempts:
                await asyncio.sleep(self.retry.backoff_for(attempt))
                continue
            break
        self.logins += 1
        if not 200 <= status < 300:
            raise AuthError(
                self.redactor.redact(
                    f"login failed: {cfg.method} {cfg.url} returned HTTP {status} {reason}"
                    f"{': ' + self.redactor.snippet(body) if body else ''}. Check the credentials in auth.body and "
                    "auth.headers, and the environment variables they use."
                )
            )
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise AuthError(
                self.redactor.redact(
                    f"login failed: the response of {cfg.url} (HTTP {status}) is not JSON: {self.redactor.snippet(body)!r}. "
                    "Check auth.url and auth.method."
                )
            ) from None
        token = cfg.get_token(doc)
        if isinstance(token, list):  # a JSONPath token_path yields a list of matches
            token = token[0] if token else None
        if not isinstance(token, str) or not token:
            keys = ", ".join(map(str, doc)) if isinstance(doc, dict) else type(doc).__name__
            found = "nothing" if token in (None, "") else f"a {type(token).__name__}, not a string"
            raise AuthError(
                f"login succeeded (HTTP {status}) but auth.token_path `{cfg.token_path}` found {found} "
                f"in the response (its top-level keys: {keys}). Set auth.token_path to where the token is, "
                "e.g. `access_token` or `data.session.jwt`."
            )
        self.redactor.add(token)
        self._token = token
        self.generation += 1
