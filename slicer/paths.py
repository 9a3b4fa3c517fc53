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
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path``, across processes (no-op where ``fcntl`` is unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows: writes stay atomic, just not serialised
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
