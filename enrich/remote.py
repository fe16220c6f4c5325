"""Tables from a URL: an ``http(s)://`` input fetched once, at the start, to a local file.

    path, fetched = local_input("https://example.com/leads.csv?token=abc", config)
    path               # /tmp/enrich-input-k2j3/leads.csv: what the command reads, twice if it runs
    fetched.url        # https://example.com/leads.csv?token=***: what enrich shows of it
    fetched.sha256     # of the bytes as served; the summary records it

The body is streamed to a file in a folder of its own under the system's temporary folder
(``TMPDIR``), never held in memory, and removed when the ``Fetched`` is dropped (the job that
holds it is done) or the process exits. It goes through the config's ``tls:`` and ``timeout``
(no byte for that long is a timeout), follows redirects (never from https:// down to
http://), and stops at ``MAX_INPUT_BYTES``.

What kind of table it is comes from, in order: ``#format=csv`` at the end of the URL (a
fragment: never sent to the server), the path's suffix (``.csv``, ``.parquet``, ``.xlsx``...),
a ``format=``/``output=`` query parameter (Google Sheets' export links), the file name the
server gives (Content-Disposition), its Content-Type, and Parquet's magic bytes.

A 4xx is the URL's fault (``InputError``, exit 2); no connection, a timeout, a 5xx or a body cut
short may pass (``InputUnavailable``, exit 3: run again later); a certificate that cannot be
verified is a ``TLSError`` (exit 3). Each message names the URL with its secrets as ``***``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .config import TLSConfig, input_location
from .errors import InputError, InputUnavailable, TLSError
from .redact import Redactor, masked_url
from .tables import READ_FORMATS

if TYPE_CHECKING:
    import aiohttp
    from yarl import URL

    from .config import Config

# A published spreadsheet is megabytes; this bounds a wrong link (a video, an endless stream).
MAX_INPUT_BYTES = 4 * 1024**3
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
DEFAULT_TIMEOUT = 30.0  # without a config (`enrich init URL`): the config's default

SUFFIXES = tuple(READ_FORMATS)  # what a table can be read as
_MEDIA_TYPES = {
    "text/csv": ".csv",
    "application/csv": ".csv",
    "text/comma-separated-values": ".csv",
    "text/tab-separated-values": ".tsv",
    "application/vnd.apache.parquet": ".parquet",
    "application/x-parquet": ".parquet",
    "application/parquet": ".parquet",
    "application/x-ndjson": ".ndjson",
    "application/ndjson": ".ndjson",
    "application/jsonl": ".jsonl",
    "application/x-jsonlines": ".jsonl",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.ms-excel.sheet.macroenabled.12": ".xlsm",
    "application/vnd.ms-excel.sheet.binary.macroenabled.12": ".xlsb",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.oasis.opendocument.spreadsheet": ".ods",
}
_WEB_PAGE = frozenset({"text/html", "application/xhtml+xml"})
_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Fetched:
    """A table fetched from a URL: where the copy is, and what was fetched. The copy (and its
    folder) is removed when this object is dropped, or at exit."""

    url: str  # as shown: its secrets as ***
    path: Path  # the local copy
    sha256: str  # of the bytes as served (after any Content-Encoding is undone)
    size: int  # bytes
    seconds: float  # how long the fetch took

    def __post_init__(self) -> None:
        weakref.finalize(self, shutil.rmtree, self.path.parent, True)


class LocalInput(NamedTuple):
    """The input as a file to read, and the fetch it came from (None: the input is a file)."""

    path: Path
    fetched: Fetched | None


def local_input(
    source: Path | str, config: Config | None = None, redactor: Redactor | None = None, where: str = "--input"
) -> LocalInput:
    """The input table as a local file: ``source`` itself, or for an ``http(s)://`` URL a copy
    fetched now, through the config's ``tls:`` and ``timeout`` (defaults without a config). The
    URL's secrets are registered with ``redactor`` (default: the config's) first."""
    if isinstance(source, Path):
        return LocalInput(source, None)
    redactor = redactor if redactor is not None else config.redactor if config is not None else Redactor()
    location = input_location(source, where, redactor)
    if isinstance(location, Path):
        return LocalInput(location, None)
    tls = config.tls if config is not None else TLSConfig()
    timeout = config.timeout if config is not None else DEFAULT_TIMEOUT
    fetched = fetch(location, tls, timeout, redactor)
    return LocalInput(fetched.path, fetched)


def fetch(url: str, tls: TLSConfig, timeout: float, redactor: Redactor, limit: int | None = None) -> Fetched:
    """Fetch the table at ``url`` into a folder of its own (``afetch`` on an event loop of its own)."""
    from .aio import run

    return run(afetch(url, tls, timeout, redactor, limit))


async def afetch(url: str, tls: TLSConfig, timeout: float, redactor: Redactor, limit: int | None = None) -> Fetched:
    """Fetch the table at ``url``, following redirects, into a folder of its own, at most ``limit``
    bytes (default ``MAX_INPUT_BYTES``); see the module's docstring for the errors."""
    import aiohttp
    from yarl import URL

    from . import __version__

    shown = redactor.redact(masked_url(url))
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(ssl=tls.context(), limit=1)
    # A timeout per step (connect, each read), not for the whole body: a large table that keeps coming is fine.
    idle = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
    folder = Path(tempfile.mkdtemp(prefix="enrich-input-"))
    try:
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=idle,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": f"enrich/{__version__}"},
        ) as session:
            target = URL(url)
            for _ in range(MAX_REDIRECTS + 1):
                try:
                    async with session.get(target.with_fragment(None), allow_redirects=False) as resp:
                        if resp.status in _REDIRECTS and "Location" in resp.headers:
                            target = _redirected(target, resp, shown)
                            continue
                        _check_status(resp, shown, redactor)
                        most = MAX_INPUT_BYTES if limit is None else limit
                        path, digest, size = await _save(resp, URL(url), folder, shown, most)
                        return Fetched(shown, path, digest, size, time.perf_counter() - started)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise _unavailable(exc, target, shown, timeout, redactor) from None
            raise InputError(
                f"cannot fetch the input {shown}: it redirects more than {MAX_REDIRECTS} times. Check the URL "
                "in a browser, and give the address the table ends up at."
            )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _redirected(target: URL, resp: aiohttp.ClientResponse, shown: str) -> URL:
    """Where a redirect leads; never from https:// down to http://."""
    from yarl import URL

    try:
        location = target.join(URL(resp.headers["Location"]))
    except ValueError:
        raise InputError(
            f"cannot fetch the input {shown}: it redirects to a malformed address (HTTP {resp.status})."
        ) from None
    if target.scheme == "https" and location.scheme != "https":
        raise InputError(
            f"cannot fetch the input {shown}: it redirects from https:// to {location.scheme}://{location.host}, "
            "which would carry the table unencrypted. Give the URL it should be fetched from, over https://."
        )
    return location


