"""Build claims: one build per artifact key at a time, across threads, processes and server replicas.

The cache calls ``claims.claim(key)`` around a build (blocking until it holds the key) and ``try_claim(key)``
where it must not wait (eviction, removing a dead builder's leftovers). Either yields a lease whose ``confirm()``
the cache calls just before it publishes the finished folder: a builder that no longer holds its key raises
``LeaseLost`` there and publishes nothing.

- ``LocalClaims`` (the SQLite default): a per-key thread lock plus a file lock under ``<cache>/.locks``, so a
  server and ``mlfs warm`` on one host never build a key at once. The lock dies with its process.
- ``PostgresClaims`` (replicas): a row per key in ``build_claims`` with an owner, a generation (a fencing number)
  and an expiry on the database's clock. It is taken with one atomic upsert that only succeeds when no row exists
  or the row's lease has expired; the holder renews it every ``lease_s / 3`` from a thread while it builds, and
  deletes it when done. A replica killed mid-build stops renewing, so its claim expires after at most ``lease_s``
  and a waiting replica takes it over (rebuilding from scratch; the dead one's work folder is removed).

  Why a lease row rather than ``SELECT ... FOR UPDATE SKIP LOCKED`` or ``pg_advisory_lock``: both hold a
  transaction or a session open for the whole build (minutes) and end only when PostgreSQL notices the
  connection is gone. A replica cut off from the database but still running would keep building while
  another one, seeing the lock released, builds too, and neither could tell. With a lease, the holder knows:
  if it cannot renew for ``lease_s`` it has lost the key and discards its result (``confirm`` fails before
  the rename); the database clock decides expiry, so replicas' clocks need not agree; no connection is held,
  so it also works behind a transaction-pooling proxy (PgBouncer), and ``SELECT * FROM build_claims`` shows
  who builds what.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from slicer import file_lock
from slicer.paths import names_open_file

from .errors import DatabaseUnavailable, LeaseLost
from .metadata import MetadataStore, PostgresMetadata, open_metadata

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)


class Lease(Protocol):
    key: str

    def confirm(self) -> None:
        """Raise ``LeaseLost`` unless the key is still held (and, for a lease, extend it for the publish)."""


class Claims(Protocol):
    def claim(self, key: str) -> contextlib.AbstractContextManager[Lease]: ...
    def try_claim(self, key: str) -> contextlib.AbstractContextManager[Lease | None]: ...
    def close(self) -> None: ...


class _KeyLocks:
    """One thread lock per key within a process (threads of one process never compete through the database)."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def __call__(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextlib.contextmanager
    def try_hold(self, key: str) -> Iterator[bool]:
        """The key's thread lock if it is free now (True, held for the block), else False at once."""
        lock = self(key)
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lock.release()


class _Held:
    """A lock held for as long as its context lasts: nothing to renew, never lost."""

    def __init__(self, key: str) -> None:
        self.key = key

    def confirm(self) -> None:
        pass


class LocalClaims:
    """Claims among the threads and processes of one host: a thread lock and a file lock per key."""

    def __init__(self, lock_dir: Path) -> None:
        self.lock_dir = Path(lock_dir)
        self._threads = _KeyLocks()

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[Lease]:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with self._threads(key), file_lock(self.lock_dir / key, remove=True):  # no lock file left per key
            yield _Held(key)

    @contextlib.contextmanager
    def try_claim(self, key: str) -> Iterator[Lease | None]:
        with self._threads.try_hold(key) as free:
            if not free:
                yield None
                return
            with _try_file_lock(self.lock_dir / key) as got:
                yield _Held(key) if got else None

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _try_file_lock(path: Path) -> Iterator[bool]:
    """A non-blocking ``file_lock``: yields whether it was taken."""
    try:
        import fcntl
    except ImportError:
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            # a holder that removes its lock file on release may have unlinked this one: then it locks nothing
            yield names_open_file(path, f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)



class PostgresLease:
    """A claim row held by this replica, renewed from a thread until released."""

    def __init__(self, claims: PostgresClaims, key: str, generation: int) -> None:
        self.key, self.generation, self._claims = key, generation, claims
        self._renewed = time.monotonic()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{key[:8]}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        late = time.monotonic() - self._renewed
        if late > self._claims.lease_s / 2:  # e.g. a build step that holds the GIL: raise lease_s if this recurs
            log.warning("build claim on %s renewed %.1f s after the last renewal (lease %g s)", self.key[:12], late,
                        self._claims.lease_s)
        if self._claims.renew(self.key, self.generation):
            self._renewed = time.monotonic()
        else:
            self._lost = "another replica took the claim over after it expired"

    def _renew_loop(self) -> None:
        while not self._stop.wait(self._claims.lease_s / 3) and self._lost is None:
            try:
                self._renew()
            except DatabaseUnavailable as err:
                if time.monotonic() - self._renewed > self._claims.lease_s:
                    self._lost = f"renewals failed for {self._claims.lease_s:g} s ({err})"
                else:
                    log.warning("could not renew the build claim on %s: %s", self.key[:12], err)
        if self._lost:
            log.warning("build claim on %s lost: %s; its result will be discarded", self.key[:12], self._lost)

    def confirm(self) -> None:
        if self._lost is None:
            try:
                self._renew()
            except DatabaseUnavailable as err:
                self._lost = f"the database is unreachable ({err})"
        if self._lost is not None:
            raise LeaseLost(f"build of {self.key[:12]} lost its claim: {self._lost}")

    def release(self) -> None:
        """Stop renewing and delete the row (once: a replica shutting down may release it before its builder)."""
        self._stop.set()
        self._thread.join()
        with self._claims._guard:
            if self not in self._claims._held:
                return
            self._claims._held.discard(self)
        self._lost = self._lost or "released (the replica is shutting down)"
        try:
            self._claims.release(self.key, self.generation)
        except DatabaseUnavailable as err:  # the row expires by itself
            log.warning("could not release the build claim on %s: %s", self.key[:12], err)


