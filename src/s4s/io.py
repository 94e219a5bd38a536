"""Writing files so that nothing is lost or half-written.

* :func:`check_writable` - before any long work: the folder of a file to be written can be created
  and written to, and the path is not a folder; one ``ValueError`` names the problem.
* :func:`atomic_write` / :func:`atomic_write_text` - write to a temporary file with a name unique to
  this process and call, then rename it over the target: a reader sees the old file or the new one,
  never a part; concurrent writers never share a temporary file. Under torchrun only rank 0 writes
  results (every rank holds the same ones); ``all_ranks=True`` is for files each rank makes itself
  (its teacher-cache batches).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

__all__ = ["check_writable", "check_writable_dir", "atomic_write", "atomic_write_text", "unique_tmp"]


def unique_tmp(path: Path) -> Path:
    """A temporary name beside ``path``, unique to this process and call (keeps the suffix)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def check_writable_dir(folder: str | Path, what: str = "folder") -> Path:
    """Create ``folder`` if needed and check that files can be written in it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = unique_tmp(folder / "write-check")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{what} {folder} is not writable: {err.strerror or err}") from None
    return folder


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Check that the file ``path`` can be written (its folder is created if needed); no file is left behind."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name")
    check_writable_dir(path.parent if str(path.parent) else Path("."), f"the folder of {what} {path}")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None], all_ranks: bool = False) -> Path:
    """``write(tmp)`` writes the content to a temporary file, which then replaces ``path`` in one rename
    (on rank 0 only, unless ``all_ranks``)."""
    from s4s import distributed

    path = Path(path)
    if not (all_ranks or distributed.is_main()):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str, all_ranks: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text), all_ranks)
