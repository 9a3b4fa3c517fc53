"""Events: every decision the client takes (resolve, download, swap, fallback, ...) as one typed record.

Subscribers are plain callables; a subscriber that raises is logged and does not break the client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# kinds: resolved, downloaded, loaded, swap, swap_failed, offline_fallback, server_back, no_fit, evicted,
# decision (the monitor's reasoning when it acts), benchmark, telemetry_failed
KINDS = ("resolved", "downloaded", "loaded", "swap", "swap_failed", "offline_fallback", "server_back", "no_fit",
         "evicted", "decision", "benchmark", "telemetry_failed")


@dataclass(frozen=True)
class Event:
    kind: str
    reason: str  # why, in words
    from_id: str | None = None  # artifact ids (64 hex)
    to_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def describe(self) -> str:
        ids = ""
        if self.from_id or self.to_id:
            ids = f" {(self.from_id or '-')[:12]} -> {(self.to_id or '-')[:12]}"
        took = f" ({', '.join(f'{k} {v:.2f}s' for k, v in self.timings.items())})" if self.timings else ""
        return f"{self.kind}{ids}: {self.reason}{took}"


Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out to subscribers, and the last ``keep`` events for inspection."""

    def __init__(self, keep: int = 1000) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self.history: deque[Event] = deque(maxlen=keep)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        with self._lock:
            self._subscribers.append(fn)
        return lambda: self._remove(fn)

    def _remove(self, fn: Subscriber) -> None:
        with self._lock:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

    def emit(self, event: Event) -> Event:
        with self._lock:
            self.history.append(event)
            subscribers = list(self._subscribers)
        log.info("%s", event.describe())
        for fn in subscribers:
            try:
                fn(event)
            except Exception:  # a subscriber's bug must not stop a swap half-way
                log.exception("event subscriber %r failed on %s", fn, event.kind)
        return event

    def of(self, kind: str) -> list[Event]:
        with self._lock:
            return [e for e in self.history if e.kind == kind]
