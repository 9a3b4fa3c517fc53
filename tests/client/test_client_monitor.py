"""The monitor's decisions (hysteresis, cool-down, settled budgets, latency) and the client's memory budget,
without a server: a stand-in client records what the monitor asks for."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from client_sdk import Budget, Client, Event, EventBus, Monitor, SimulatedProbe, SwapPolicy


@dataclass
class Row:
    artifact_id: str
    memory_mb: float


@dataclass
class StandIn:
    """What the monitor uses of a Client: the server would answer ``answer(budget)``."""

    current: Row
    budget_mb: float = 100.0
    latency_ms: float | None = None
    budget: Budget = field(default_factory=Budget)
    offline: bool = False
    last_swap_at: float = field(default_factory=time.monotonic)
    events: EventBus = field(default_factory=EventBus)
    asked: list[float] = field(default_factory=list)
    probe: SimulatedProbe = field(default_factory=lambda: SimulatedProbe(0))
    swap_lock: threading.RLock = field(default_factory=threading.RLock)

    def memory_budget_mb(self, report=None) -> float:
        return self.budget_mb

    def recent_latency_ms(self):
        return self.latency_ms

    def choose(self, budget_mb, reason=""):
        self.asked.append(budget_mb)
        return Row("big", 80.0) if budget_mb >= 80 else Row("mid", 50.0) if budget_mb >= 50 else Row("small", 30.0)

    def swap_to(self, row, reason, started=None):
        before, self.current, self.last_swap_at = self.current, row, time.monotonic()
        return self.events.emit(Event("swap", reason, before.artifact_id, row.artifact_id))


def test_moves_down_at_once_but_up_only_after_the_cooldown_and_hysteresis():
    client = StandIn(Row("mid", 50.0), budget_mb=70.0)
    monitor = Monitor(client, SwapPolicy(cooldown_s=3600, up_polls=2, up_margin=0.2))
    assert monitor.step() is None and client.asked == []  # 70 >= 1.2 x 50, but within the cool-down
    client.last_swap_at -= 3601
    assert monitor.step() is None and client.asked == []  # first poll with room: hysteresis wants two
    assert monitor.step() is None and client.asked == [70.0]  # asked; the server keeps "mid" at 70 MB
    assert monitor.step() is None and monitor.step() is None and client.asked == [70.0]  # settled: not re-asked
    client.budget_mb = 90.0  # 90 >= 1.2 x 70: worth asking again
    monitor.step()
    event = monitor.step()
    assert event is not None and event.to_id == "big" and client.asked == [70.0, 90.0]
    client.budget_mb = 40.0  # memory drops: down at once, cool-down or not
    event = monitor.step()
    assert event is not None and event.to_id == "small" and client.asked[-1] == 40.0
    decisions = client.events.of("decision")
    assert [d.data["direction"] for d in decisions] == ["up", "up", "down"] and "40.0 MB" in decisions[-1].reason


def test_a_step_on_a_stale_budget_never_overrides_a_newer_decision():
    """The monitor's thread read a roomy budget and is still asking the server when memory drops and the test
    steps too: steps run one at a time, so the later step (on the lower budget) has the last word."""
    client = StandIn(Row("mid", 50.0), budget_mb=100.0, last_swap_at=time.monotonic() - 3600)
    asking, answered = threading.Event(), threading.Event()
    ask = client.choose

    def slow_choose(budget_mb, reason=""):
        if threading.current_thread().name == "stale":
            asking.set()
            answered.wait(1.0)  # without one-at-a-time steps, the newer step finishes meanwhile
        return ask(budget_mb, reason)

    client.choose = slow_choose
    monitor = Monitor(client, SwapPolicy(cooldown_s=0, up_polls=1))
    stale = threading.Thread(target=monitor.step, name="stale")
    stale.start()
    assert asking.wait(10)
    client.budget_mb = 40.0  # memory drops while the stale step is still deciding to move up
    event = monitor.step()
    answered.set()
    stale.join(10)
    assert event is not None and event.to_id == "small" and client.current.artifact_id == "small"
    assert [e.to_id for e in client.events.of("swap")] == ["big", "small"]


def test_slow_calls_ask_for_a_model_smaller_than_the_current_one():
    client = StandIn(Row("big", 80.0), budget_mb=200.0, latency_ms=30.0, budget=Budget(max_latency_ms=20.0))
    event = Monitor(client, SwapPolicy(cooldown_s=3600)).step()
    assert event is not None and event.to_id == "mid" and client.asked == [80.0 * 0.999]
    assert "30.0 ms > 20.0 ms" in client.events.of("decision")[0].reason


def test_the_memory_budget_counts_headroom_the_loaded_model_battery_and_the_cap(tmp_path):
    probe = SimulatedProbe(200.0)
    client = Client("http://127.0.0.1:9", "m", probe=probe, cache_dir=tmp_path, headroom_mb=20.0)
    assert client.memory_budget_mb() == 180.0
    probe.set(on_battery=True)
    assert client.memory_budget_mb() == 90.0  # half on battery (battery_scale)
    client.budget = Budget(max_memory_mb=50.0)
    assert client.memory_budget_mb() == 50.0
    client.close()
