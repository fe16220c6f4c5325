"""Write a file whole or not at all: to a temporary name beside it, then one rename.

    with replacing(Path("out/people.parquet")) as tmp:
        frame.write_parquet(tmp)          # a reader sees the old file, then the new one, never half

A process killed mid-write leaves only the temporary file (``.people.parquet.<pid>.tmp``),
which ``is_leftover`` recognises so the next run can sweep it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

SUFFIX = ".tmp"


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; when the block ends without an error, it
    replaces ``path`` atomically. However the block ends, no temporary file is left."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{SUFFIX}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_leftover(path: Path) -> bool:
    """Whether ``path`` is a temporary file ``replacing`` left (its process was killed)."""
    return path.name.startswith(".") and path.name.endswith(SUFFIX)
