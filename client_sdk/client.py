"""``Client``: asks the server for the model that fits this device, keeps it verified on disk, runs it and
swaps it at runtime without failing a call.

Swapping. Every call leases the current slot (a loaded model and a count of calls running on it). A swap
loads and smoke-tests the new model while calls go on against the old one, then replaces the slot in one
assignment; the old slot is freed when its last call returns. No call waits on a download: downloads happen
before the swap, on the caller of ``switch`` or the monitor's thread.

When the device cannot hold both models at once (moving down because memory ran short, ``swap_strategy``
"auto" decides from the probe), the swap is sequential: the download and verification still happen
beforehand, then new calls are held at a gate (they wait, they do not fail), the calls in flight finish on
the old model, the old session is released, the new one is loaded and smoke-tested, and the gate opens. If the
new model fails to load, the old one is loaded back from the cache (it is held, so never evicted meanwhile).
Calls wait for one model load, never for a download.
"""

from __future__ import annotations

import gc
import json
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from .budget import Budget
from .cache import CachedArtifact, DeviceCache, verify_files
from .errors import CacheError, ClientError, IntegrityError, ModelError, NoFitError, UnreachableError
from .events import Event, EventBus
from .latency import summarise, synthetic_inputs, time_passes
from .model import Generation, ModelHandle, Prediction
from .priority import at_lower_priority
from .probe import DeviceReport, Probe, ProbeFn
from .server_api import Backoff, Progress, Resolution, ServerAPI

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    row: CachedArtifact
    handle: ModelHandle | None
    refs: int = 0
    retired: bool = False
    awaited: bool = False  # a swap thread waits to free this slot's session once its calls drain
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=50))


@dataclass(frozen=True)
class BenchmarkResult:
    artifact_id: str
    config: dict[str, Any]
    p50_ms: float
    p95_ms: float
    runs: int
    seq_len: int
    batch_size: int
    threads: int
    profile: str | None
    reported: bool
    uncontended_ms: float | None = None  # what was reported: the median without run-queue waits (client_sdk.latency)


