"""Where MLFS keeps its data, path handling that cannot escape a root, file hashing and locking."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError


def data_home() -> Path:
    """The data home: ``$MLFS_HOME`` if set, else ``~/.cache/mlfs``."""
    return Path(os.environ.get("MLFS_HOME") or Path.home() / ".cache" / "mlfs").expanduser()


def safe_join(root: Path, *parts: str) -> Path:
    """``root / parts`` resolved, refusing any result outside ``root`` (``..``, absolute parts, symlinks out)."""
    root = Path(root).resolve()
    target = root.joinpath(*parts).resolve()
    if target != root and root not in target.parents:
        raise ConfigError(f"path {'/'.join(parts)!r} escapes its root {str(root)!r}")
    return target


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path, remove: bool = False) -> Iterator[None]:
    """An exclusive advisory lock on ``path``, across processes (no-op where ``fcntl`` is unavailable).

    ``remove``: delete the lock file on release (one file per key would otherwise pile up). It is unlinked while
    still held, and whoever then acquires the unlinked file notices (the path names another inode, or none) and
    locks the current file instead, so two holders never coexist.
    """
    try:
        import fcntl
    except ImportError:  # Windows: writes stay atomic, just not serialised
        yield
        return
    while True:
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                if remove and not _names(path, f.fileno()):
                    continue  # the previous holder removed this file: lock the one at the path now
                try:
                    yield
                finally:
                    if remove:
                        path.unlink(missing_ok=True)
                return
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
