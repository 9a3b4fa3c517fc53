"""Content-addressed artifact cache.

An artifact lives in ``root/<key>/`` where the key is a sha256 over everything that determines its bytes
(base fingerprint, adapter fingerprint, subnet config key, precision, exporter version). Builds write into a
temporary folder, fsync every file and rename atomically: a reader never sees half an artifact. One build per
key runs at a time however many ask. An entry's files are re-hashed the first time it is served after start
and whenever their size or mtime changed; a corrupted entry is dropped (and rebuilt by the next request),
never served. Least-recently-used unpinned entries are evicted to keep the cache under its disk budget.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slicer import file_lock, sha256_file

from .errors import CacheError, InvalidArtifactId, MissingArtifactFile
from .metadata import ArtifactRecord, MetadataStore

log = logging.getLogger(__name__)
KEY = re.compile(r"^[0-9a-f]{64}$")


def artifact_key(base_fingerprint: str, adapters_fingerprint: str | None, config_key: str, precision: str,
                 exporter_version: str) -> str:
    parts = [base_fingerprint, adapters_fingerprint or "-", config_key, precision, exporter_version]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def check_key(key: str) -> str:
    """Artifact ids are 64 hex digits, nothing else: no path can be smuggled through one."""
    if not isinstance(key, str) or not KEY.match(key):
        raise InvalidArtifactId(f"artifact id must be 64 lowercase hex digits, got {key[:80]!r}")
    return key


@dataclass
class Entry:
    key: str
    path: Path
    record: ArtifactRecord

    def file(self, name: str) -> Path:
        if name not in self.record.files:
            raise MissingArtifactFile(f"artifact {self.key[:12]} has no file {name!r}; it has {sorted(self.record.files)}")
        return self.path / name


class ArtifactCache:
    def __init__(self, root: Path, metadata: MetadataStore, budget_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta, self.budget = metadata, budget_bytes
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._verified: dict[str, dict[str, tuple[int, int]]] = {}  # key -> file -> (size, mtime_ns) seen valid
        self._clean_leftovers()

    def _clean_leftovers(self) -> None:
        """Remove half-built folders of processes that died; another live process (mlfs warm) may be building."""
        for p in self.root.glob(".*.incomplete-*"):
            pid = p.name.rsplit("incomplete-", 1)[1].split("-")[0]
            if not (pid.isdigit() and _alive(int(pid))):
                shutil.rmtree(p, ignore_errors=True)

    def lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    # ----- reading ------------------------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        """The entry if it is present and intact; a corrupted or half-missing one is dropped."""
        check_key(key)
        record = self.meta.get_artifact(key)
        path = self.root / key
        if record is None or not path.is_dir():
            if record is not None:
                self.meta.delete_artifact(key)
            return None
        if not self._intact(key, path, record):
            log.warning("artifact %s failed verification; dropping it", key[:12])
            self.drop(key)
            return None
        return Entry(key, path, record)

    def _intact(self, key: str, path: Path, record: ArtifactRecord) -> bool:
        seen = self._verified.get(key, {})
        current: dict[str, tuple[int, int]] = {}
        for name, info in record.files.items():
            try:
                st = (path / name).stat()
            except FileNotFoundError:
                return False
            current[name] = (st.st_size, st.st_mtime_ns)
            if seen.get(name) == current[name]:
                continue  # unchanged since it was last verified
            if st.st_size != info["size"] or sha256_file(path / name) != info["sha256"]:
                return False
        self._verified[key] = current
        return True

    def served(self, key: str) -> None:
        self.meta.touch(key)

    # ----- building -----------------------------------------------------------------------------------------
    def get_or_build(self, key: str, build: Callable[[Path], dict[str, Any]]) -> tuple[Entry, bool]:
        """The entry for ``key``, building it with ``build(folder)`` if needed; returns (entry, built_now).

        ``build`` writes files into the folder it is given and returns the info to record. One build per key
        runs at a time; those who wait get the finished entry.
        """
        check_key(key)
        entry = self.get(key)
        if entry is not None:
            return entry, False
        with self.lock(key), self._process_lock(key):
            entry = self.get(key)
            if entry is not None:
                return entry, False
            return self._build(key, build), True

    def _process_lock(self, key: str):
        """A file lock, so a server and `mlfs warm` on one store never build the same key at once."""
        locks = self.root / ".locks"
        locks.mkdir(exist_ok=True)
        return file_lock(locks / key)

    def _build(self, key: str, build: Callable[[Path], dict[str, Any]]) -> Entry:
        tmp = self.root / f".{key}.incomplete-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        start = time.perf_counter()
        try:
            info = build(tmp)
            files = {}
            for p in sorted(tmp.iterdir()):
                if not p.is_file():
                    raise CacheError(f"build left a non-file {p.name!r} in the artifact")
                with p.open("rb") as f:
                    os.fsync(f.fileno())
                files[p.name] = {"sha256": sha256_file(p), "size": p.stat().st_size}
            if not files:
                raise CacheError("build produced no files")
            final = self.root / key
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _fsync_dir(self.root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        record = ArtifactRecord(key, sum(f["size"] for f in files.values()), files, info,
                                build_seconds=time.perf_counter() - start)
        self.meta.put_artifact(record)
        self._verified.pop(key, None)
        self.evict(keep=key)
        return Entry(key, final, record)

    # ----- housekeeping -------------------------------------------------------------------------------------
    def drop(self, key: str) -> None:
        check_key(key)
        shutil.rmtree(self.root / key, ignore_errors=True)
        self.meta.delete_artifact(key)
        self._verified.pop(key, None)

    def pin(self, key: str, pinned: bool = True) -> None:
        self.meta.set_pinned(check_key(key), pinned)

    def total_bytes(self) -> int:
        return sum(r.size for r in self.meta.list_artifacts())

    def evict(self, keep: str | None = None) -> list[str]:
        """Drop least-recently-used unpinned entries until the cache fits its budget; returns the dropped keys."""
        records = self.meta.list_artifacts()
        total = sum(r.size for r in records)
        dropped = []
        for r in sorted(records, key=lambda r: r.last_used):
            if total <= self.budget:
                break
            if r.pinned or r.key == keep:
                continue
            self.drop(r.key)
            total -= r.size
            dropped.append(r.key)
        if total > self.budget:
            log.warning("cache holds %d bytes over its %d-byte budget in pinned or in-use artifacts", total, self.budget)
        return dropped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()  # a leftover with our own id is from an earlier process that had it (containers)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