class Client:
    """A device's view of one served model.

    ``server``: the delivery server's URL; ``model``: the served model's name; ``probe``: a callable returning a
    ``DeviceReport`` (default: the real device); ``budget``: caps and shape for resolve; ``cache_dir`` /
    ``disk_budget_mb``: the device cache; ``transport``: an httpx transport (tests); ``device_token``: sent as
    ``Authorization: Bearer`` (telemetry may require it); ``headroom_mb``: memory left free for everything
    else; ``count_loaded_model``: the probe's free memory excludes the loaded model, so the model's own
    estimate is added back (False for probes that report memory for the model itself, like simulations);
    ``battery_scale``: memory budget factor on battery (smaller models draw less power); ``load_nice``: how much
    lower the OS priority of a swap's work is while calls go on, its download and (overlapping) model load
    (Linux; 0 keeps it equal to the calls'; a sequential swap's load, which calls wait for, keeps theirs).
    """

    DRAIN_WAIT_S = 5.0  # how long a swap waits for the old model's calls before leaving its release to them

    def __init__(self, server: str, model: str, *, probe: ProbeFn | None = None, budget: Budget = Budget(),
                 cache_dir: str | Path | None = None, disk_budget_mb: float = 2048,
                 transport: httpx.BaseTransport | None = None, device_token: str | None = None,
                 threads: int | None = None, headroom_mb: float = 0.0, count_loaded_model: bool = True,
                 battery_scale: float = 0.5, swap_strategy: Literal["auto", "overlap", "sequential"] = "auto",
                 resolve_wait_s: float = 300.0, backoff: Backoff = Backoff(), progress: Progress | None = None,
                 events: EventBus | None = None, load_nice: int = 10) -> None:
        self.model_name, self.budget = model, budget
        self.api = ServerAPI(server, transport=transport, device_token=device_token, backoff=backoff)
        self.cache = DeviceCache(Path(cache_dir) if cache_dir is not None else None, disk_budget_mb)
        self.probe: ProbeFn = probe or Probe()
        self.events = events or EventBus()
        self.threads, self.headroom_mb, self.count_loaded_model = threads, headroom_mb, count_loaded_model
        self.battery_scale, self.swap_strategy = battery_scale, swap_strategy
        self.resolve_wait_s, self.progress, self.load_nice = resolve_wait_s, progress, load_nice
        self.offline = False
        self._slot: _Slot | None = None
        self._cond = threading.Condition()
        self._gate_open = True
        # held across one decision (read the budget, choose, swap): the monitor's thread, a manual switch or a
        # manual monitor step never act on a budget another decision has made stale
        self.swap_lock = threading.RLock()
        self.last_swap_at = 0.0
        self.monitor = None

    # ----- state --------------------------------------------------------------------------------------------
    @property
    def current(self) -> CachedArtifact | None:
        """The artifact answering calls now (None before the first load)."""
        slot = self._slot
        return None if slot is None else slot.row

    def memory_budget_mb(self, report: DeviceReport | None = None) -> float:
        """Memory the model may take: free memory less the headroom, plus the loaded model's own share (it is
        given back by a swap), scaled down on battery, capped by the budget."""
        report = report or self.probe()
        mem = report.memory_available_mb - self.headroom_mb
        if self.count_loaded_model and self._slot is not None:
            mem += self._slot.row.memory_mb
        if report.on_battery:
            mem *= self.battery_scale
        if self.budget.max_memory_mb is not None:
            mem = min(mem, self.budget.max_memory_mb)
        return mem

    def recent_latency_ms(self) -> float | None:
        """Median of the current model's recent call times (None before enough calls)."""
        slot = self._slot
        if slot is None or len(slot.latencies_ms) < 5:
            return None
        return statistics.median(slot.latencies_ms)

    # ----- finding a model ----------------------------------------------------------------------------------
    def resolve(self, memory_mb: float, budget: Budget | None = None, report: DeviceReport | None = None) -> Resolution:
        budget = budget or self.budget
        report = report or self.probe()
        device = {**report.device_info(), "memory_available_mb": round(max(memory_mb, 0.01), 3)}
        start = time.perf_counter()
        res = self.api.resolve(self.model_name, device, budget.request(memory_mb), self.resolve_wait_s)
        self.events.emit(Event("resolved", f"{_describe(res.config)} {res.precision} for {memory_mb:.1f} MB",
                               to_id=res.artifact_id, timings={"resolve_s": time.perf_counter() - start},
                               data={"memory_mb": res.memory_mb, "latency_ms": res.latency_ms}))
        return res

    def fetch(self, res: Resolution) -> CachedArtifact:
        """The artifact in the device cache, downloaded (resumably) and verified if it is not there yet. While a
        model serves calls, the download (receive, hash, write) runs ``load_nice`` steps lower than they do."""
        row = self.cache.get(res.artifact_id)
        if row is not None:
            return row
        if self._slot is not None:
            return at_lower_priority(lambda: self._download(res), self.load_nice)
        return self._download(res)

    def _download(self, res: Resolution) -> CachedArtifact:
        start = time.perf_counter()
        self.cache.hold(res.artifact_id)  # not evicted while staging, nor by another install meanwhile
        try:
            staged = self.cache.staging(res.artifact_id)
            raw = self.api.manifest(res.artifact_id)
            manifest = json.loads(raw)
            files = manifest.get("files") or {}
            if files.get("model.onnx", {}).get("sha256") != res.sha256:
                raise IntegrityError(f"manifest of {res.artifact_id[:12]} names another model.onnx than resolve did")
            (staged / "manifest.json").write_bytes(raw)
            for name, info in files.items():
                target = staged / name
                if target.is_file():
                    try:
                        verify_files(staged, {"files": {name: info}})
                        continue  # finished by an earlier, interrupted attempt
                    except IntegrityError:
                        target.unlink()
                self.api.fetch(res.artifact_id, name, target, info["size"], info["sha256"], self.progress)
            row = CachedArtifact(res.artifact_id, self.model_name, self.api.base_url, res.config, res.precision,
                                 res.memory_mb, res.latency_ms, res.quality, 0)
            evicted = self.cache.install(row, verified=True)  # every file was hashed as it arrived
        finally:
            self.cache.release(res.artifact_id)
        for artifact_id in evicted:
            self.events.emit(Event("evicted", "over the device cache's disk budget (least recently used)",
                                   from_id=artifact_id))
        self.events.emit(Event("downloaded", f"{_describe(res.config)} {res.precision}, {row.size_bytes} bytes verified",
                               to_id=res.artifact_id, timings={"download_s": time.perf_counter() - start}))
        return row

    def best_cached(self, memory_mb: float) -> CachedArtifact | None:
        """The best cached artifact of this model that fits ``memory_mb`` (``cache.rank``: quality, size, fp32,
        then the artifact id)."""
        return self.cache.best_fit(self.model_name, self.api.base_url, memory_mb, self.budget.precision)

    def choose(self, memory_mb: float, budget: Budget | None = None, reason: str = "") -> CachedArtifact:
        """Resolve and fetch; with the server unreachable, the best cached fit (an ``offline_fallback`` event)."""
        try:
            res = self.resolve(memory_mb, budget)
            row = self.fetch(res)
        except UnreachableError as err:
            row = self.best_cached(memory_mb)
            self.offline = True
            if row is None:
                raise UnreachableError(f"{err}; and no cached model of {self.model_name!r} fits {memory_mb:.1f} MB") from None
            self.events.emit(Event("offline_fallback", f"server unreachable; using the best cached fit for "
                                   f"{memory_mb:.1f} MB: {_describe(row.config)} {row.precision}",
                                   from_id=self.current.artifact_id if self.current else None, to_id=row.artifact_id,
                                   data={"error": str(err), "reason": reason}))
            return row
        if self.offline:
            self.offline = False
            self.events.emit(Event("server_back", "the server answers again", to_id=row.artifact_id))
        return row

    # ----- loading and swapping -----------------------------------------------------------------------------
    def _threads(self) -> int:
        return self.threads or max(1, self.probe().cpu_count)

    def _open(self, row: CachedArtifact, manifest: dict[str, Any] | None = None, background: bool = False) -> ModelHandle:
        """Verify, load and smoke-test ``row``. ``background``: calls run meanwhile (an overlap swap), so the load
        runs at a lower OS priority (``load_nice``): building a session takes a core for 0.2-1 s, and on a
        device without a spare one the calls, not the load, should get it."""
        if manifest is None:
            manifest = self.cache.verified_manifest(row.artifact_id)  # a tampered or truncated file stops here
        threads = self._threads()

        def load() -> ModelHandle:
            handle = ModelHandle(self.cache.folder(row.artifact_id), manifest, row.artifact_id, threads)
            handle.smoke()
            return handle

        return at_lower_priority(load, self.load_nice) if background else load()

    def load(self) -> CachedArtifact:
        """Make sure a model is loaded (the first call does this on its own); returns it."""
        with self.swap_lock:
            for attempt in (1, 2):
                if self._slot is not None:
                    break
                try:
                    self.swap_to(self.choose(self.memory_budget_mb(), reason="first load"), "first load")
                except IntegrityError:
                    if attempt == 2:
                        raise  # the cache dropped the bad copy: the second attempt downloads it afresh
        assert self._slot is not None
        return self._slot.row

    def switch(self, budget: Budget | float | None = None, reason: str = "manual switch") -> Event | None:
        """Resolve for ``budget`` (a ``Budget``, or a memory cap in MB) and swap to its model; it becomes the
        client's budget. Returns the swap event, or None when the current model already is the answer."""
        if isinstance(budget, (int, float)):
            budget = Budget(max_memory_mb=float(budget), max_latency_ms=self.budget.max_latency_ms,
                            seq_len=self.budget.seq_len, batch_size=self.budget.batch_size, precision=self.budget.precision)
        with self.swap_lock:
            if budget is not None:
                self.budget = budget
            started = time.perf_counter()
            row = self.choose(self.memory_budget_mb(), reason=reason)
            return self.swap_to(row, reason, started)

    def swap_to(self, row: CachedArtifact, reason: str, started: float | None = None) -> Event | None:
        """Load ``row`` and make it answer calls; in-flight calls finish on the old model."""
        started = started if started is not None else time.perf_counter()
        with self.swap_lock:
            old = self._slot
            if old is not None and old.row.artifact_id == row.artifact_id:
                self.cache.touch(row.artifact_id)
                return None
            self.cache.hold(row.artifact_id)
            report = self.probe()
            room = report.memory_available_mb - self.headroom_mb - (0.0 if self.count_loaded_model or old is None else old.row.memory_mb)
            overlap = old is None or self.swap_strategy == "overlap" or (self.swap_strategy == "auto" and row.memory_mb <= room)
            load_start = time.perf_counter()
            try:
                if overlap:
                    handle = self._open(row, background=old is not None)
                    with self._cond:
                        self._slot = _Slot(row, handle)
                        if old is not None:
                            old.retired = True
                    if old is not None:
                        self._release_drained(old)
                else:
                    handle = self._sequential(old, row)
            except (ClientError, OSError, RuntimeError) as err:
                self.cache.release(row.artifact_id)
                self.events.emit(Event("swap_failed", f"{reason}: {err}", old.row.artifact_id if old else None,
                                       row.artifact_id))
                if old is None:
                    raise
                return None
            self.cache.touch(row.artifact_id)
            now = time.perf_counter()
            self.last_swap_at = time.monotonic()
            return self.events.emit(Event(
                "swap" if old is not None else "loaded",
                f"{reason}: {_describe(row.config)} {row.precision} ({row.memory_mb:.1f} MB)",
                old.row.artifact_id if old else None, row.artifact_id,
                timings={"decision_to_swap_s": now - started, "load_and_smoke_s": now - load_start},
                data={"strategy": "overlap" if overlap else "sequential", "config": row.config,
                      "memory_mb": row.memory_mb, "from_config": old.row.config if old else None}))

    def _sequential(self, old: _Slot, row: CachedArtifact) -> ModelHandle:
        """Both models do not fit: hold new calls, drain the old model, release it, load the new one."""
        manifest = self.cache.verified_manifest(row.artifact_id)  # hashed before calls are held: they wait only for the load
        with self._cond:
            self._gate_open = False
            while old.refs:
                self._cond.wait()
            old.retired = True
            dropped = self._detach(old, release=False)  # keep it held: it is the fallback if the new one fails
        del dropped  # the old session goes here, outside the lock
        gc.collect()
        new = None
        try:
            handle = self._open(row, manifest)
            new = _Slot(row, handle)
        except Exception:
            new = _Slot(old.row, self._open(old.row))  # back to the old model; it is still on disk
            raise
        finally:
            with self._cond:
                if new is not None:
                    self._slot = new
                self._gate_open = True
                self._cond.notify_all()
        self.cache.release(old.row.artifact_id)
        return handle

    def _detach(self, slot: _Slot, release: bool = True) -> ModelHandle | None:
        """Take a drained slot's handle (under ``_cond``); the caller drops it after leaving the lock: tearing an
        onnxruntime session down takes 10-30 ms with the GIL held, no call should wait for it under the lock."""
        handle, slot.handle = slot.handle, None
        if release and handle is not None:
            self.cache.release(slot.row.artifact_id)
        return handle

    def _release_drained(self, old: _Slot) -> None:
        """After an overlap swap, on the swapping thread: wait (a while) for the calls still on the old model to
        finish and free its session here, not in the last call's return path. A call running past
        ``DRAIN_WAIT_S`` (a long generate) frees it itself when it returns."""
        deadline = time.monotonic() + self.DRAIN_WAIT_S
        with self._cond:
            old.awaited = True
            while old.refs and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            old.awaited = False
            handle = self._detach(old) if old.refs == 0 else None
        del handle

    @contextmanager
    def _lease(self) -> Iterator[_Slot]:
        if self._slot is None:
            self.load()
        with self._cond:
            while not self._gate_open:
                self._cond.wait()
            slot = self._slot
            if slot is None or slot.handle is None:
                raise ClientError("no model is loaded (the client was closed, or a swap and its fallback both failed)")
            slot.refs += 1
        start = time.perf_counter()
        try:
            yield slot
        finally:
            elapsed = (time.perf_counter() - start) * 1000
            with self._cond:
                slot.latencies_ms.append(elapsed)
                slot.refs -= 1
                handle = self._detach(slot) if slot.refs == 0 and slot.retired and not slot.awaited else None
                if slot.refs == 0:
                    self._cond.notify_all()
            del handle  # only when no swap thread waits to free it (a closed client, or a call past DRAIN_WAIT_S)

    # ----- running ------------------------------------------------------------------------------------------
    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Label and probabilities per text, from whichever model is current when the call starts."""
        with self._lease() as slot:
            return slot.handle.predict(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lease() as slot:
            return slot.handle.embed(texts)

    def generate(self, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int | None = None,
                 stop: Sequence[str] = (), seed: int | None = None) -> Generation:
        with self._lease() as slot:
            return slot.handle.generate(prompt, max_new_tokens, temperature, top_k, stop, seed)

    # ----- measuring ----------------------------------------------------------------------------------------
    def benchmark(self, runs: int = 20, warmup: int = 3, seq_len: int | None = None, batch_size: int = 1,
                  profile: str | None = None, report: bool = True) -> BenchmarkResult:
        """p50/p95 of the current model on this device at (batch, seq_len), after ``warmup`` runs; with a
        ``profile`` (default: the probe's) and ``report``, the median without run-queue waits (``uncontended_ms``,
        what the server's bench stores too) goes to ``POST /v1/telemetry/latency``."""
        if runs < 1 or warmup < 0:
            raise ClientError("runs must be >= 1 and warmup >= 0")
        seq_len = seq_len or self.budget.seq_len
        profile = profile or self.probe().profile
        with self._lease() as slot:
            if seq_len > slot.handle.max_positions:
                raise ModelError(f"seq_len {seq_len} exceeds the model's {slot.handle.max_positions} positions; "
                                 "pass a smaller one")
            session = slot.handle.session
            feeds = synthetic_inputs(session, seq_len, batch_size)
            for _ in range(warmup):
                session.run(None, feeds)
            passes = time_passes(session, feeds, runs)  # the same timed loop as the server's bench
            row, threads = slot.row, slot.handle.threads
        times = sorted(p.wall_ms for p in passes)
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        measured = summarise(passes, threads, seq_len, batch_size)
        reported = False
        if report and profile:
            try:
                self.api.report_latency(row.artifact_id, profile, measured.table_ms, seq_len, batch_size)
                reported = True
            except (ClientError, httpx.HTTPError) as err:
                self.events.emit(Event("telemetry_failed", str(err), to_id=row.artifact_id))
                raise
        result = BenchmarkResult(row.artifact_id, row.config, statistics.median(times), p95, runs, seq_len, batch_size,
                                 threads, profile, reported, measured.uncontended_ms)
        self.events.emit(Event("benchmark", f"p50 {result.p50_ms:.2f} ms, p95 {result.p95_ms:.2f} ms at seq_len {seq_len}"
                               + (f", reported for {profile}" if reported else ""), to_id=row.artifact_id,
                               data={"p50_ms": result.p50_ms, "p95_ms": result.p95_ms}))
        return result

    # ----- monitor ------------------------------------------------------------------------------------------
    def start_monitor(self, policy=None):
        """Watch the probe in a background thread and swap down or up as resources change (see ``Monitor``)."""
        from .monitor import Monitor, SwapPolicy

        self.stop_monitor()
        self.monitor = Monitor(self, policy or SwapPolicy())
        self.monitor.start()
        return self.monitor

    def stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None

    def close(self) -> None:
        self.stop_monitor()
        with self._cond:
            slot, self._slot = self._slot, None
            handle = None
            if slot is not None:
                slot.retired = True
                if slot.refs == 0:
                    handle = self._detach(slot)
        del handle
        self.api.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(config: dict[str, Any]) -> str:
    layers = config.get("layers")
    if not layers:
        return "config"
    heads, ffn = config.get("heads") or [], config.get("ffn") or []
    return f"L{len(layers)} H{max(heads, default=0)} F{max(ffn, default=0)}"


__all__ = ["BenchmarkResult", "CacheError", "Client", "NoFitError"]
