"""The hot-swap monitor: polls the probe and moves the client down or up the palette.

Down, at once (after ``down_polls`` polls): the current model's memory estimate exceeds the memory budget
(memory taken by others, a lowered container limit, battery), or its recent calls are slower than the
latency budget by more than ``latency_margin`` (then a model smaller than the current one is asked for).
Up, with hysteresis: only when the budget exceeds the current model's estimate by ``up_margin`` for
``up_polls`` polls in a row, not within ``cooldown_s`` of the last swap, and not again for the same budget
once the server said the current model already is the best (a bigger budget by ``up_margin`` re-asks).
Offline, the server is retried with exponential backoff and the cache serves meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from .budget import Budget
from .errors import ClientError, UnreachableError
from .events import Event, EventBus
from .probe import DeviceReport, ProbeFn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwapPolicy:
    interval_s: float = 5.0
    up_margin: float = 0.2
    cooldown_s: float = 30.0
    down_polls: int = 1
    up_polls: int = 2
    latency_margin: float = 0.2
    offline_retry_s: float = 2.0
    offline_retry_max_s: float = 60.0


class Swappable(Protocol):
    """What the monitor uses of a ``Client`` (tests pass a stand-in)."""

    probe: ProbeFn
    budget: Budget
    events: EventBus
    offline: bool
    last_swap_at: float
    swap_lock: Any  # held across a whole step: two decisions never interleave

    @property
    def current(self) -> Any: ...
    def load(self) -> Any: ...
    def memory_budget_mb(self, report: DeviceReport | None = None) -> float: ...
    def recent_latency_ms(self) -> float | None: ...
    def choose(self, memory_mb: float, budget: Budget | None = None, reason: str = "") -> Any: ...
    def swap_to(self, row: Any, reason: str, started: float | None = None) -> Event | None: ...


class Monitor:
    def __init__(self, client: Swappable, policy: SwapPolicy = SwapPolicy()) -> None:
        self.client, self.policy = client, policy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down = self._up = 0
        self._settled_budget: float | None = None  # the budget at which the server last kept the current model
        self._retry_at, self._retry_wait = 0.0, policy.offline_retry_s
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlfs-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except ClientError as err:  # logged and retried next poll: the current model keeps serving
                self.errors.append(str(err))
                log.warning("monitor: %s", err)
            except Exception:
                log.exception("monitor step failed")
            self._stop.wait(self.policy.interval_s)

    def step(self) -> Event | None:
        """One poll: decide, and act if needed. Returns the swap event when a swap happened. Steps (this thread's,
        a caller's) and manual switches run one at a time, each on the probe it read itself: a decision made on
        a budget that changed meanwhile never overrides a newer one."""
        with self.client.swap_lock:
            return self._step()

    def _step(self) -> Event | None:
        client, policy = self.client, self.policy
        if client.current is None:
            client.load()
            return None
        report = client.probe()
        budget = client.memory_budget_mb(report)
        current = client.current
        now = time.monotonic()
        if client.offline and now >= self._retry_at:
            return self._retry_server(budget)

        latency = client.recent_latency_ms()
        limit = client.budget.max_latency_ms
        slow = limit is not None and latency is not None and latency > limit * (1 + policy.latency_margin)
        over = current.memory_mb > budget
        self._down = self._down + 1 if over or slow else 0
        room = budget >= current.memory_mb * (1 + policy.up_margin)
        settled = self._settled_budget is not None and budget < self._settled_budget * (1 + policy.up_margin)
        cooled = now - client.last_swap_at >= policy.cooldown_s
        self._up = self._up + 1 if room and not settled and cooled and not over else 0

        if self._down >= policy.down_polls:
            self._down = 0
            if over:
                why = (f"memory budget {budget:.1f} MB < the model's {current.memory_mb:.1f} MB"
                       + (" (on battery)" if report.on_battery else ""))
                return self._move("down", why, budget)
            why = f"recent calls take {latency:.1f} ms > {limit:.1f} ms"
            return self._move("down", why, min(budget, current.memory_mb * 0.999))
        if self._up >= policy.up_polls:
            self._up = 0
            return self._move("up", f"memory budget {budget:.1f} MB leaves room above the model's {current.memory_mb:.1f} MB",
                              budget)
        return None

    def _move(self, direction: str, why: str, budget: float) -> Event | None:
        client = self.client
        started = time.perf_counter()
        before = client.current
        client.events.emit(Event("decision", f"move {direction}: {why}", before.artifact_id if before else None,
                                 data={"direction": direction, "budget_mb": budget}))
        try:
            row = client.choose(budget, reason=why)
        except UnreachableError as err:
            self._offline(str(err))
            return None
        except ClientError as err:
            client.events.emit(Event("no_fit", f"move {direction}: {err}", before.artifact_id if before else None))
            self._settled_budget = budget
            return None
        if client.offline:
            self._offline("server unreachable")
        if before is not None and row.artifact_id == before.artifact_id:
            self._settled_budget = budget  # the server keeps this model at this budget: do not re-ask until it grows
            return None
        event = client.swap_to(row, f"move {direction}: {why}", started)
        if event is not None:
            self._settled_budget = None
        return event

    def _offline(self, why: str) -> None:
        self._retry_at = time.monotonic() + self._retry_wait
        self._retry_wait = min(self._retry_wait * 2, self.policy.offline_retry_max_s)
        log.info("monitor: %s; retrying the server in %.1f s", why, self._retry_wait)

    def _retry_server(self, budget: float) -> Event | None:
        """While offline: ask the server again; when it answers, move to what it resolves."""
        client = self.client
        try:
            row = client.choose(budget, reason="retrying the server")
        except ClientError as err:
            self._offline(str(err))
            return None
        if client.offline:  # choose fell back to the cache again
            self._offline("server unreachable")
            if client.current is not None and row.artifact_id != client.current.artifact_id and row.memory_mb <= budget:
                return client.swap_to(row, "offline: best cached fit")
            return None
        self._retry_wait = self.policy.offline_retry_s
        return client.swap_to(row, "server back: its choice for the budget")
