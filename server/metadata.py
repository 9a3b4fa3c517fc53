"""Metadata of the delivery server: artifacts, pins, hits, build times, latency measurements and calibration.

``MetadataStore`` is the interface; ``SQLiteMetadata`` the default implementation (one file, WAL mode,
safe across threads). Another database implements the same methods.

Latency rows are kept one per measurement and summarised robustly when read: a bench row is one
``mlfs bench latency`` median, summarised as the median of the latest few per (profile, config, precision,
shape); device reports are summarised per client first (median of its latest reports), then as the median
over clients, so one client is one vote however often it reports.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import threading
import time
from collections import defaultdict
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
    def put_latency(self, profile: str, config_key: str, precision: str, seq_len: int, batch: int, ms: float, source: str,
                    threads: int | None = None, client: str | None = None, load: float | None = None,
                    spinning: bool | None = None) -> None: ...
    def latency_table(self, profile: str) -> list[dict[str, Any]]: ...
    def put_calibration(self, threads: int, coeffs: tuple[float, float, float], info: dict[str, Any]) -> None: ...
    def calibration(self) -> dict[int, dict[str, Any]]: ...
    def latency_version(self) -> tuple[int, int]: ...


BENCH_RECENT = 5  # bench runs per (profile, config, precision, shape) that count: a re-bench replaces old tables
DEVICE_RECENT = 20  # reports per client and key that count (older ones are deleted)
DEVICE_WINDOW_S = 30 * 86400  # device reports older than this are ignored


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
CREATE TABLE IF NOT EXISTS calibration (
    threads INTEGER PRIMARY KEY, a REAL NOT NULL, b REAL NOT NULL, c REAL NOT NULL, info TEXT NOT NULL,
    measured REAL NOT NULL
);
"""
# Added after the first release; stores made before get them on open (NULL in old rows).
LATENCY_COLUMNS = {"threads": "INTEGER", "client": "TEXT", "load": "REAL", "spinning": "INTEGER"}


class SQLiteMetadata:
    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(latency)")}
        for column, kind in LATENCY_COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE latency ADD COLUMN {column} {kind}")
        self._lock = threading.Lock()
        self._latency_writes = 0

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

    def put_latency(self, profile: str, config_key: str, precision: str, seq_len: int, batch: int, ms: float, source: str,
                    threads: int | None = None, client: str | None = None, load: float | None = None,
                    spinning: bool | None = None) -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO latency (profile, config_key, precision, seq_len, batch, ms, source, measured, threads, "
                "client, load, spinning) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (profile, config_key, precision, seq_len, batch, ms, source, now, threads, client, load,
                 None if spinning is None else int(spinning)))
            if source == "device":  # keep a client's latest reports per key only: the table stays bounded
                self._db.execute(
                    "DELETE FROM latency WHERE rowid IN (SELECT rowid FROM latency WHERE profile = ? AND config_key = ? "
                    "AND precision = ? AND seq_len = ? AND batch = ? AND source = 'device' AND client IS ? "
                    "ORDER BY measured DESC LIMIT -1 OFFSET ?)",
                    (profile, config_key, precision, seq_len, batch, client, DEVICE_RECENT))
            self._latency_writes += 1

    def latency_table(self, profile: str) -> list[dict[str, Any]]:
        """One row per (config, precision, seq_len, batch, source): ``ms`` is the robust summary, ``samples`` the
        measurements behind it, ``clients`` the distinct reporting clients (device rows; 1 for bench rows) and
        ``spread`` the median absolute deviation relative to ``ms``."""
        rows = self._execute(
            "SELECT config_key, precision, seq_len, batch, source, client, ms FROM latency WHERE profile = ? "
            "AND (source != 'device' OR measured >= ?) ORDER BY measured DESC, rowid DESC",
            (profile, time.time() - DEVICE_WINDOW_S))
        groups: dict[tuple, dict[str | None, list[float]]] = defaultdict(lambda: defaultdict(list))
        for config_key, precision, seq_len, batch, source, client, ms in rows:
            groups[(config_key, precision, seq_len, batch, source)][client if source == "device" else None].append(ms)
        out = []
        for (config_key, precision, seq_len, batch, source), by_client in groups.items():
            if source == "device":
                votes = [statistics.median(v[:DEVICE_RECENT]) for v in by_client.values()]
            else:
                votes = [ms for v in by_client.values() for ms in v[:BENCH_RECENT]]
            ms = statistics.median(votes)
            spread = statistics.median(abs(v - ms) for v in votes) / ms
            out.append({"config_key": config_key, "precision": precision, "seq_len": seq_len, "batch": batch,
                        "source": source, "ms": ms, "samples": sum(len(v) for v in by_client.values()),
                        "clients": len(by_client) if source == "device" else 1, "spread": spread})
        return out

    def put_calibration(self, threads: int, coeffs: tuple[float, float, float], info: dict[str, Any]) -> None:
        a, b, c = coeffs
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO calibration VALUES (?, ?, ?, ?, ?, ?)",
                             (threads, a, b, c, json.dumps(info), time.time()))
            self._latency_writes += 1

    def calibration(self) -> dict[int, dict[str, Any]]:
        """threads -> {"coeffs": (a, b, c), "info": {...}, "measured": unix time}."""
        return {t: {"coeffs": (a, b, c), "info": json.loads(info), "measured": measured}
                for t, a, b, c, info, measured in self._execute("SELECT * FROM calibration")}

    def latency_version(self) -> tuple[int, int]:
        """Changes whenever latency rows or calibration change, through this object or (SQLite's data_version)
        any other connection to the same file, e.g. ``mlfs bench latency`` run beside the server."""
        with self._lock:
            return self._latency_writes, self._db.execute("PRAGMA data_version").fetchone()[0]
