"""Latency of an ONNX artifact under onnxruntime, as a device measures it (no torch).

Inputs are synthesised from the graph itself: token ids, an all-ones attention mask and, for decoders, an
empty past, so any artifact the server builds can be timed at any (batch, sequence length).

Spinning: onnxruntime's worker threads busy-wait between operators by default. On a device whose other cores
are busy (the usual case for a phone or a shared board) the spinning threads compete with the work itself: on
our 2-core machine with the other core loaded, 2 threads ran up to 3x slower than in quiet spells, and turning
spinning off took one config from 22.8 ms to 17.1 ms median under the same load. With a core to itself,
spinning saves a wake-up per operator (a few percent at most for these graphs). ``ALLOW_SPINNING`` is off
because devices rarely have idle cores; every session opened here (timing and inference) uses it unless told
otherwise, and every measurement records the setting it ran with.

Contention: wall time on a shared machine measures the neighbours as much as the model. Every timed pass also
reads how long the threads that run it (the caller and the session's intra-op workers) sat runnable on a run
queue while another process had the CPU (Linux ``/proc/self/task/*/schedstat``), and ``uncontended_ms`` is the
median of the pass's time less that wait per thread: for one thread exactly the pass's own CPU time, for more
an approximation of what the pass takes with the cores to itself. That is the figure the server's bench and
calibration store and a device reports, so a table measured beside busy neighbours and a check on a quiet
device describe the same thing; ``median_ms`` stays the wall time seen. Where the kernel does not say (not
Linux), the wait is 0 and both figures are the wall time.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

ALLOW_SPINNING = False  # the default for every session this SDK opens (see the module docstring)


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p90_ms: float
    runs: int
    threads: int
    seq_len: int
    batch_size: int
    allow_spinning: bool = ALLOW_SPINNING
    load: float | None = None  # the machine's 1-minute load average while measuring (None where unknown)
    uncontended_ms: float | None = None  # median of each pass less its run-queue wait per thread (module docstring)
    wait_ms: float = 0.0  # median run-queue wait per pass and thread

    @property
    def table_ms(self) -> float:
        """The figure a latency table stores and a device reports: the uncontended time where known."""
        return self.uncontended_ms if self.uncontended_ms is not None else self.median_ms


def session_options(threads: int, allow_spinning: bool = ALLOW_SPINNING) -> ort.SessionOptions:
    """``threads`` intra-op threads, no inter-op parallelism (a device's budget), spinning as chosen."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    spin = "1" if allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return opts


def open_session(path: str | Path, threads: int, allow_spinning: bool = ALLOW_SPINNING) -> ort.InferenceSession:
    before = thread_ids()
    session = ort.InferenceSession(str(path), session_options(threads, allow_spinning), providers=["CPUExecutionProvider"])
    _WORKERS[session] = thread_ids() - before  # its intra-op pool (another thread started meanwhile: rare, harmless)
    return session


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Windows
        return None


def empty_past(session: ort.InferenceSession, batch_size: int = 1) -> dict[str, np.ndarray]:
    """A decoder's key/value cache before the first token: every ``past.*`` input with zero past positions (an
    encoder has none: {})."""
    # (batch, kv_heads, past, head_dim): heads and head_dim are fixed in the graph
    return {i.name: np.zeros((batch_size, i.shape[1], 0, i.shape[3]), np.float32)
            for i in session.get_inputs() if i.name.startswith("past.")}


def synthetic_inputs(session: ort.InferenceSession, seq_len: int, batch_size: int) -> dict[str, np.ndarray]:
    """Feeds for every graph input: low token ids, full attention, zero-length past."""
    rng = np.random.default_rng(0)
    feeds = empty_past(session, batch_size)
    for inp in session.get_inputs():
        name = inp.name
        if name.startswith("past."):
            continue
        if name == "input_ids":
            # Latency does not depend on which ids; low ones exist in every vocabulary.
            feeds[name] = rng.integers(1, 32, (batch_size, seq_len), dtype=np.int64)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(seq_len, dtype=np.int64), (batch_size, seq_len)).copy()
        elif name == "token_type_ids":
            feeds[name] = np.zeros((batch_size, seq_len), dtype=np.int64)
        elif name == "attention_mask":
            feeds[name] = np.ones((batch_size, seq_len), dtype=np.int64)
        else:
            raise ValueError(f"cannot synthesise input {name!r} of {inp.shape}; not an MLFS artifact?")
    return feeds


def measure_latency(path: str | Path, threads: int = 1, seq_len: int = 128, batch_size: int = 1,
                    runs: int = 20, warmup: int = 3, allow_spinning: bool = ALLOW_SPINNING) -> LatencyResult:
    """Median and p90 wall time of one forward pass, after ``warmup`` untimed passes."""
    return measure_interleaved([path], threads, seq_len, batch_size, rounds=1, runs=runs, warmup=warmup,
                               allow_spinning=allow_spinning)[0]