def _check_status(resp: aiohttp.ClientResponse, shown: str, redactor: Redactor) -> None:
    """A 4xx is the URL's fault (exit 2), a 5xx the server's (exit 3, later); a 2xx is the table."""
    status, reason = resp.status, resp.reason or ""
    answered = f"the server answered HTTP {status}{f' {reason}' if reason else ''}"
    if 200 <= status < 300 and status != 204:
        return
    if status in (401, 403):
        fix = (
            "The link needs access it does not carry: publish the table (in Google Sheets: File > Share > "
            "Publish to web, as CSV), or put the token in the URL (?token=... is never shown)"
        )
    elif status in (404, 410):
        fix = "Check the URL: no table is there (in Google Sheets, publish the sheet again and copy the new link)"
    elif 400 <= status < 500:
        fix = "Check the URL"
    elif status >= 500:
        raise InputUnavailable(redactor.redact(f"cannot fetch the input {shown}: {answered}. Run again later."))
    else:
        fix = "Give the URL of the table itself"
    raise InputError(redactor.redact(f"cannot fetch the input {shown}: {answered}. {fix}."))


def _unavailable(exc: Exception, target: URL, shown: str, timeout: float, redactor: Redactor) -> Exception:
    """aiohttp's error while fetching, as ours: a certificate, or a failure that may pass."""
    import aiohttp

    from .http import tls_problem

    if isinstance(exc, aiohttp.ClientSSLError):
        return TLSError(redactor.redact(f"cannot fetch the input {shown}: {tls_problem(target, exc, 'its server')}"))
    if isinstance(exc, aiohttp.InvalidURL):
        return InputError(f"cannot fetch the input {shown}: it is not a URL enrich can fetch.")
    if isinstance(exc, TimeoutError):
        why = f"no answer for {timeout:g}s (timeout)"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        why = f"cannot connect to {target.host}: {exc.os_error.strerror or exc.os_error}"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        why = "the connection broke before the whole table came"
    else:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return InputUnavailable(
        redactor.redact(f"cannot fetch the input {shown}: {why}. Nothing was sent to the API; run again later.")
    )


