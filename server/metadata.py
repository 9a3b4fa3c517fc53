"""Metadata of the delivery server: artifacts, pins, hits, build times, latency measurements and calibration.

``MetadataStore`` is the interface. ``SQLiteMetadata`` is the default (one file beside the store, WAL mode, safe
across threads); ``PostgresMetadata`` holds the same tables in PostgreSQL, so several server replicas on one
shared store see one set of artifacts, pins and latency tables (and coordinate builds, ``server.coordination``).
Both speak the same SQL (``?`` placeholders, rewritten for psycopg) and share one versioned schema: ``MIGRATIONS``
are applied in order on open, under a lock, and the version reached is recorded in ``schema_version``.

Latency rows are kept one per measurement and summarised robustly when read: a bench row is one
``mlfs bench latency`` median, summarised as the median of the latest few per (profile, config, precision,
shape); device reports are summarised per client first (median of its latest reports), then as the median
over clients, so one client is one vote however often it reports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import statistics
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from slicer import ConfigError

from .errors import DatabaseUnavailable

log = logging.getLogger(__name__)


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
    evicting: float | None = None  # database time it was chosen for eviction; any use revives it


@dataclass
class FailedBuild:
    """A build that failed for a reason of the artifact itself (gate, parity, export), remembered per lineage
    (``server.service.lineage``: base, adapters, build recipe, validation data) so a restart does not repeat it."""

    lineage: str
    config_key: str
    precision: str
    model: str
    artifact_key: str
    kind: str  # int8_gate, parity or error
    reason: str  # one line, for people
    details: dict[str, Any]  # the figures: gate agreement and threshold, parity differences and allowed error
    failed: float = 0.0


class MetadataStore(Protocol):
    dialect: str  # "sqlite" or "postgresql"

    def put_artifact(self, record: ArtifactRecord) -> None: ...
    def get_artifact(self, key: str) -> ArtifactRecord | None: ...
    def list_artifacts(self) -> list[ArtifactRecord]: ...
    def delete_artifact(self, key: str) -> None: ...
    def touch(self, key: str) -> None: ...
    def set_pinned(self, key: str, pinned: bool) -> None: ...
    def mark_evicting(self, key: str) -> bool: ...
    def revive(self, key: str) -> bool: ...
    def delete_evicted(self, key: str, grace_s: float) -> bool: ...
    def put_latency(self, profile: str, config_key: str, precision: str, seq_len: int, batch: int, ms: float, source: str,
                    threads: int | None = None, client: str | None = None, load: float | None = None,
                    spinning: bool | None = None) -> None: ...
    def latency_table(self, profile: str) -> list[dict[str, Any]]: ...
    def put_calibration(self, threads: int, coeffs: tuple[float, float, float], info: dict[str, Any]) -> None: ...
    def calibration(self) -> dict[int, dict[str, Any]]: ...
    def latency_version(self) -> tuple[int, int]: ...
    def put_failed_build(self, failure: FailedBuild) -> None: ...
    def failed_builds(self, lineage: str | None = None) -> list[FailedBuild]: ...
    def failed_build(self, artifact_key: str) -> FailedBuild | None: ...
    def clear_failed_builds(self, model: str, config_key: str | None = None, precision: str | None = None) -> int: ...
    def put_quality(self, scope: str, config_key: str, metric: str, value: float, info: dict[str, Any]) -> None: ...
    def qualities(self, scope: str) -> dict[str, dict[str, Any]]: ...
    def put_resolution(self, rid: str, request: str, artifact_key: str) -> None: ...
    def resolution(self, rid: str) -> tuple[str, str] | None: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


# Schema versions, applied in order; entry i takes a database from version i to i + 1. Each statement is
# (sql, dialects): the type names are ones both databases accept (SQLite maps them to its affinities).
# Version 1 is the schema of the first release (``IF NOT EXISTS``: a store made before versioning is at version 1
# already, and applying it changes nothing).
MIGRATIONS: list[list[tuple[str, tuple[str, ...]]]] = [
    [  # 1: artifacts and latency measurements
        ("""CREATE TABLE IF NOT EXISTS artifacts (
            key TEXT PRIMARY KEY, size BIGINT NOT NULL, files TEXT NOT NULL, info TEXT NOT NULL,
            pinned INTEGER NOT NULL DEFAULT 0, hits BIGINT NOT NULL DEFAULT 0,
            created DOUBLE PRECISION NOT NULL, last_used DOUBLE PRECISION NOT NULL,
            build_seconds DOUBLE PRECISION NOT NULL DEFAULT 0)""", ("sqlite", "postgresql")),
        ("""CREATE TABLE IF NOT EXISTS latency (
            profile TEXT NOT NULL, config_key TEXT NOT NULL, precision TEXT NOT NULL, seq_len INTEGER NOT NULL,
            batch INTEGER NOT NULL, ms DOUBLE PRECISION NOT NULL, source TEXT NOT NULL,
            measured DOUBLE PRECISION NOT NULL)""", ("sqlite", "postgresql")),
        ("CREATE INDEX IF NOT EXISTS latency_profile ON latency (profile, config_key, precision, seq_len, batch)",
         ("sqlite", "postgresql")),
    ],
    [  # 2: eviction in two steps (mark, then delete after a grace period) and build claims across replicas
        ("ALTER TABLE artifacts ADD COLUMN evicting DOUBLE PRECISION", ("sqlite", "postgresql")),
        ("""CREATE TABLE build_claims (
            key TEXT PRIMARY KEY, owner TEXT NOT NULL, generation BIGINT NOT NULL,
            expires DOUBLE PRECISION NOT NULL, acquired DOUBLE PRECISION NOT NULL)""", ("postgresql",)),
    ],
    [  # 3: what each latency row was measured under (threads, load, spinning) and which client reported it;
        # the built-in calibration per thread count (estimates on a store nothing was measured on yet)
        ("ALTER TABLE latency ADD COLUMN threads INTEGER", ("sqlite", "postgresql")),
        ("ALTER TABLE latency ADD COLUMN client TEXT", ("sqlite", "postgresql")),
        ("ALTER TABLE latency ADD COLUMN load DOUBLE PRECISION", ("sqlite", "postgresql")),
        ("ALTER TABLE latency ADD COLUMN spinning INTEGER", ("sqlite", "postgresql")),
        ("""CREATE TABLE calibration (
            threads INTEGER PRIMARY KEY, a DOUBLE PRECISION NOT NULL, b DOUBLE PRECISION NOT NULL,
            c DOUBLE PRECISION NOT NULL, info TEXT NOT NULL, measured DOUBLE PRECISION NOT NULL)""",
         ("sqlite", "postgresql")),
    ],
    [  # 4 (issue 18): builds that failed, with why (never retried blindly after a restart); each config's quality
        # measured before its first serve for a model without a palette table; resolutions a 202 named, so a
        # device polling one after a restart, or on another replica, is told how its build ended
        ("""CREATE TABLE failed_builds (
            lineage TEXT NOT NULL, config_key TEXT NOT NULL, precision TEXT NOT NULL, model TEXT NOT NULL,
            artifact_key TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL, details TEXT NOT NULL,
            failed DOUBLE PRECISION NOT NULL, PRIMARY KEY (lineage, config_key, precision))""",
         ("sqlite", "postgresql")),
        ("CREATE INDEX failed_builds_artifact ON failed_builds (artifact_key)", ("sqlite", "postgresql")),
        ("""CREATE TABLE config_quality (
            scope TEXT NOT NULL, config_key TEXT NOT NULL, metric TEXT NOT NULL, value DOUBLE PRECISION NOT NULL,
            info TEXT NOT NULL, measured DOUBLE PRECISION NOT NULL, PRIMARY KEY (scope, config_key))""",
         ("sqlite", "postgresql")),
        ("""CREATE TABLE resolutions (
            id TEXT PRIMARY KEY, request TEXT NOT NULL, artifact_key TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL)""", ("sqlite", "postgresql")),
    ],
]
RESOLUTIONS_KEPT_S = 7 * 86400  # a resolution id answers this long after its 202
BENCH_RECENT = 5  # bench runs per (profile, config, precision, shape) that count: a re-bench replaces old tables
DEVICE_RECENT = 20  # reports per client and key that count (older ones are deleted)
DEVICE_WINDOW_S = 30 * 86400  # device reports older than this are ignored
SCHEMA_VERSION = len(MIGRATIONS)
COLUMNS = "key, size, files, info, pinned, hits, created, last_used, build_seconds, evicting"


class _SQLMetadata:
    """The methods both databases share; a subclass runs statements (``_execute``) and migrations."""

    dialect: str
    NOW: str  # SQL for the database's clock in unix seconds (one clock for all replicas)

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def _apply_migrations(self, execute, current: int) -> int:
        if current > SCHEMA_VERSION:
            raise ConfigError(f"the metadata database is at schema version {current}, newer than this server's "
                              f"{SCHEMA_VERSION}: upgrade the server (or point it at another database)")
        for version in range(current, SCHEMA_VERSION):
            for sql, dialects in MIGRATIONS[version]:
                if self.dialect in dialects:
                    execute(sql)
            log.info("metadata schema migrated to version %d (%s)", version + 1, self.dialect)
        if current == 0:
            execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif current < SCHEMA_VERSION:
            execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        return SCHEMA_VERSION

    def schema_version(self) -> int:
        return self._execute("SELECT version FROM schema_version")[0][0]

    def put_artifact(self, r: ArtifactRecord) -> None:
        now = time.time()
        self._execute(
            f"INSERT INTO artifacts ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (key) DO UPDATE SET "
            "size = excluded.size, files = excluded.files, info = excluded.info, pinned = excluded.pinned, "
            "hits = excluded.hits, created = excluded.created, last_used = excluded.last_used, "
            "build_seconds = excluded.build_seconds, evicting = NULL",
            (r.key, r.size, json.dumps(r.files), json.dumps(r.info), int(r.pinned), r.hits,
             r.created or now, r.last_used or now, r.build_seconds),
        )

    @staticmethod
    def _record(row: tuple) -> ArtifactRecord:
        key, size, files, info, pinned, hits, created, last_used, build_seconds, evicting = row
        return ArtifactRecord(key, size, json.loads(files), json.loads(info), bool(pinned), hits, created, last_used,
                              build_seconds, evicting)

    def get_artifact(self, key: str) -> ArtifactRecord | None:
        rows = self._execute(f"SELECT {COLUMNS} FROM artifacts WHERE key = ?", (key,))
        return self._record(rows[0]) if rows else None

    def list_artifacts(self) -> list[ArtifactRecord]:
        return [self._record(r) for r in self._execute(f"SELECT {COLUMNS} FROM artifacts ORDER BY last_used DESC")]

    def delete_artifact(self, key: str) -> None:
        self._execute("DELETE FROM artifacts WHERE key = ?", (key,))

    def touch(self, key: str) -> None:
        self._execute("UPDATE artifacts SET hits = hits + 1, last_used = ? WHERE key = ?", (time.time(), key))

    def set_pinned(self, key: str, pinned: bool) -> None:
        # pinning also takes an artifact out of an eviction in progress
        self._execute("UPDATE artifacts SET pinned = ?, evicting = NULL WHERE key = ?", (int(pinned), key))

    # ----- eviction in two steps: mark, then delete when nobody used it for a grace period --------------------
    def mark_evicting(self, key: str) -> bool:
        """Choose an unpinned artifact for eviction; False if it is pinned, gone or already marked."""
        rows = self._execute(f"UPDATE artifacts SET evicting = {self.NOW} WHERE key = ? AND pinned = 0 "
                             "AND evicting IS NULL RETURNING key", (key,))
        return bool(rows)

    def revive(self, key: str) -> bool:
        """Cancel an eviction because the artifact is being used; False if its row is already deleted."""
        return bool(self._execute("UPDATE artifacts SET evicting = NULL WHERE key = ? RETURNING key", (key,)))

    def delete_evicted(self, key: str, grace_s: float) -> bool:
        """Delete the row if it was marked at least ``grace_s`` ago and not used since (one caller wins)."""
        rows = self._execute(f"DELETE FROM artifacts WHERE key = ? AND pinned = 0 AND evicting IS NOT NULL "
                             f"AND evicting <= {self.NOW} - ? RETURNING key", (key, grace_s))
        return bool(rows)

    # ----- latency tables ----------------------------------------------------------------------------------
    def put_latency(self, profile: str, config_key: str, precision: str, seq_len: int, batch: int, ms: float, source: str,
                    threads: int | None = None, client: str | None = None, load: float | None = None,
                    spinning: bool | None = None) -> None:
        self._execute(
            "INSERT INTO latency (profile, config_key, precision, seq_len, batch, ms, source, measured, threads, "
            "client, load, spinning) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (profile, config_key, precision, seq_len, batch, ms, source, time.time(), threads, client, load,
             None if spinning is None else int(spinning)))
        if source == "device":  # keep a client's latest reports per key only: the table stays bounded
            same = ("profile = ? AND config_key = ? AND precision = ? AND seq_len = ? AND batch = ? "
                    "AND source = 'device' AND " + ("client IS NULL" if client is None else "client = ?"))
            args = (profile, config_key, precision, seq_len, batch, *(() if client is None else (client,)))
            older = self._execute(f"SELECT measured FROM latency WHERE {same} ORDER BY measured DESC "
                                  f"LIMIT 1 OFFSET {DEVICE_RECENT}", args)
            if older:
                self._execute(f"DELETE FROM latency WHERE {same} AND measured <= ?", (*args, older[0][0]))
        self._latency_writes += 1

    def latency_table(self, profile: str) -> list[dict[str, Any]]:
        """One row per (config, precision, seq_len, batch, source): ``ms`` is the robust summary, ``samples`` the
        measurements behind it, ``clients`` the distinct reporting clients (device rows; 1 for bench rows) and
        ``spread`` the median absolute deviation relative to ``ms``."""
        rows = self._execute(
            "SELECT config_key, precision, seq_len, batch, source, client, ms FROM latency WHERE profile = ? "
            "AND (source != 'device' OR measured >= ?) ORDER BY measured DESC",
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
        self._execute("INSERT INTO calibration (threads, a, b, c, info, measured) VALUES (?, ?, ?, ?, ?, ?) "
                      "ON CONFLICT (threads) DO UPDATE SET a = excluded.a, b = excluded.b, c = excluded.c, "
                      "info = excluded.info, measured = excluded.measured",
                      (threads, a, b, c, json.dumps(info), time.time()))
        self._latency_writes += 1

    def calibration(self) -> dict[int, dict[str, Any]]:
        """threads -> {"coeffs": (a, b, c), "info": {...}, "measured": unix time}."""
        return {t: {"coeffs": (a, b, c), "info": json.loads(info), "measured": measured}
                for t, a, b, c, info, measured in
                self._execute("SELECT threads, a, b, c, info, measured FROM calibration")}

    def latency_version(self) -> tuple[int, int]:
        """Changes whenever latency rows or calibration change, through this object or another process (another
        replica, ``mlfs bench latency`` run beside the server): estimates cached against it stay right."""
        return self._latency_writes, self._external_version()

    def _external_version(self) -> int:
        raise NotImplementedError

    # ----- failed builds, measured quality, resolutions (schema version 4) -----------------------------------
    def put_failed_build(self, f: FailedBuild) -> None:
        self._execute(
            "INSERT INTO failed_builds (lineage, config_key, precision, model, artifact_key, kind, reason, details, "
            "failed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (lineage, config_key, precision) DO UPDATE SET "
            "model = excluded.model, artifact_key = excluded.artifact_key, kind = excluded.kind, "
            "reason = excluded.reason, details = excluded.details, failed = excluded.failed",
            (f.lineage, f.config_key, f.precision, f.model, f.artifact_key, f.kind, f.reason,
             json.dumps(f.details, default=str), f.failed or time.time()))

    _FAILED = "lineage, config_key, precision, model, artifact_key, kind, reason, details, failed"

    @staticmethod
    def _failure(row: tuple) -> FailedBuild:
        *head, details, failed = row
        return FailedBuild(*head, json.loads(details), failed)

    def failed_builds(self, lineage: str | None = None) -> list[FailedBuild]:
        where, args = ("WHERE lineage = ?", (lineage,)) if lineage is not None else ("", ())
        return [self._failure(r) for r in
                self._execute(f"SELECT {self._FAILED} FROM failed_builds {where} ORDER BY failed", args)]

    def failed_build(self, artifact_key: str) -> FailedBuild | None:
        rows = self._execute(f"SELECT {self._FAILED} FROM failed_builds WHERE artifact_key = ? ORDER BY failed DESC",
                             (artifact_key,))
        return self._failure(rows[0]) if rows else None

    def clear_failed_builds(self, model: str, config_key: str | None = None, precision: str | None = None) -> int:
        """Forget the failed builds recorded for model ``model`` (all, or one config and/or precision); how many."""
        sql, args = "DELETE FROM failed_builds WHERE model = ?", [model]
        for column, value in (("config_key", config_key), ("precision", precision)):
            if value is not None:
                sql, args = f"{sql} AND {column} = ?", [*args, value]
        return len(self._execute(f"{sql} RETURNING config_key", tuple(args)))

    def put_quality(self, scope: str, config_key: str, metric: str, value: float, info: dict[str, Any]) -> None:
        self._execute("INSERT INTO config_quality (scope, config_key, metric, value, info, measured) "
                      "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, config_key) DO UPDATE SET metric = excluded.metric, "
                      "value = excluded.value, info = excluded.info, measured = excluded.measured",
                      (scope, config_key, metric, value, json.dumps(info), time.time()))

    def qualities(self, scope: str) -> dict[str, dict[str, Any]]:
        """config key -> {"metric", "value", "info", "measured"} measured in ``scope``."""
        return {k: {"metric": m, "value": v, "info": json.loads(i), "measured": t} for k, m, v, i, t in
                self._execute("SELECT config_key, metric, value, info, measured FROM config_quality WHERE scope = ?",
                              (scope,))}

    def put_resolution(self, rid: str, request: str, artifact_key: str) -> None:
        now = time.time()
        self._execute("INSERT INTO resolutions (id, request, artifact_key, created) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (id) DO UPDATE SET request = excluded.request, "
                      "artifact_key = excluded.artifact_key, created = excluded.created", (rid, request, artifact_key, now))
        self._execute("DELETE FROM resolutions WHERE created < ?", (now - RESOLUTIONS_KEPT_S,))

    def resolution(self, rid: str) -> tuple[str, str] | None:
        """(request JSON, artifact key) of a resolution a 202 named, or None."""
        rows = self._execute("SELECT request, artifact_key FROM resolutions WHERE id = ? AND created >= ?",
                             (rid, time.time() - RESOLUTIONS_KEPT_S))
        return (rows[0][0], rows[0][1]) if rows else None

    def ping(self) -> None:
        """Raise (DatabaseUnavailable) unless the database answers."""
        self._execute("SELECT 1")


class SQLiteMetadata(_SQLMetadata):
    dialect = "sqlite"
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")  # a server and `mlfs warm` may open the file at once
        self._lock = threading.Lock()
        self._latency_writes = 0
        self._migrate()

    def _migrate(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one migrating process at a time
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            self._apply_migrations(db.execute, row[0] if row else 0)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _external_version(self) -> int:
        with self._lock:  # SQLite bumps data_version when another connection commits to the file
            return self._db.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        pass  # a build thread may still record its artifact after the server stops; the file closes with the process


class PostgresMetadata(_SQLMetadata):
    """The metadata in PostgreSQL, for replicas: one connection (autocommit) shared by the threads of a process
    behind a lock, reconnected after a failure. A database that cannot be reached raises ``DatabaseUnavailable``
    (503) instead of hanging: connections time out after ``connect_timeout_s``, statements after
    ``statement_timeout_s``."""

    dialect = "postgresql"
    NOW = "extract(epoch from clock_timestamp())::double precision"
    MIGRATION_LOCK = 0x6D6C6673  # pg_advisory_xact_lock id ("mlfs"): replicas starting at once migrate one by one

    def __init__(self, url: str, connect_timeout_s: float = 5.0, statement_timeout_s: float = 10.0,
                 migrate: bool = True) -> None:
        import psycopg

        self._psycopg = psycopg
        self._url = url
        self._kwargs = {"autocommit": True, "connect_timeout": max(1, round(connect_timeout_s)),
                        "options": f"-c statement_timeout={int(statement_timeout_s * 1000)}",
                        "application_name": f"mlfs-{socket.gethostname()}"[:63],
                        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
        self._conn = None
        self._lock = threading.Lock()
        self.round_trips = 0  # statements sent (a benchmark counts them per resolve)
        self._latency_writes = 0
        self._version_seen: tuple[float, int] = (0.0, 0)  # (when asked, answer): other replicas' writes, cached 1 s
        if migrate:
            self._migrate()

    def _connection(self):
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._psycopg.connect(self._url, **self._kwargs)
        return self._conn

    def _migrate(self) -> None:
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    run = lambda sql, args=(): conn.execute(sql.replace("?", "%s"), args)  # noqa: E731
                    run("SELECT pg_advisory_xact_lock(?)", (self.MIGRATION_LOCK,))
                    run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                    row = run("SELECT version FROM schema_version").fetchone()
                    self._apply_migrations(run, row[0] if row else 0)
            except self._psycopg.OperationalError as err:
                self._drop_connection()
                raise _unavailable(err) from None

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                cur = self._connection().execute(sql.replace("?", "%s"), args)
                self.round_trips += 1
                return cur.fetchall() if cur.description else []
            except self._psycopg.OperationalError as err:  # connection lost, refused, timed out
                self._drop_connection()
                raise _unavailable(err) from None

    def _external_version(self) -> int:
        """A digest of the latency and calibration tables that any replica's write changes, asked at most once a
        second (estimates may lag another replica's measurement by that much; a warm resolve costs no round trip)."""
        now = time.monotonic()
        if now - self._version_seen[0] >= 1.0:
            count, newest, calibrated = self._execute(
                "SELECT (SELECT COUNT(*) FROM latency), (SELECT COALESCE(MAX(measured), 0) FROM latency), "
                "(SELECT COALESCE(MAX(measured), 0) FROM calibration)")[0]
            self._version_seen = (now, hash((count, newest, calibrated)))
        return self._version_seen[1]

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close; it is discarded anyway
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop_connection()


def _unavailable(err: Exception) -> DatabaseUnavailable:
    """The error for callers (it reaches HTTP responses: no host, port or user in it); the details are logged."""
    log.warning("metadata database unreachable: %s", " ".join(str(err).split())[:300])
    return DatabaseUnavailable("metadata database unreachable; retry later (the server log has the details)")


def open_metadata(store: Path, database_url: str | None, **options) -> MetadataStore:
    """PostgreSQL when ``database_url`` is a ``postgresql://`` URL, else the store's own SQLite file."""
    if not database_url:
        return SQLiteMetadata(Path(store) / "meta.sqlite")
    if not database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("MLFS_DATABASE_URL must be a postgresql:// URL (or unset for the store's SQLite file), "
                          f"got one starting {database_url.split(':', 1)[0]!r}")
    return PostgresMetadata(database_url, **options)