def measure_interleaved(paths: Sequence[str | Path], threads: int = 1, seq_len: int = 128, batch_size: int = 1,
                        rounds: int = 3, runs: int = 20, warmup: int = 3,
                        allow_spinning: bool = ALLOW_SPINNING) -> list[LatencyResult]:
    """Time several artifacts fairly on a machine whose load changes: every session is opened and warmed
    (``warmup`` untimed passes, discarded), then ``rounds`` rounds each time every artifact for its share of
    ``runs`` passes, in a rotated order, so a busy spell hits all of them rather than one. Median and p90 over
    all timed passes per artifact."""
    if runs < 1 or rounds < 1 or threads < 1 or seq_len < 1 or batch_size < 1 or warmup < 0:
        raise ValueError("runs, rounds, threads, seq_len and batch_size must be >= 1 (warmup >= 0)")
    sessions = [open_session(p, threads, allow_spinning) for p in paths]
    feeds = [synthetic_inputs(s, seq_len, batch_size) for s in sessions]
    for session, feed in zip(sessions, feeds):
        for _ in range(warmup):
            session.run(None, feed)
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    passes: list[list[Pass]] = [[] for _ in sessions]
    loads = [load_average()]
    for r, n in enumerate(per_round):
        order = list(range(len(sessions)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            passes[i] += time_passes(sessions[i], feeds[i], n)
    loads.append(load_average())
    load = None if None in loads else sum(loads) / len(loads)
    return [summarise(p, threads, seq_len, batch_size, allow_spinning, load) for p in passes]


@dataclass(frozen=True)
class Pass:
    wall_ms: float
    wait_ms: float  # run-queue wait of the threads that ran the pass (0 where unknown)
    span_ms: float | None = None  # wall time of the span the wait was read over, less the reads' own cost

    @property
    def uncontended_ms(self) -> float:
        # never more than the pass itself: the span only widens the window the wait is read over
        return self.wall_ms if self.span_ms is None else max(min(self.span_ms - self.wait_ms, self.wall_ms), 0.0)


# Worker threads each session started (its intra-op pool): the threads whose waits delay its passes.
_WORKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def thread_ids() -> set[str]:
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:  # not Linux
        return set()


def thread_schedstat(tids: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
    """{thread id: (ns on CPU, ns runnable but waiting)} for ``tids`` (default: all this process's threads);
    {} where the kernel does not say."""
    out = {}
    for tid in thread_ids() if tids is None else tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run, wait, _ = f.read().split()
            out[tid] = (int(run), int(wait))
        except (OSError, ValueError):
            continue  # a thread that exited, or a kernel without schedstat
    return out


def _read_cost_ms(tids: list[str]) -> float:
    """What one pair of schedstat reads adds to a span (the least of a few, so a preempted read does not count)."""
    costs = []
    for _ in range(5):
        start = time.perf_counter()
        thread_schedstat(tids)
        thread_schedstat(tids)
        costs.append((time.perf_counter() - start) * 1000)
    return min(costs)


def time_passes(session: ort.InferenceSession, feeds: dict[str, np.ndarray], runs: int) -> list[Pass]:
    """The one timed loop (server bench, calibration, a device's benchmark): ``runs`` passes, each with its
    wall time and the run-queue wait of the threads that run it (this thread and the session's workers), per
    thread, read over a span just around the pass; the reads' own cost is taken off that span."""
    tids = [str(threading.get_native_id()), *sorted(_WORKERS.get(session, ()))]
    watch = bool(thread_schedstat(tids[:1]))
    cost = _read_cost_ms(tids) if watch else 0.0
    out = []
    for _ in range(runs):
        if not watch:
            start = time.perf_counter()
            session.run(None, feeds)
            out.append(Pass((time.perf_counter() - start) * 1000, 0.0))
            continue
        outer = time.perf_counter()
        before = thread_schedstat(tids)
        start = time.perf_counter()
        session.run(None, feeds)
        end = time.perf_counter()
        after = thread_schedstat(tids)
        span = (time.perf_counter() - outer) * 1000 - cost
        waited = sum(after[t][1] - before[t][1] for t in after if t in before) / 1e6 / len(tids)
        out.append(Pass((end - start) * 1000, waited, span))
    return out


def summarise(passes: Sequence[Pass], threads: int, seq_len: int, batch_size: int,
              allow_spinning: bool = ALLOW_SPINNING, load: float | None = None) -> LatencyResult:
    walls = sorted(p.wall_ms for p in passes)
    p90 = walls[min(len(walls) - 1, round(0.9 * (len(walls) - 1)))]
    uncontended = statistics.median(p.uncontended_ms for p in passes)
    return LatencyResult(statistics.median(walls), p90, len(walls), threads, seq_len, batch_size, allow_spinning, load,
                         uncontended, statistics.median(p.wait_ms for p in passes))
