"""Metadata of the delivery server: artifacts, pins, hits, build times and latency tables.

``MetadataStore`` is the interface; ``SQLiteMetadata`` the default implementation (one file, WAL mode,
safe across threads). Another database implements the same methods.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass
class ArtifactRecord:
    key: str
    size: int
    files: dict[str, dict[str, Any]]  # name -> {"sha256", "size"}
    info: dict[str, Any]  # config, precision, model name, ... (what the API reports)
    pinned: bool = False
    hits: int = 0
    created: float = 0.0
    last_used: float = 0.0
    build_seconds: float = 0.0


class MetadataStore(Protocol):
    def put_artifact(self, record: ArtifactRecord) -> None: ...
    def get_artifact(self, key: str) -> ArtifactRecord | None: ...
    def list_artifacts(self) -> list[ArtifactRecord]: ...
    def delete_artifact(self, key: str) -> None: ...
    def touch(self, key: str) -> None: ...
    def set_pinned(self, key: str, pinned: bool) -> None: ...
    def put_latency(self, profile: str, config_key: str, precision: str, seq_len: int, batch: int, ms: float, source: str) -> None: ...
    def latency_table(self, profile: str) -> list[dict[str, Any]]: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    key TEXT PRIMARY KEY, size INTEGER NOT NULL, files TEXT NOT NULL, info TEXT NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0, hits INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, last_used REAL NOT NULL, build_seconds REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS latency (
    profile TEXT NOT NULL, config_key TEXT NOT NULL, precision TEXT NOT NULL, seq_len INTEGER NOT NULL,
    batch INTEGER NOT NULL, ms REAL NOT NULL, source TEXT NOT NULL, measured REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS latency_profile ON latency (profile, config_key, precision, seq_len, batch);
"""


class SQLiteMetadata:
    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def put_artifact(self, r: ArtifactRecord) -> None:
        now = time.time()
        self._execute(
            "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.key, r.size, json.dumps(r.files), json.dumps(r.info), int(r.pinned), r.hits,
             r.created or now, r.last_used or now, r.build_seconds),
        )

    @staticmethod
    def _record(row: tuple) -> ArtifactRecord:
        key, size, files, info, pinned, hits, created, last_used, build_seconds = row
        return ArtifactRecord(key, size, json.loads(files), json.loads(info), bool(pinned), hits, created, last_used, build_seconds)

    def get_artifact(self, key: str) -> ArtifactRecord | None:
        rows = self._execute("SELECT * FROM artifacts WHERE key = ?", (key,))
        return self._record(rows[0]) if rows else None

    def list_artifacts(self) -> list[ArtifactRecord]:
        return [self._record(r) for r in self._execute("SELECT * FROM artifacts ORDER BY last_used DESC")]

    def delete_artifact(self, key: str) -> None:
        self._execute("DELETE FROM artifacts WHERE key = ?", (key,))

    def touch(self, key: str) -> None:
        self._execute("UPDATE artifacts SET hits = hits + 1, last_used = ? WHERE key = ?", (time.time(), key))

    def set_pinned(self, key: str, pinned: bool) -> None:
        self._execute("UPDATE artifacts SET pinned = ? WHERE key = ?", (int(pinned), key))

    def put_latency(self, profile: str, config_key: str, precision: str, seq_len: int, batch: int, ms: float, source: str) -> None:
        self._execute("INSERT INTO latency VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (profile, config_key, precision, seq_len, batch, ms, source, time.time()))

    def latency_table(self, profile: str) -> list[dict[str, Any]]:
        """Median-free summary: the mean of all measurements per (config, precision, seq_len, batch)."""
        rows = self._execute(
            "SELECT config_key, precision, seq_len, batch, AVG(ms), COUNT(*) FROM latency WHERE profile = ? "
            "GROUP BY config_key, precision, seq_len, batch", (profile,))
        return [{"config_key": c, "precision": p, "seq_len": s, "batch": b, "ms": ms, "samples": n} for c, p, s, b, ms, n in rows]
