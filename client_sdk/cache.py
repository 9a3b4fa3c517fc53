"""The device cache: verified artifacts on disk, an index, a disk budget with LRU eviction.

Layout: ``root/artifacts/<id>/`` (manifest.json, model.onnx, tokenizer.json, ...), ``root/staging/<id>/``
(downloads in progress, kept so an interrupted download resumes), ``root/index.json``. A folder is installed
by one rename, and every file is checked against the manifest's sha256 before it is loaded: a tampered or
truncated file is never run. Artifacts in use (``hold``) are never evicted.

Hashing once. The download hashes every file as it arrives; install then stamps each verified file's
modification time with a moment already past (``_STAMP_AGE_NS``) and records (inode, size, mtime_ns) in the
index. Before a load, a file whose three values still match is not hashed again (an 88 MB model took 0.1-0.4 s);
any write since, even within the file system's timestamp granularity, sets the mtime to "now" and so differs
from the stamp, a replaced file has another inode, a truncated one another size: those are hashed as before.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slicer.paths import file_lock, replace_directory, sha256_file  # torch-free: the standard library only

from .errors import CacheError, IntegrityError

log = logging.getLogger(__name__)
ARTIFACT_ID = re.compile(r"^[0-9a-f]{64}$")
_STAMP_AGE_NS = 60 * 10**9  # how far back install stamps verified files' mtimes: beyond any timestamp granularity (FAT: 2 s)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MLFS_DEVICE_CACHE") or Path.home() / ".cache" / "mlfs-device").expanduser()


@dataclass
class CachedArtifact:
    """One index row: what the artifact is, what the server estimated for it, when it was last used."""

    artifact_id: str
    model: str
    server: str
    config: dict[str, Any]
    precision: str
    memory_mb: float
    latency_ms: float | None
    quality: float | None
    size_bytes: int
    installed_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    verified_stats: dict[str, list[int]] = field(default_factory=dict)  # file -> [inode, size, mtime_ns] when hashed


def rank(row: CachedArtifact) -> tuple[float, float, bool, str]:
    """The one order of cached artifacts (larger is better), the server's order where it can be: highest quality,
    then the larger model, then fp32 over int8; the artifact id breaks what is still tied, so one cache and one
    budget always give the same answer, whoever asks."""
    quality = row.quality if row.quality is not None else float("-inf")
    return (quality, row.memory_mb, row.precision == "fp32", row.artifact_id)


def check_id(artifact_id: str) -> str:
    """Artifact ids are 64 hex digits: nothing from a server becomes a path outside the cache."""
    if not isinstance(artifact_id, str) or not ARTIFACT_ID.match(artifact_id):
        raise CacheError(f"not an artifact id: {str(artifact_id)[:80]!r}")
    return artifact_id


class DeviceCache:
    def __init__(self, root: Path | None = None, budget_mb: float = 2048) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        (self.root / "staging").mkdir(exist_ok=True)
        self.budget_bytes = int(budget_mb * 2**20)
        self._lock = threading.RLock()
        self._held: Counter[str] = Counter()

    # ----- index --------------------------------------------------------------------------------------------
    def _index_lock(self):
        return file_lock(self.root / ".index.lock")  # several processes may share one cache

    def _read(self) -> dict[str, CachedArtifact]:
        path = self.root / "index.json"
        if not path.is_file():
            return {}
        try:
            rows = json.loads(path.read_text())["artifacts"]
            return {r["artifact_id"]: CachedArtifact(**r) for r in rows}
        except (ValueError, KeyError, TypeError) as err:
            log.warning("device cache index %s is unreadable (%s); starting a new one", path, err)
            return {}

    def _write(self, index: dict[str, CachedArtifact]) -> None:
        tmp = self.root / f".index.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps({"artifacts": [asdict(r) for r in index.values()]}, indent=1))
        os.replace(tmp, self.root / "index.json")

    def entries(self, model: str | None = None, server: str | None = None) -> list[CachedArtifact]:
        with self._lock, self._index_lock():
            rows = [r for r in self._read().values() if (self.root / "artifacts" / r.artifact_id).is_dir()]
        return [r for r in rows if (model is None or r.model == model) and (server is None or r.server == server)]

    def best_fit(self, model: str, server: str, memory_mb: float, precision: str = "auto") -> CachedArtifact | None:
        """The best cached artifact of ``model`` from ``server`` within ``memory_mb`` (by ``rank``)."""
        rows = [r for r in self.entries(model, server)
                if r.memory_mb <= memory_mb and (precision == "auto" or r.precision == precision)]
        return max(rows, key=rank, default=None)

    def get(self, artifact_id: str) -> CachedArtifact | None:
        check_id(artifact_id)
        return next((r for r in self.entries() if r.artifact_id == artifact_id), None)

    def folder(self, artifact_id: str) -> Path:
        return self.root / "artifacts" / check_id(artifact_id)

    def staging(self, artifact_id: str) -> Path:
        folder = self.root / "staging" / check_id(artifact_id)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def touch(self, artifact_id: str) -> None:
        with self._lock, self._index_lock():
            index = self._read()
            if artifact_id in index:
                index[artifact_id].last_used = time.time()
                self._write(index)

    def total_bytes(self) -> int:
        return sum(r.size_bytes for r in self.entries())

    # ----- in use -------------------------------------------------------------------------------------------
    def hold(self, artifact_id: str) -> None:
        """Mark an artifact in use (loaded or loading): eviction skips it until ``release``."""
        with self._lock:
            self._held[check_id(artifact_id)] += 1

    def release(self, artifact_id: str) -> None:
        with self._lock:
            self._held[artifact_id] -= 1
            if self._held[artifact_id] <= 0:
                del self._held[artifact_id]

    # ----- install / verify ---------------------------------------------------------------------------------
    def install(self, row: CachedArtifact, verified: bool = False) -> list[str]:
        """Move the staged files into place with one rename and index them; then evict to budget. The files
        are checked against the manifest first unless the caller just did (``verified``: hashed on download).
        Returns the ids evicted to make room."""
        staged = self.staging(row.artifact_id)
        manifest = read_manifest(staged)
        if not verified:
            verify_files(staged, manifest)
        for p in staged.iterdir():
            with p.open("rb") as f:
                os.fsync(f.fileno())
        final = self.folder(row.artifact_id)
        with self._lock, self._index_lock():
            replace_directory(staged, final)
            index = self._read()
            row.size_bytes = sum(p.stat().st_size for p in final.iterdir())
            row.verified_stats = _stamp(final, manifest)
            index[row.artifact_id] = row
            self._write(index)
        return self.evict(keep={row.artifact_id})

    def verified_manifest(self, artifact_id: str) -> dict[str, Any]:
        """The manifest, after every file it lists was checked; a bad artifact is removed and IntegrityError raised."""
        folder = self.folder(artifact_id)
        row = self.get(artifact_id)
        try:
            manifest = read_manifest(folder)
            hashed = verify_files(folder, manifest, row.verified_stats if row is not None else None)
        except IntegrityError:
            log.warning("cached artifact %s failed verification; removing it", artifact_id[:12])
            self.remove(artifact_id)
            raise
        if hashed and row is not None:  # e.g. touched but unchanged: hashed now, so the next load need not
            with self._lock, self._index_lock():
                index = self._read()
                if artifact_id in index:
                    index[artifact_id].verified_stats = _stamp(folder, manifest)
                    self._write(index)
        return manifest

    # ----- removal ------------------------------------------------------------------------------------------
    def remove(self, artifact_id: str) -> None:
        with self._lock, self._index_lock():
            if self._held.get(artifact_id) and (self.folder(artifact_id) / "manifest.json").exists():
                log.warning("removing %s although it is in use: it failed verification", artifact_id[:12])
            shutil.rmtree(self.folder(artifact_id), ignore_errors=True)
            index = self._read()
            index.pop(artifact_id, None)
            self._write(index)

    def evict(self, keep: set[str] = frozenset()) -> list[str]:
        """Drop least-recently-used artifacts until the cache fits its budget; never one held or in ``keep``."""
        dropped = []
        with self._lock:
            protected = set(keep) | set(self._held)
            rows = sorted(self.entries(), key=lambda r: r.last_used)
            total = sum(r.size_bytes for r in rows)
            for r in rows:
                if total <= self.budget_bytes:
                    break
                if r.artifact_id in protected:
                    continue
                self.remove(r.artifact_id)
                total -= r.size_bytes
                dropped.append(r.artifact_id)
        if total > self.budget_bytes:
            log.warning("device cache holds %d bytes, over its %d-byte budget, in artifacts in use", total, self.budget_bytes)
        return dropped

    def clear(self) -> list[str]:
        """Remove every artifact not in use (and abandoned downloads); returns the removed ids."""
        removed = []
        with self._lock:
            for r in self.entries():
                if r.artifact_id not in self._held:
                    self.remove(r.artifact_id)
                    removed.append(r.artifact_id)
            for staged in (self.root / "staging").iterdir():
                if staged.name not in self._held:
                    shutil.rmtree(staged, ignore_errors=True)
        return removed


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise IntegrityError(f"{path.name} of {folder.name[:12]} is missing or not JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or "model.onnx" not in manifest["files"]:
        raise IntegrityError(f"manifest of {folder.name[:12]} lists no model.onnx; not an MLFS artifact")
    return manifest


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _stamp(folder: Path, manifest: dict[str, Any]) -> dict[str, list[int]]:
    """Set the verified files' (and the manifest's) mtime to a moment already past and return their stat keys:
    a later write moves the mtime to now, so it never matches the stamp (see the module docstring)."""
    stamp = time.time_ns() - _STAMP_AGE_NS
    stats = {}
    for name in [*manifest["files"], "manifest.json"]:
        path = folder / name
        os.utime(path, ns=(path.stat().st_atime_ns, stamp))
        stats[name] = _stat_key(path)
    return stats


def verify_files(folder: Path, manifest: dict[str, Any], known: dict[str, list[int]] | None = None) -> list[str]:
    """Every file the manifest lists is present with its size and sha256. ``known`` (an index row's
    ``verified_stats``) lets a file whose inode, size and mtime are unchanged since it was hashed skip the hash,
    as long as the manifest itself is unchanged too. Returns the names hashed."""
    if known and not ((folder / "manifest.json").is_file() and _stat_key(folder / "manifest.json") == known.get("manifest.json")):
        known = None
    hashed = []
    for name, info in manifest["files"].items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise IntegrityError(f"manifest names a file outside its artifact: {name!r}")
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{name} of {folder.name[:12]} is missing")
        key = _stat_key(path)
        if known and known.get(name) == key and key[1] == info["size"]:
            continue
        if key[1] != info["size"] or sha256_file(path) != info["sha256"]:
            raise IntegrityError(f"{name} of {folder.name[:12]} differs from its manifest (size or sha256); not loaded")
        hashed.append(name)
    return hashed
