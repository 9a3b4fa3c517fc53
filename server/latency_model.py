"""Latency estimates per device profile, with their uncertainty and where they come from.

The model of one forward pass on a profile is ``ms = a + b * GFLOPs + c * layers``: a fixed cost per call,
compute at the requested shape (attention included, ``selection.gflops``), and a per-layer cost (operator
dispatch, thread synchronisation, the memory-bound element-wise work). Its coefficients for a profile come from,
in order of preference:

1. the profile's own rows: ``mlfs bench latency`` tables, plus device reports once enough distinct clients
   agree (``telemetry_min_clients``). Few rows adjust a prior rather than replace it: one row sets its level,
   two or more set the compute and the fixed parts separately, five or more spanning two depths fit all three;
2. the prior: another profile's fit (bench rows only: device reports never cross profiles), carried over to
   this profile's thread count by the thread-scaling model that the calibration measured (each coefficient
   scaled by the ratio of the calibration's coefficients at the two thread counts) and by the speed scores;
3. without any bench rows, the calibration itself (``server.calibration``) at the profile's thread count.

A measured figure for the exact config and shape (bench, or device reports from enough clients) overrides the
model. Every estimate carries a relative standard deviation by source; selection compares the conservative
``upper_ms`` (the one-sided 90 % quantile) with a latency budget. The figures per source are judgement, checked
by ``benchmarks/latency_bench.py`` (held-out errors per source, and how often the truth is under ``upper_ms``).
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from slicer import ModelDims, SubnetConfig

from .lru import LRU
from .profiles import DeviceProfile

UPPER_Z = 1.2816  # one-sided 90 % quantile of a normal
# Relative standard deviation of an estimate, by where it comes from.
REL_SD = {"measured": 0.05, "device": 0.05, "fit": 0.08, "level": 0.12, "transfer": 0.25, "calibration": 0.5}
INT8_FACTOR = 0.85  # int8 / fp32 latency without an int8 measurement: 0.77-0.88 measured (issue 11, no VNNI)
INT8_EXTRA_SD = 0.10
MIN_DONOR_CONFIGS = 2  # a profile lends its fit to others once it has bench rows on this many configs
FULL_FIT_POINTS = 5  # own points (spanning two depths) before all three coefficients are fitted freely


@dataclass(frozen=True)
class Coeffs:
    a: float  # ms per call
    b: float  # ms per GFLOP
    c: float  # ms per layer

    def predict(self, gf: float, layers: int) -> float:
        return self.a + self.b * gf + self.c * layers

    def scaled(self, k: float) -> Coeffs:
        return Coeffs(self.a * k, self.b * k, self.c * k)


@dataclass(frozen=True)
class LatencyEstimate:
    ms: float  # central estimate
    rel_sd: float  # relative standard deviation
    source: str  # measured | device | fit | level | transfer | calibration

    @property
    def upper_ms(self) -> float:
        """The conservative estimate a latency budget is checked against."""
        return self.ms * (1 + UPPER_Z * self.rel_sd)

    def as_dict(self) -> dict[str, Any]:
        return {"latency_ms": round(self.ms, 2), "latency_ms_upper": round(self.upper_ms, 2),
                "latency_rel_sd": round(self.rel_sd, 3), "latency_source": self.source}


@dataclass(frozen=True)
class Point:
    gf: float
    layers: int
    ms: float


def gflops(dims: ModelDims, cfg: SubnetConfig, seq_len: int, batch: int) -> float:
    """Forward FLOPs: 2 per multiply-add of every matmul weight, plus attention scores and mixing."""
    count = cfg.param_count(dims)
    matmul = 2 * count.non_embedding * seq_len * batch
    attention = sum(4 * seq_len * seq_len * h * dims.head_dim for h in cfg.heads) * batch
    return (matmul + attention) / 1e9


def _relative_lstsq(columns: np.ndarray, y: np.ndarray) -> np.ndarray:
    weights = 1 / y
    sol, *_ = np.linalg.lstsq(columns * weights[:, None], y * weights, rcond=None)
    return sol


def _residual_sd(points: Sequence[Point], coeffs: Coeffs, params: int) -> float:
    rel = [(coeffs.predict(p.gf, p.layers) - p.ms) / p.ms for p in points]
    dof = len(points) - params
    return (sum(r * r for r in rel) / dof) ** 0.5 if dof > 0 else 0.0


def fit(points: Sequence[Point], prior: Coeffs) -> tuple[Coeffs, str, float]:
    """(coefficients, kind, relative sd) from a profile's own points around a prior; kind "prior" without points."""
    if not points:
        return prior, "prior", 0.0
    ratios = [p.ms / prior.predict(p.gf, p.layers) for p in points]
    level = prior.scaled(statistics.median(ratios))
    if len(points) < 2 or len({round(p.gf, 6) for p in points}) < 2:
        return level, "level", REL_SD["level"]
    y = np.array([p.ms for p in points])
    # Two scales: compute (b) and the fixed part (a, c in the prior's proportion).
    cols = np.array([[prior.b * p.gf, prior.a + prior.c * p.layers] for p in points])
    alpha, beta = _relative_lstsq(cols, y)
    if alpha > 0 and beta >= 0:
        coeffs, kind, params = Coeffs(prior.a * beta, prior.b * alpha, prior.c * beta), "fit", 2
    else:
        coeffs, kind, params = level, "level", 1
    if len(points) >= FULL_FIT_POINTS and len({p.layers for p in points}) >= 2:
        sol = _relative_lstsq(np.array([[1.0, p.gf, p.layers] for p in points]), y)
        if sol[1] > 0 and sol[0] >= 0 and sol[2] >= 0:
            coeffs, kind, params = Coeffs(*map(float, sol)), "fit", 3
    sd = _residual_sd(points, coeffs, params)
    floor = REL_SD["fit"] if kind == "fit" and len(points) > params else REL_SD["level"]
    return coeffs, kind, max(floor, sd)


