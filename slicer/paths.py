"""Where MLFS keeps its data, and path handling that cannot escape a root."""

from __future__ import annotations

import os
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
