"""Content-addressed artifact cache.

An artifact lives in ``root/<key>/`` where the key is a sha256 over everything that determines its bytes
(base fingerprint, adapter fingerprint, subnet config key, precision, build recipe). Builds write into a
temporary folder, fsync every file and rename atomically (``atomic_directory``): a reader never sees half an
artifact; files are hashed once, as they are built. One build per key runs at a time however many ask.
Least-recently-used unpinned entries are evicted to keep the cache under its disk budget.

Integrity: an entry's files are hashed in full before their first serve after start and before the first serve
after any change to a file's inode, size, mtime or ctime (every write through the file system changes ctime,
even one that puts the mtime back), and ``scrub`` re-hashes every entry (the server runs it every
``scrub_interval_s``) to catch what no metadata shows (bit rot). A corrupted entry is dropped (and rebuilt by
the next request), never served again.

Several processes or server replicas may share the folder: builds are claimed per key (``server.coordination``:
a file lock on one host, a lease row in PostgreSQL across replicas), and eviction goes in two steps through the
metadata: an entry is first marked, and its row and files are deleted only if nobody used it for
``evict_grace_s`` (any use revives it) and only while holding its build claim (so a rebuild of the same key is
never deleted). What the file system must give: an atomic rename within the cache folder, visible to every
replica once done (a local file system; CephFS; NFS mounted with ``lookupcache=positive`` so a new name is not
hidden by a cached "no such file"), and files that stay readable for at least the grace period after their
entry is chosen for eviction (on NFS an unlinked file another host still reads is gone, hence the grace period
rather than relying on POSIX unlink semantics).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slicer import atomic_directory, sha256_file
from slicer.paths import remove_stale_partials

from .coordination import Claims, Lease, LocalClaims
from .errors import CacheError, InvalidArtifactId, MissingArtifactFile
from .metadata import ArtifactRecord, MetadataStore

log = logging.getLogger(__name__)
KEY = re.compile(r"^[0-9a-f]{64}$")


def artifact_key(base_fingerprint: str, adapters_fingerprint: str | None, config_key: str, precision: str,
                 recipe: str) -> str:
    """The one place an artifact's id is computed: everything that determines its bytes (``recipe``: the build
    recipe's version, builder and graph mode, ``slicer.onnx.build.BuildOptions.recipe``)."""
    parts = [base_fingerprint, adapters_fingerprint or "-", config_key, precision, recipe]
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
    def __init__(self, root: Path, metadata: MetadataStore, budget_bytes: int, claims: Claims | None = None,
                 evict_grace_s: float = 0.0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta, self.budget, self.evict_grace_s = metadata, budget_bytes, evict_grace_s
        self.claims = claims or LocalClaims(self.root / ".locks")
        self._verified: dict[str, dict[str, Fingerprint]] = {}  # key -> file -> fingerprint when last hashed valid
        self._entries: dict[str, Entry] = {}  # key -> the entry last found intact (``get_cached``)
        self._clean_leftovers()

    def _clean_leftovers(self) -> None:
        """Remove half-built folders of builders that died: those of keys nobody holds a claim on now (a live
        process or replica, which may be on another host, is building the others)."""
        for key in {p.name[1:].split(".", 1)[0] for p in self.root.glob(".*.incomplete-*")}:
            if KEY.match(key):
                with self.claims.try_claim(key) as lease:
                    if lease is not None:
                        remove_stale_partials(self.root / key)

    # ----- reading ------------------------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        """The entry if it is present and intact; a corrupted or half-missing one is dropped."""
        check_key(key)
        record = self.meta.get_artifact(key)
        if record is not None and record.evicting is not None and not self.meta.revive(key):
            return None  # chosen for eviction and deleted meanwhile
        path = self.root / key
        if record is None or not path.is_dir():
            if record is not None:
                self.meta.delete_artifact(key)
            return None
        if not self._intact(key, path, record):
            log.warning("artifact %s failed verification; dropping it", key[:12])
            self.drop(key)
            return None
        self._entries[key] = Entry(key, path, record)
        return self._entries[key]

    def get_cached(self, key: str) -> Entry | None:
        """The entry from memory when this process found it intact before and its files' (inode, size, mtime,
        ctime) are unchanged: a stat per file, no database and no hashing, so it may run on the event loop. None
        when it cannot say so (then ``get`` decides): never seen, a file changed or gone, or replicas share the
        store (grace > 0), where only the database shows an eviction mark and a use must revive it."""
        entry = self._entries.get(key) if self.evict_grace_s == 0 else None
        seen = self._verified.get(key)
        if entry is None or seen is None:
            return None
        folder = str(entry.path)  # joined as text: pathlib's joins cost more than the stats on this path
        try:
            if any(fingerprint(os.path.join(folder, name)) != fp for name, fp in seen.items()):
                return None
        except OSError:
            return None
        return entry

    def _forget(self, key: str) -> None:
        self._verified.pop(key, None)
        self._entries.pop(key, None)

    def _intact(self, key: str, path: Path, record: ArtifactRecord, rehash: bool = False) -> bool:
        seen = {} if rehash else self._verified.get(key, {})
        current: dict[str, Fingerprint] = {}
        for name, info in record.files.items():
            try:
                current[name] = fingerprint(path / name)
            except FileNotFoundError:
                return False
            if seen.get(name) == current[name]:
                continue  # unchanged since it was last hashed
            if current[name][1] != info["size"] or sha256_file(path / name) != info["sha256"]:
                return False
        self._verified[key] = current
        return True

    def scrub(self) -> list[str]:
        """Re-hash every entry's files in full, dropping the corrupted ones; returns the dropped keys."""
        dropped = []
        for record in self.meta.list_artifacts():
            path = self.root / record.key
            if path.is_dir() and not self._intact(record.key, path, record, rehash=True):
                log.warning("scrub: artifact %s failed verification; dropping it", record.key[:12])
                self.drop(record.key)
                dropped.append(record.key)
        return dropped

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
        with self.claims.claim(key) as lease:
            entry = self.get(key)  # built by whoever held the claim before
            if entry is not None:
                return entry, False
            remove_stale_partials(self.root / key)  # a dead builder's work folder: we hold the key now
            return self._build(key, build, lease), True

    def _build(self, key: str, build: Callable[[Path], dict[str, Any]], lease: Lease) -> Entry:
        """One pass: ``build`` writes into the work folder that ``atomic_directory`` renames to ``root/<key>``.

        Files whose hash ``build`` reports under ``info["files"]`` (it hashes the graph while writing it) are not
        read again; the others (the manifest) are hashed here, once. The claim is confirmed last, before the
        rename: a builder whose claim expired (and was maybe taken over) publishes nothing.
        """
        start = time.perf_counter()
        with atomic_directory(self.root / key) as tmp:
            try:
                info = build(tmp)
                reported = info.pop("files", None) or {}
                files = {}
                for p in sorted(tmp.iterdir()):
                    if not p.is_file():
                        raise CacheError(f"build left a non-file {p.name!r} in the artifact")
                    size = p.stat().st_size
                    known = reported.get(p.name)
                    files[p.name] = dict(known) if known and known["size"] == size else {"sha256": sha256_file(p), "size": size}
                if not files:
                    raise CacheError("build produced no files")
            except Exception:
                lease.confirm()  # a builder whose claim (and work folder) went to a successor fails as LeaseLost
                raise
            lease.confirm()
        final = self.root / key
        record = ArtifactRecord(key, sum(f["size"] for f in files.values()), files, info,
                                build_seconds=time.perf_counter() - start)
        self.meta.put_artifact(record)
        # These bytes were hashed as they were written: the first serve need not read them again.
        self._verified[key] = {name: fingerprint(final / name) for name in files}
        self._entries[key] = Entry(key, final, record)
        self.evict(keep=key)
        return self._entries[key]

    # ----- housekeeping -------------------------------------------------------------------------------------
    def drop(self, key: str) -> None:
        """Delete an entry now (operator request, failed verification): the row first, so nobody resolves it."""
        check_key(key)
        self.meta.delete_artifact(key)
        shutil.rmtree(self.root / key, ignore_errors=True)
        self._forget(key)

    def pin(self, key: str, pinned: bool = True) -> None:
        self.meta.set_pinned(check_key(key), pinned)

    def total_bytes(self) -> int:
        return sum(r.size for r in self.meta.list_artifacts())

    def evict(self, keep: str | None = None) -> list[str]:
        """Keep the cache under its budget; returns the keys whose files were deleted.

        Step 1 marks least-recently-used unpinned entries until the unmarked ones fit. Step 2 deletes each marked
        entry that nobody used for ``evict_grace_s`` (a use clears the mark): its row in one atomic statement (one
        replica wins), then its folder, both while holding the key's build claim, so a replica rebuilding that
        key meanwhile is never undone. With a grace of 0 (one server on a local disk) both steps happen at once.
        """
        records = self.meta.list_artifacts()
        total = sum(r.size for r in records if r.evicting is None)
        for r in sorted(records, key=lambda r: r.last_used):
            if total <= self.budget:
                break
            if r.pinned or r.key == keep or r.evicting is not None:
                continue
            if self.meta.mark_evicting(r.key):
                r.evicting = time.time()
                total -= r.size
        if total > self.budget:
            log.warning("cache holds %d bytes over its %d-byte budget in pinned or in-use artifacts", total, self.budget)
        dropped = []
        for r in records:
            if r.evicting is None or r.key == keep:
                continue
            with self.claims.try_claim(r.key) as lease:
                if lease is not None and self.meta.delete_evicted(r.key, self.evict_grace_s):
                    shutil.rmtree(self.root / r.key, ignore_errors=True)
                    self._forget(r.key)
                    dropped.append(r.key)
        return dropped


Fingerprint = tuple[int, int, int, int]


def fingerprint(path: str | Path) -> Fingerprint:
    """(inode, size, mtime, ctime): any change through the file system changes one of them."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