class ThreadScaling:
    """Calibration coefficients by thread count; a thread count it did not measure scales from the nearest one
    (compute ideally with threads, the fixed parts not at all: optimistic, hence the transfer's wider sd)."""

    def __init__(self, calibration: dict[int, tuple[float, float, float]]) -> None:
        self.table = {t: Coeffs(*c) for t, c in calibration.items()}

    def __bool__(self) -> bool:
        return bool(self.table)

    def at(self, threads: int) -> Coeffs:
        if threads in self.table:
            return self.table[threads]
        near = min(self.table, key=lambda t: (abs(t - threads), t))
        c = self.table[near]
        return Coeffs(c.a, c.b * near / threads, c.c)

    def carry(self, coeffs: Coeffs, from_threads: int, to_threads: int) -> Coeffs:
        """A fit measured at one thread count, carried to another by the calibration's per-coefficient ratios."""
        src, dst = self.at(from_threads), self.at(to_threads)
        compute = dst.b / src.b if src.b > 0 and dst.b > 0 else from_threads / to_threads
        # a and c are small and noisy in a short calibration: where one is zero, it follows the compute ratio
        fixed_a = dst.a / src.a if src.a > 0 and dst.a > 0 else compute
        fixed_c = dst.c / src.c if src.c > 0 and dst.c > 0 else compute
        return Coeffs(coeffs.a * fixed_a, coeffs.b * compute, coeffs.c * fixed_c)


Estimates = dict[tuple[str, str], LatencyEstimate]  # (config key, precision) -> estimate


