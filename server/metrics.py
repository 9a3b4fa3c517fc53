"""Prometheus metrics of one server instance (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mlfs_requests_total", "HTTP requests", ["route", "status"], registry=self.registry)
        self.build_seconds = Histogram("mlfs_build_seconds", "Artifact build duration (slice, merge, export, validate)",
                                       buckets=(1, 5, 10, 30, 60, 120, 300, 600), registry=self.registry)
        self.cache_hits = Counter("mlfs_cache_hits_total", "Resolves answered from the cache", registry=self.registry)
        self.cache_misses = Counter("mlfs_cache_misses_total", "Resolves that started a build", registry=self.registry)
        self.bytes_served = Counter("mlfs_bytes_served_total", "Artifact bytes sent", registry=self.registry)
        self.build_failures = Counter("mlfs_build_failures_total", "Builds that failed (remembered, not retried), by "
                                      "kind: int8_gate, parity, error", ["kind"], registry=self.registry)
        self.builds_in_flight = Gauge("mlfs_builds_in_flight", "Builds queued or running", registry=self.registry)
