"""A short built-in latency calibration: what this machine does per GFLOP, per layer and per call, by thread count.

Before any ``mlfs bench latency`` a store still needs latency estimates (a latency budget cannot be served
otherwise), and a profile measured on few configs needs a thread-scaling model to borrow another profile's fit.
Both come from timing a few synthetic encoder stacks (the operators of a BERT layer: fused QKV projection,
scaled-dot-product attention with softmax, output projection, residual adds, LayerNormalization, erf GELU
feed-forward) of different depths and widths at each thread count, written with ``onnx.helper`` and timed by
``client_sdk.latency`` exactly as a device times an artifact. A least-squares fit per thread count gives
``ms = a + b * GFLOPs + c * layers``. It takes a few seconds; ``mlfs bench calibrate`` re-runs it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from client_sdk.latency import ALLOW_SPINNING, measure_interleaved

log = logging.getLogger(__name__)

SEQ_LEN = 128
HEAD_DIM = 64
HIDDEN = 384
# (layers, heads, ffn): depth and width vary independently, so per-layer and per-GFLOP costs separate.
STACKS = ((1, 6, 768), (1, 12, 1536), (4, 6, 768), (3, 12, 1536))


@dataclass(frozen=True)
class Calibration:
    threads: int
    coeffs: tuple[float, float, float]  # a (ms per call), b (ms per GFLOP), c (ms per layer)
    info: dict


def stack_gflops(layers: int, heads: int, ffn: int, seq_len: int = SEQ_LEN, batch: int = 1) -> float:
    """Same count as ``selection.gflops``: 2 per multiply-add of each matmul weight, plus attention."""
    inner = heads * HEAD_DIM
    weights = HIDDEN * 3 * inner + inner * HIDDEN + 2 * HIDDEN * ffn
    return layers * (2 * weights * seq_len * batch + 4 * seq_len * seq_len * inner * batch) / 1e9


def _const(nodes: list, inits: list, name: str, value: np.ndarray) -> str:
    inits.append(numpy_helper.from_array(value, name))
    return name


def stack_graph(layers: int, heads: int, ffn: int, seed: int = 0) -> onnx.ModelProto:
    """An encoder stack with an ``input_ids`` input, so ``client_sdk.latency`` can feed it like an artifact."""
    rng = np.random.default_rng(seed)
    inner = heads * HEAD_DIM
    nodes: list = []
    inits: list = []

    def w(name: str, *shape: int) -> str:
        return _const(nodes, inits, name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    shape_qkv = _const(nodes, inits, "shape_qkv", np.array([0, 0, 3, heads, HEAD_DIM], np.int64))
    shape_ctx = _const(nodes, inits, "shape_ctx", np.array([0, 0, inner], np.int64))
    scale = _const(nodes, inits, "scale", np.array(1 / np.sqrt(HEAD_DIM), np.float32))
    half = _const(nodes, inits, "half", np.array(0.5, np.float32))
    one = _const(nodes, inits, "one", np.array(1.0, np.float32))
    root2 = _const(nodes, inits, "root2", np.array(np.sqrt(2.0), np.float32))
    x = node("Gather", [w("embed", 64, HIDDEN), "input_ids"], "x0")
    for i in range(layers):
        p = f"l{i}_"
        qkv = node("Add", [node("MatMul", [x, w(p + "wqkv", HIDDEN, 3 * inner)], p + "qkv_mm"), w(p + "bqkv", 3 * inner)], p + "qkv")
        qkv = node("Transpose", [node("Reshape", [qkv, shape_qkv], p + "qkv_r")], p + "qkv_t", perm=[2, 0, 3, 1, 4])
        q, k, v = (node("Gather", [qkv, _const(nodes, inits, f"{p}idx{j}", np.array(j, np.int64))], f"{p}{n}", axis=0)
                   for j, n in enumerate("qkv"))
        scores = node("Mul", [node("MatMul", [q, node("Transpose", [k], p + "kt", perm=[0, 1, 3, 2])], p + "s_mm"), scale], p + "s")
        ctx = node("MatMul", [node("Softmax", [scores], p + "probs", axis=-1), v], p + "ctx_mm")
        ctx = node("Reshape", [node("Transpose", [ctx], p + "ctx_t", perm=[0, 2, 1, 3]), shape_ctx], p + "ctx")
        attn = node("Add", [node("MatMul", [ctx, w(p + "wo", inner, HIDDEN)], p + "o_mm"), w(p + "bo", HIDDEN)], p + "o")
        h = node("LayerNormalization", [node("Add", [attn, x], p + "res1"), w(p + "g1", HIDDEN), w(p + "be1", HIDDEN)], p + "h", axis=-1)
        up = node("Add", [node("MatMul", [h, w(p + "w1", HIDDEN, ffn)], p + "up_mm"), w(p + "b1", ffn)], p + "up")
        erf = node("Erf", [node("Div", [up, root2], p + "up_s")], p + "erf")
        gelu = node("Mul", [node("Mul", [up, half], p + "up_h"), node("Add", [erf, one], p + "erf1")], p + "gelu")
        down = node("Add", [node("MatMul", [gelu, w(p + "w2", ffn, HIDDEN)], p + "down_mm"), w(p + "b2", HIDDEN)], p + "down")
        x = node("LayerNormalization", [node("Add", [down, h], p + "res2"), w(p + "g2", HIDDEN), w(p + "be2", HIDDEN)], p + "x", axis=-1)
    graph = helper.make_graph(
        nodes, "calibration", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "seq", HIDDEN])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def fit_coeffs(points: list[tuple[float, int, float]]) -> tuple[float, float, float]:
    """Least squares in relative error over (GFLOPs, layers, ms), every coefficient kept >= 0."""
    x = np.array([[1.0, gf, layers] for gf, layers, _ in points])
    y = np.array([ms for _, _, ms in points])
    weights = 1 / y
    active = [0, 1, 2]
    while True:  # drop a fixed cost (a or c) that comes out negative and refit the rest (a tiny NNLS); compute stays
        sol, *_ = np.linalg.lstsq(x[:, active] * weights[:, None], y * weights, rcond=None)
        negative = [(value, i) for value, i in zip(sol, active) if value < 0 and i != 1]
        if not negative:
            break
        active.remove(min(negative)[1])
    coeffs = [0.0, 0.0, 0.0]
    for i, value in zip(active, sol):
        coeffs[i] = max(0.0, float(value))
    return coeffs[0], coeffs[1], coeffs[2]


def calibrate(thread_counts: Iterable[int], rounds: int = 4, runs: int = 12,
              allow_spinning: bool = ALLOW_SPINNING) -> list[Calibration]:
    """Time the synthetic stacks at each thread count (interleaved, warm-up discarded, medians) and fit.

    Four points per thread count are too few for three free coefficients on a busy machine (one slow spell
    moves them anywhere), so the model is constrained: one shape ``(a, b, c)`` fitted on all points, each thread
    count's points first divided by that thread count's speed factor, the median over stacks of its time
    relative to the fewest threads measured. Per thread count the coefficients are shape x factor.
    """
    start = time.perf_counter()
    counts = sorted(set(thread_counts))
    loads: dict[int, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="mlfs-calibration-") as tmp:
        paths = []
        for i, (layers, heads, ffn) in enumerate(STACKS):
            paths.append(Path(tmp) / f"stack{i}.onnx")
            onnx.save(stack_graph(layers, heads, ffn), paths[-1])
        # Rounds alternate the thread counts, so a busy spell does not fall on one thread count only (the
        # scaling between them is what carries one profile's measurements to another).
        per_round: dict[int, list[list[float]]] = {t: [] for t in counts}
        for r in range(rounds):
            for threads in counts if r % 2 == 0 else counts[::-1]:
                results = measure_interleaved(paths, threads, SEQ_LEN, 1, rounds=1, runs=max(1, runs // rounds),
                                              warmup=1, allow_spinning=allow_spinning)
                per_round[threads].append([x.table_ms for x in results])
                loads[threads] = results[0].load
        measured = {t: [float(np.median(col)) for col in zip(*rows)] for t, rows in per_round.items()}
        seconds = {t: round((time.perf_counter() - start) / len(counts), 2) for t in counts}
    ref = measured[counts[0]]
    factor = {t: float(np.median([m / r for m, r in zip(measured[t], ref)])) for t in counts}
    features = [(stack_gflops(*stack), stack[0]) for stack in STACKS]
    shape = fit_coeffs([(gf, layers, ms / factor[t]) for t in counts for (gf, layers), ms in zip(features, measured[t])])
    out = []
    for t in counts:
        coeffs = (shape[0] * factor[t], shape[1] * factor[t], shape[2] * factor[t])
        info = {"points": [{"gflops": round(gf, 4), "layers": layers, "ms": round(ms, 3)}
                           for (gf, layers), ms in zip(features, measured[t])],
                "factor": round(factor[t], 4), "load": loads[t], "allow_spinning": allow_spinning, "seconds": seconds[t]}
        out.append(Calibration(t, coeffs, info))
        log.info("latency calibration, %d threads: a=%.3f ms, b=%.2f ms/GFLOP, c=%.3f ms/layer", t, *coeffs)
    log.info("latency calibration took %.1f s", time.perf_counter() - start)
    return out
