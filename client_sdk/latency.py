"""Latency of an ONNX artifact under onnxruntime, as a device measures it (no torch).

Inputs are synthesised from the graph itself: token ids, an all-ones attention mask and, for decoders, an
empty past, so any artifact the server builds can be timed at any (batch, sequence length).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p90_ms: float
    runs: int
    threads: int
    seq_len: int
    batch_size: int


def open_session(path: str | Path, threads: int) -> ort.InferenceSession:
    """One session pinned to ``threads`` intra-op threads and no inter-op parallelism (a device's budget)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def synthetic_inputs(session: ort.InferenceSession, seq_len: int, batch_size: int) -> dict[str, np.ndarray]:
    """Feeds for every graph input: low token ids, full attention, zero-length past."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        name = inp.name
        if name.startswith("past."):
            _, heads, _, head_dim = inp.shape  # (batch, kv_heads, past, head_dim): heads and head_dim are fixed
            feeds[name] = np.zeros((batch_size, heads, 0, head_dim), dtype=np.float32)
        elif name == "input_ids":
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
                    runs: int = 20, warmup: int = 3) -> LatencyResult:
    """Median and p90 wall time of one forward pass, after ``warmup`` untimed passes."""
    if runs < 1 or threads < 1 or seq_len < 1 or batch_size < 1:
        raise ValueError("runs, threads, seq_len and batch_size must be >= 1")
    session = open_session(path, threads)
    feeds = synthetic_inputs(session, seq_len, batch_size)
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    return LatencyResult(statistics.median(times), p90, runs, threads, seq_len, batch_size)
