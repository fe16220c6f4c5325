"""Every error a user can cause, in one tree.

    EnrichError                 base; carries the process exit code
    ├── ConfigError             the YAML config is wrong (exit 2)
    ├── InputError              the input table is missing or unreadable (exit 2)
    ├── RunAborted              the run cannot go on (exit 3)
    │   ├── AuthError           login failed or gave no token (exit 3)
    │   └── JournalBusy         another run holds the journal (exit 3; in journal.py)
    └── Interrupted             Ctrl-C or SIGTERM; finished calls are in the journal (exit 130)

The CLI catches ``EnrichError`` alone, prints ``error: <message>`` and exits with
``exit_code``; anything else is a bug and shows a traceback only with ``--debug``.
Messages say where the problem is, what was found and how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable


class EnrichError(Exception):
    """Base of every error enrich raises on purpose."""

    exit_code = 1


class ConfigError(EnrichError):
    """The config file is malformed or asks for something impossible."""

    exit_code = 2


class InputError(EnrichError):
    """The input table cannot be read or does not fit the config."""

    exit_code = 2


class RunAborted(EnrichError):
    """The run stopped before it could finish; nothing was written."""

    exit_code = 3


class AuthError(RunAborted):
    """Logging in failed, or the login response held no token."""


class Interrupted(EnrichError):
    """The run was stopped from outside; what it finished is kept in the journal."""

    exit_code = 130


class Where(str):
    """Where in the config something is ("demo.yaml, line 14: request.url"); knows its children's lines.

    It is a plain ``str`` to everything that formats it; ``child_of(where, "amount")``
    gives "demo.yaml, line 15: request.body.amount" when the config knows that line.
    """

    child: Callable[[str], str] | None = None

    def __new__(cls, text: str, child: Callable[[str], str] | None = None) -> Where:
        obj = super().__new__(cls, text)
        obj.child = child
        return obj


def child_of(where: str, key: object) -> str:
    """The location of ``key`` inside ``where``."""
    if isinstance(where, Where) and where.child is not None:
        return where.child(str(key))
    return f"{where}.{key}"
