"""Device latency reports: who may send them, how often, and which values are believable.

A report moves estimates only for its own profile (and thread count), only through the median over distinct
clients once ``telemetry_min_clients`` agree (``metadata.latency_table``, ``latency_model``), and never
another profile's: carrying a fit across profiles uses operator bench rows only. On top of that scoping, a
device token (``device_token``) authenticates reporters where devices can be provisioned with one, and each
client address is rate-limited.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict

from .errors import ServerError
from .latency_model import LatencyEstimate


class ReportRejected(ServerError, ValueError):
    """A report that is out of bounds or out of scope (HTTP 422)."""


class RateLimited(ServerError):
    """Over the per-client report rate (HTTP 429 with Retry-After)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many latency reports from this client; retry in {math.ceil(retry_after)} s")
        self.retry_after = retry_after
        self.retry_after_s = max(1, math.ceil(retry_after))


class RateLimiter:
    """A token bucket per client: ``burst`` reports at once, refilled at ``per_minute``. Remembers at most
    ``max_clients`` clients (the least recently seen are forgotten, which only ever gives them a fresh bucket)."""

    def __init__(self, per_minute: float, burst: int = 10, max_clients: int = 10_000) -> None:
        self.rate, self.burst, self.max_clients = per_minute / 60, burst, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[client] = (tokens, now)
                raise RateLimited((1 - tokens) / self.rate)
            self._buckets[client] = (tokens - 1, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)


def client_id(address: str | None) -> str:
    """What a client is stored as: a hash of its address, so the table keeps no addresses."""
    return hashlib.sha256((address or "?").encode()).hexdigest()[:16]


def check_report(ms: float, threads: int | None, profile_threads: int, estimate: LatencyEstimate | None,
                 max_factor: float) -> None:
    """Finite and positive, from a device of the profile's thread count, and within ``max_factor`` of what the
    server already estimates for that config, profile and shape (a report can refine an estimate, not replace
    it with something absurd; a real tenfold change is for ``mlfs bench latency`` to measure)."""
    if not math.isfinite(ms) or ms <= 0:
        raise ReportRejected(f"latency_ms must be a finite positive number, got {ms}")
    if threads is not None and threads != profile_threads:
        raise ReportRejected(f"the profile runs {profile_threads} threads; a report measured with {threads} belongs "
                             "to another profile")
    # Against the calibration alone (nothing measured on this profile yet) there is no reference to bound by:
    # synthetic stacks are not the artifact (tiny graphs run far under it); min-clients and scoping still hold.
    if estimate is not None and estimate.source != "calibration" and not estimate.ms / max_factor <= ms <= estimate.ms * max_factor:
        raise ReportRejected(f"latency_ms={ms:g} is more than {max_factor:g}x away from the estimate for this "
                             f"artifact on the profile ({estimate.ms:.2f} ms, {estimate.source}); refused")
