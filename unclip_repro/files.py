"""Atomic file writes: a crash leaves the old file or the new one, never half of either.

Every file the package and the harness write (caches, chunks, reports, shipped weights) goes
through `atomic_path`: written under a temporary name beside its destination, then renamed.
A write that fails (disk full, read-only) is a one-line UserError naming the file; the old
file, if any, is left as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, so `np.savez` and friends keep it),
    renamed onto `path` when the block ends without an error, removed otherwise."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: object) -> None:
    """Write a JSON file atomically (indented, with a final newline)."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
