"""Where MLFS keeps its data, path handling that cannot escape a root, file hashing and locking."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
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
                if remove and not names_open_file(path, f.fileno()):
                    continue  # the previous holder removed this file: lock the one at the path now
                try:
                    yield
                finally:
                    if remove:
                        path.unlink(missing_ok=True)
                return
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def names_open_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the folders holding them, so a rename publishes complete bytes."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def partial_name(target: Path, kind: str = "incomplete") -> Path:
    """The hidden sibling a writer of ``target`` works in (``.<name>.<kind>-<pid>-<thread>``)."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{threading.get_ident()}")


def remove_stale_partials(target: Path) -> list[Path]:
    """Remove the work folders a killed writer of ``target`` left behind. Call it while holding the writer's lock."""
    removed = []
    for kind in ("incomplete", "old"):
        for stale in target.parent.glob(f".{target.name}.{kind}-*"):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def replace_directory(src: Path, target: Path) -> None:
    """Rename the finished folder ``src`` to ``target``. An existing ``target`` is renamed aside first and removed
    after, so at every instant ``target`` is either the old folder or the new one."""
    old = None
    if target.exists():
        old = partial_name(target, "old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(src, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: Path, fsync: bool = True) -> Iterator[Path]:
    """Write a folder all at once: yields an empty work folder beside ``target``; when the block ends normally its
    files are flushed (``fsync``) and it replaces ``target`` (see ``replace_directory``); when the block raises,
    the work folder is removed and ``target`` is left as it was. Readers never see a half-written folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if fsync:
            _fsync_tree(tmp)
        replace_directory(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: read by setting it (restored at once)
    os.umask(mask)
    return mask


def new_file_mode(path: Path) -> None:
    """Give ``path`` the mode a newly created file gets (0666 under the umask: 0644 usually). Writers that go
    through a private temporary file (safetensors does) leave 0600, unreadable to the group a model is shared with."""
    os.chmod(path, 0o666 & ~_umask())