class LatencyEstimator:
    """Estimates for every config of a model on a profile at a shape, cached until latency rows or the
    calibration change (``MetadataStore.latency_version``)."""

    CACHE_SIZE = 256

    def __init__(self, meta: Any, profiles: dict[str, DeviceProfile], min_clients: int = 3) -> None:
        self.meta, self.profiles, self.min_clients = meta, profiles, min_clients
        self._cache: LRU[tuple, Estimates] = LRU(self.CACHE_SIZE)
        self._version: tuple | None = None
        self._lock = threading.Lock()  # the version and the cache change together

    def estimates(self, name: str, dims: ModelDims, configs: Sequence[SubnetConfig], profile: str | None,
                  seq_len: int, batch: int, speed_score: float | None = None, threads: int | None = None) -> Estimates:
        """Without a profile, the device is treated as one with ``threads`` (default 1) at speed 1.0 that nobody
        measured: its estimates are carried over from the measured profiles (or the calibration). The same
        object is returned until the latency rows or the calibration change (callers may cache on it)."""
        key = (name, id(dims), profile, seq_len, batch, speed_score, threads)
        version = self.meta.latency_version()
        with self._lock:
            if version != self._version:
                self._cache.clear()
                self._version = version
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        result = self._compute(dims, configs, profile, seq_len, batch, speed_score, threads)
        with self._lock:
            if self._version == version:
                self._cache.put(key, result)
        return result

    # ----- internals ----------------------------------------------------------------------------------------
    def _rows(self, profile: str, configs: dict[str, SubnetConfig]) -> list[dict]:
        return [r for r in self.meta.latency_table(profile) if r["config_key"] in configs]

    def _usable(self, row: dict) -> bool:
        return row["source"] != "device" or row["clients"] >= self.min_clients

    def _points(self, dims: ModelDims, rows: list[dict], configs: dict[str, SubnetConfig], speed: float,
                bench_only: bool) -> list[Point]:
        """fp32 rows as points in the device's time: bench rows (this machine) divided by the profile's speed."""
        points = []
        for r in rows:
            if r["precision"] != "fp32" or not self._usable(r) or (bench_only and r["source"] == "device"):
                continue
            cfg = configs[r["config_key"]]
            ms = r["ms"] / speed if r["source"] != "device" else r["ms"]
            points.append(Point(gflops(dims, cfg, r["seq_len"], r["batch"]), len(cfg.layers), ms))
        return points

    def _prior(self, dims: ModelDims, configs: dict[str, SubnetConfig], scaling: ThreadScaling, target: str | None,
               threads: int, speed: float) -> tuple[Coeffs | None, str]:
        donors = []
        for name, p in self.profiles.items():
            if name == target:
                continue
            points = self._points(dims, self._rows(name, configs), configs, p.speed_score, bench_only=True)
            n_configs = len({(pt.gf, pt.layers) for pt in points})
            if n_configs >= MIN_DONOR_CONFIGS:
                donors.append((-n_configs, abs(p.threads - threads), name, p, points))
        if donors and scaling:
            *_, p, points = min(donors, key=lambda d: d[:3])
            own, _, _ = fit(points, scaling.at(p.threads).scaled(1 / p.speed_score))
            return scaling.carry(own, p.threads, threads).scaled(p.speed_score / speed), "transfer"
        if donors:  # no calibration: scale compute by threads, nothing else
            *_, p, points = min(donors, key=lambda d: d[:3])
            own, _, _ = fit(points, Coeffs(0.0, 1.0, 0.0))
            return replace(own, b=own.b * p.threads / threads).scaled(p.speed_score / speed), "transfer"
        if scaling:
            return scaling.at(threads).scaled(1 / speed), "calibration"
        return None, "none"

    def _compute(self, dims: ModelDims, configs: Sequence[SubnetConfig], profile: str | None, seq_len: int, batch: int,
                 speed_score: float | None, threads: int | None) -> Estimates:
        by_key = {c.key: c for c in configs}
        prof = self.profiles.get(profile) if profile else None
        threads = prof.threads if prof else max(1, threads or 1)
        speed = prof.speed_score if prof else 1.0
        scaling = ThreadScaling({t: c["coeffs"] for t, c in self.meta.calibration().items()})
        rows = self._rows(profile, by_key) if prof else []
        prior, prior_kind = self._prior(dims, by_key, scaling, profile, threads, speed)
        own = self._points(dims, rows, by_key, speed, bench_only=False)
        coeffs, kind, sd = (None, "none", 0.0)
        if prior is not None:
            coeffs, kind, sd = fit(own, prior)
            if kind == "prior":
                kind, sd = prior_kind, REL_SD[prior_kind]
        elif len(own) >= 2:  # no calibration and no donor: a line through the profile's own points
            coeffs, kind, sd = fit(own, Coeffs(0.0, 1.0, 0.0))
        measured: dict[tuple[str, str], LatencyEstimate] = {}
        for r in rows:
            if (r["seq_len"], r["batch"]) == (seq_len, batch) and self._usable(r):
                k = (r["config_key"], r["precision"])
                source = "device" if r["source"] == "device" else "measured"
                ms = r["ms"] if source == "device" else r["ms"] / speed
                if source == "device" or k not in measured:  # enough device reports override the bench table
                    measured[k] = LatencyEstimate(ms, max(REL_SD[source], r["spread"]), source)
        device_speed = speed_score if speed_score is not None else speed
        rescale = speed / device_speed  # a device faster or slower than its profile says
        out: Estimates = {}
        for cfg in configs:
            for precision in ("fp32", "int8"):
                est = measured.get((cfg.key, precision))
                if est is None and coeffs is not None:
                    ms = coeffs.predict(gflops(dims, cfg, seq_len, batch), len(cfg.layers))
                    est = LatencyEstimate(ms, sd, kind)
                    if precision == "int8":
                        est = LatencyEstimate(ms * INT8_FACTOR, sd + INT8_EXTRA_SD, kind)
                if est is not None:
                    out[(cfg.key, precision)] = replace(est, ms=est.ms * rescale) if rescale != 1 else est
        return out