class PostgresClaims:
    """Claims across replicas that share one PostgreSQL database (see the module's docstring)."""

    def __init__(self, meta: PostgresMetadata, lease_s: float = 30.0, poll_s: float = 1.0, owner: str | None = None) -> None:
        self.meta, self.lease_s, self.poll_s = meta, lease_s, poll_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._threads = _KeyLocks()
        self._held: set[PostgresLease] = set()  # live leases, released by close()
        self._guard = threading.Lock()

    def _lease(self, key: str, generation: int) -> PostgresLease:
        lease = PostgresLease(self, key, generation)
        with self._guard:
            self._held.add(lease)
        return lease

    def acquire(self, key: str) -> int | None:
        """Take the key if nobody holds a live claim on it; the claim's generation, or None."""
        now = self.meta.NOW
        rows = self.meta._execute(
            "INSERT INTO build_claims (key, owner, generation, expires, acquired) "
            f"VALUES (?, ?, 1, {now} + ?, {now}) ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, "
            "generation = build_claims.generation + 1, expires = excluded.expires, acquired = excluded.acquired "
            f"WHERE build_claims.expires < {now} RETURNING generation", (key, self.owner, self.lease_s))
        return rows[0][0] if rows else None

    def renew(self, key: str, generation: int) -> bool:
        return bool(self.meta._execute(
            f"UPDATE build_claims SET expires = {self.meta.NOW} + ? WHERE key = ? AND owner = ? AND generation = ? "
            "RETURNING key", (self.lease_s, key, self.owner, generation)))

    def release(self, key: str, generation: int) -> None:
        self.meta._execute("DELETE FROM build_claims WHERE key = ? AND owner = ? AND generation = ?",
                           (key, self.owner, generation))

    def holders(self) -> dict[str, str]:
        """Live claims: key -> owner (``host:pid:nonce``)."""
        return dict(self.meta._execute(f"SELECT key, owner FROM build_claims WHERE expires >= {self.meta.NOW}"))

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[Lease]:
        """Wait until this replica holds the key (polling every ``poll_s``); DatabaseUnavailable if it cannot ask."""
        with self._threads(key):
            while (generation := self.acquire(key)) is None:
                time.sleep(self.poll_s)
            lease = self._lease(key, generation)
            try:
                yield lease
            finally:
                lease.release()

    @contextlib.contextmanager
    def try_claim(self, key: str) -> Iterator[Lease | None]:
        with self._threads.try_hold(key) as free:
            generation = self.acquire(key) if free else None
            if generation is None:
                yield None
                return
            lease = self._lease(key, generation)
            try:
                yield lease
            finally:
                lease.release()

    def close(self) -> None:
        """Release every claim still held (a build abandoned at shutdown: another replica takes it over now, not
        after the lease; the abandoned build fails its ``confirm`` and publishes nothing), then disconnect."""
        with self._guard:
            held = list(self._held)
        for lease in held:
            log.warning("shutting down: releasing the build claim on %s unfinished", lease.key[:12])
            lease.release()
        self.meta.close()


def open_shared_state(store: Path, settings: Settings) -> tuple[MetadataStore, Claims | None, float]:
    """The metadata store, build claims and eviction grace a server on ``store`` uses under ``settings``:
    PostgreSQL with lease claims and the configured grace when ``database_url`` is set; else the store's SQLite
    file, the cache's own file locks (None) and immediate eviction (one host: POSIX keeps open files readable)."""
    url = settings.database_url.get_secret_value() if settings.database_url is not None else None
    if not url:
        return open_metadata(store, None), None, 0.0
    timeouts = {"connect_timeout_s": settings.db_connect_timeout_s, "statement_timeout_s": settings.db_statement_timeout_s}
    meta = open_metadata(store, url, **timeouts)
    # Claims get a connection of their own: renewals must not queue behind a burst of resolves on the shared one
    # (a busy replica lost its leases that way, renewed 6 s late with a 5 s lease, on a heavily loaded machine).
    claims = PostgresClaims(PostgresMetadata(url, migrate=False, **timeouts), settings.lease_s, settings.claim_poll_s)
    return meta, claims, settings.evict_grace_s