async def _save(resp: aiohttp.ClientResponse, url: URL, folder: Path, shown: str, limit: int) -> tuple[Path, str, int]:
    """Stream the body to a file in ``folder`` named for the table's kind; its path, sha256 and size."""
    import aiohttp

    if resp.content_length is not None and resp.content_length > limit:
        raise _too_large(shown, limit)
    head = await resp.content.readany()
    media = resp.content_type if "Content-Type" in resp.headers else None
    given = resp.content_disposition.filename if resp.content_disposition else None
    suffix = table_suffix(url, given, media, head, shown, resp.url)
    path = folder / (_file_stem(given or url.name) + suffix)
    digest, size = hashlib.sha256(), 0
    try:
        with path.open("wb") as out:
            chunk = head
            while chunk:
                size += len(chunk)
                if size > limit:
                    raise _too_large(shown, limit)
                digest.update(chunk)
                out.write(chunk)
                chunk = await resp.content.readany()
    except (aiohttp.ClientError, TimeoutError):  # the network (both are OSErrors too): the caller says so
        raise
    except OSError as exc:
        raise InputError(
            f"cannot keep a copy of the input {shown} in {folder.parent}: {exc.strerror or exc}. Free some space "
            "there, or point TMPDIR at a folder with room for the table."
        ) from None
    if size == 0:
        raise InputError(f"the input {shown} is empty: the server sent no bytes. Check the URL.")
    return path, digest.hexdigest(), size


def _too_large(shown: str, limit: int) -> InputError:
    from .units import format_size

    return InputError(
        f"the input {shown} is larger than {format_size(limit)}, the most enrich fetches: download it yourself "
        "and give the file as the input."
    )


def table_suffix(
    url: URL, given: str | None, media: str | None, head: bytes, shown: str = "", final: URL | None = None
) -> str:
    """The suffix that says how to read the table at ``url`` (``.csv``, ``.parquet``, ...), from what
    the URL (and ``final``, where its redirects led), the server's file name (``given``), its
    Content-Type (``media``) and the first bytes (``head``) say, in that order; ``InputError``
    when nothing does, or when the server sent a web page.

    >>> from yarl import URL
    >>> table_suffix(URL("https://docs.google.com/spreadsheets/d/e/X/pub?gid=0&output=csv"), None, None, b"")
    '.csv'
    """
    if media in _WEB_PAGE:
        raise InputError(
            f"the input {shown or url} is a web page ({media}), not a table: the link may need a sign-in, or "
            "lead to the page that shows the table. Give the link of the file itself (in Google Sheets: File > "
            "Share > Publish to web, as CSV)."
        )
    asked = dict(_pairs(url.fragment)).get("format")
    if asked is not None:
        if _known(asked) is None:
            raise InputError(
                f"the input {shown or url} asks for #format={asked}, which enrich cannot read. "
                f"Use one of: {', '.join(s[1:] for s in SUFFIXES)}."
            )
        return _known(asked) or ""
    urls = [url] if final is None else [url, final]
    candidates = [c for u in urls for c in (u.suffix, u.query.get("format"), u.query.get("output"))]
    for candidate in [*candidates, Path(given or "").suffix]:
        if candidate and (suffix := _known(candidate)):
            return suffix
    if media in _MEDIA_TYPES:
        return _MEDIA_TYPES[media]
    if head.startswith(_PARQUET_MAGIC) and media in (None, "application/octet-stream", "binary/octet-stream"):
        return ".parquet"
    raise InputError(
        f"cannot tell what kind of table the input {shown or url} is: its path ends in none of "
        f"{', '.join(SUFFIXES)}, and the server sends it as {media or 'no Content-Type'}. Say it at the end of the "
        f"URL, after a # (never sent to the server): {shown or url}#format=csv (or parquet, xlsx, ...)."
    )


def _known(text: str) -> str | None:
    """``.csv`` for "csv", ".CSV" or "csv"; None for what no reader takes."""
    suffix = "." + text.lower().lstrip(".")
    return suffix if suffix in SUFFIXES else None


def _pairs(fragment: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(fragment, keep_blank_values=True)


def _file_stem(name: str) -> str:
    """A name for the local copy, from the URL's last segment or the server's file name: its stem,
    in characters every file system takes (``leads``, ``pub`` for Google's ``/pub``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._")[:100]
    return stem or "input"
