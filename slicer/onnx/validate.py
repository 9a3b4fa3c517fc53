"""Checking a built graph against PyTorch on real inputs, cheaply, and judging it against the right reference.

Validation inputs are tokenised once per model (``ValidationSet``): a few dev examples at two lengths, padded
so masks are exercised, for parity; the whole dev split for the int8 quality gate.

Parity is judged in two tiers. When ONNX agrees with the float32 PyTorch subnet within ``PARITY_TOLERANCE *
max(1, scale)`` the graph is right (a wrong graph is off by the output's scale). Otherwise both are compared with a
float64 run of the same subnet: float32 rounding grows with depth and magnitude, so a fixed tolerance rejects
correct deep slices (issue 18: a 20-layer SmolLM2 slice was off by 2.4e-3 from float64 while PyTorch float32 itself
was off by 7.9e-3). Then an output passes when ``max |onnx - float64| <= max(PARITY_TOLERANCE * max(1, scale),
REFERENCE_FACTOR * max |torch32 - float64|)``. All figures are absolute, in the output's own units.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ExportError
from .graph import graph_names

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4  # the floor, relative to the output's scale when that exceeds 1
REFERENCE_FACTOR = 4.0  # ONNX may be this many times as far from float64 as PyTorch float32 is
# Examples per parity batch; two batches (short and long examples), each padded. A wrong graph shows on any example
# (wrong weights on every token, wrong masking on every padded row), so two per batch are as strong as four and
# halve what validation runs (it was 26-28 % of a direct build with four).
PARITY_ROWS = 2
DECODER_GATE_BLOCKS = 128  # language-model blocks the int8 gate reads (every position of each is a prediction)


@dataclass
class ValidationSet:
    """A model's validation inputs, tokenised once and reused by every build of that model."""

    parity: list[dict[str, torch.Tensor]]  # two padded batches: short and long examples
    gate: list[dict[str, torch.Tensor]] = field(default_factory=list)  # the whole dev split (with labels if any)
    source: str = ""

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "parity_examples": sum(len(b["input_ids"]) for b in self.parity),
                "parity_lengths": [int(b["input_ids"].shape[1]) for b in self.parity],
                "gate_examples": sum(len(b["input_ids"]) for b in self.gate)}

    @functools.cached_property
    def labels(self) -> tuple[int, ...]:
        """The gate batches' labels in order (empty without labelled data): read on every resolve by the quality
        gate, so collected once."""
        return tuple(int(y) for b in self.gate if "labels" in b for y in b["labels"].tolist())


def padded_batch(rows: list[list[int]], family: str, labels: list[int] | None = None) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, : len(r)], mask[k, : len(r)] = torch.tensor(r), 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if family == "encoder":
        batch["token_type_ids"] = torch.zeros_like(ids)
    if labels is not None:
        batch["labels"] = torch.tensor(labels)
    return batch


def parity_batches(rows: list[list[int]], family: str) -> list[dict[str, torch.Tensor]]:
    """Two padded batches from real token rows: ``PARITY_ROWS`` short and ``PARITY_ROWS`` long examples.

    Rows of one length (language-model blocks) are cut to spread lengths, so every batch is padded.
    """
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        raise ExportError("validation: no usable example (every one is shorter than 2 tokens)")
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    n = min(len(order), 2 * PARITY_ROWS)
    picked = [rows[order[round(k * (len(order) - 1) / max(1, n - 1))]] for k in range(n)]
    if len({len(r) for r in picked}) == 1:  # equal blocks: cut them to lengths from 2 to the full block
        full = len(picked[0])
        picked = [r[: max(2, round(full * (k + 1) / n))] for k, r in enumerate(picked)]
    half = max(1, n // 2)
    return [padded_batch(part, family) for part in (picked[:half], picked[half:]) if part]


def build_validation_set(base_dir: Path, family: str, data: str | Path | None, max_len: int,
                         trained_on: dict[str, Any] | None = None) -> ValidationSet:
    """The dev split of ``data`` (tokenised here, once; labels numbered as in ``trained_on["label_names"]``, read
    with ``trained_on["read"]``) or, without data, calibration text."""
    from ..data.calibration import calibration_batches
    from ..data.examples import load_eval_examples
    from ..data.readers import ReadOptions
    from ..spec.vocab import TASK_OF_FAMILY

    if data is None:
        batches = calibration_batches(base_dir, family, n=32, max_len=max_len)
        rows = [b["input_ids"][k][b["attention_mask"][k].bool()].tolist() for b in batches for k in range(len(b["input_ids"]))]
        return ValidationSet(parity_batches(rows, family), batches, "calibration text (no validation data)")
    trained_on = trained_on or {}
    examples, _ = load_eval_examples(base_dir, data, TASK_OF_FAMILY[family], max_len, family,
                                     trained_on.get("label_names"), ReadOptions.from_dict(trained_on.get("read")))
    if examples.labels is None:
        examples.ids = examples.ids[:DECODER_GATE_BLOCKS]
    order = sorted(range(len(examples)), key=lambda i: len(examples.ids[i]))  # little padding per gate batch
    gate = [padded_batch([examples.ids[i] for i in order[s: s + 32]], family,
                         None if examples.labels is None else [examples.labels[i] for i in order[s: s + 32]])
            for s in range(0, len(order), 32)]
    return ValidationSet(parity_batches(examples.ids, family), gate, f"dev split of {data} ({len(examples)} examples)")


# ----- feeds and references ------------------------------------------------------------------------------------
def empty_past(dims, cfg, batch: int) -> dict[str, torch.Tensor]:
    return {f"past.{i}.{kv}": torch.zeros(batch, h // dims.group_size, 0, dims.head_dim)
            for i, h in enumerate(cfg.heads) for kv in ("key", "value")}


def run_reference(model, feed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The PyTorch subnet's outputs for a graph feed, in graph output order (runs in the model's dtype)."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        if model.dims.family == "encoder":
            out = model(input_ids=feed["input_ids"], attention_mask=feed["attention_mask"],
                        token_type_ids=feed["token_type_ids"])
            return [out.pooled] + ([out.logits] if out.logits is not None else [])
        n = len(model.cfg.layers)
        past = tuple((feed[f"past.{i}.key"].to(dtype), feed[f"past.{i}.value"].to(dtype)) for i in range(n))
        out = model(input_ids=feed["input_ids"], attention_mask=feed["attention_mask"], position_ids=feed["position_ids"],
                    past_key_values=past, use_cache=True)
        return [out.logits, *[t for kv in out.past_key_values for t in kv]]


def reference_runs(model, batches: list[dict[str, torch.Tensor]]) -> list[tuple[dict[str, torch.Tensor], list[np.ndarray]]]:
    """Graph inputs from real batches, each with the PyTorch subnet's outputs for it (graph output order), computed
    once: for decoders a prefill (past length 0) and a decode step fed the prefill's own present key/values."""
    runs = []
    for b in batches:
        if model.dims.family == "encoder":
            feed = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                    "token_type_ids": b.get("token_type_ids", torch.zeros_like(b["input_ids"]))}
            runs.append((feed, [t.numpy() for t in run_reference(model, feed)]))
            continue
        ids, mask = b["input_ids"], b["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        prefill = {"input_ids": ids[:, :-1], "attention_mask": mask[:, :-1], "position_ids": positions[:, :-1],
                   **empty_past(model.dims, model.cfg, ids.shape[0])}
        out = run_reference(model, prefill)
        runs.append((prefill, [t.numpy() for t in out]))
        decode = {"input_ids": ids[:, -1:], "attention_mask": mask, "position_ids": positions[:, -1:]}
        for i, t in enumerate(out[1:]):
            decode[f"past.{i // 2}.{'key' if i % 2 == 0 else 'value'}"] = t
        runs.append((decode, [t.numpy() for t in run_reference(model, decode)]))
    return runs


def graph_feeds(model, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The graph inputs of ``reference_runs`` alone."""
    return [feed for feed, _ in reference_runs(model, batches)]


def session(path: Path | bytes, threads: int = 1, spinning: bool = False):
    """An onnxruntime CPU session of a graph file (or a serialised graph) with ``threads`` intra-op threads.

    Spinning is off by default, as on devices (client_sdk/latency.py): a server's cores are shared, and spinning
    threads then compete with the work itself."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    spin = "1" if spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts, providers=["CPUExecutionProvider"])


def float64_copy(model):
    """The same subnet in float64, built around converted tensors (no float32 copy first)."""
    from ..nn.factory import build_model

    ref = build_model(model.dims, model.cfg, device="meta")
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()}, assign=True)
    return ref.eval()


def check_parity(model, onnx_path: Path, feeds: list[dict[str, torch.Tensor]], sess=None,
                 references: list[list[np.ndarray]] | None = None) -> dict[str, Any]:
    """Per output: max |onnx - torch float32|, and when that exceeds the floor, the float64 judgement.

    ``references``: the float32 PyTorch outputs per feed when already computed (``reference_runs``), else run here.
    Raises ExportError when any output is not finite or beyond its allowed error.
    """
    sess = sess or session(onnx_path, threads=2)
    _, names = graph_names(model.dims, model.cfg)
    diff, scale = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    finite = dict.fromkeys(names, True)
    runs = []
    for k, feed in enumerate(feeds):
        ours = sess.run(None, {name: v.numpy() for name, v in feed.items()})
        f32 = references[k] if references is not None else [t.numpy() for t in run_reference(model, feed)]
        runs.append((feed, ours, f32))
        for name, a, b in zip(names, ours, f32):
            if a.size:
                finite[name] &= bool(np.isfinite(a).all())
                diff[name] = max(diff[name], float(np.abs(a - b).max()))
                scale[name] = max(scale[name], float(np.abs(b).max()))
    floor = {k: PARITY_TOLERANCE * max(1.0, scale[k]) for k in names}
    report: dict[str, Any] = {"max_abs_diff": diff, "output_scale": scale, "allowed": floor, "feeds": len(feeds),
                              "judged_against": "PyTorch float32", "float64": None,
                              "rule": f"max|onnx-torch32| <= {PARITY_TOLERANCE} * max(1, scale), else "
                                      f"max|onnx-float64| <= max(that, {REFERENCE_FACTOR} * max|torch32-float64|)"}
    if all(finite.values()) and all(diff[k] <= floor[k] for k in names):
        return report
    # Beyond the floor: is it float32 rounding (PyTorch float32 is as far from the truth) or a wrong graph?
    reference = float64_copy(model)
    onnx64, torch64 = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for feed, ours, f32 in runs:
        for name, a, b, c in zip(names, ours, f32, run_reference(reference, feed)):
            if a.size:
                c = c.numpy()
                onnx64[name] = max(onnx64[name], float(np.abs(a - c).max()))
                torch64[name] = max(torch64[name], float(np.abs(b - c).max()))
    allowed = {k: max(floor[k], REFERENCE_FACTOR * torch64[k]) for k in names}
    report.update(judged_against="PyTorch float64", allowed=allowed,
                  float64={"onnx_diff": onnx64, "torch_float32_diff": torch64})
    bad = {k: f"{onnx64[k]:.3g} > {allowed[k]:.3g}" if finite[k] else "not finite"
           for k in names if not finite[k] or not onnx64[k] <= allowed[k]}
    if bad:
        raise ExportError(f"ONNX output differs from the float64 PyTorch reference beyond the allowed error "
                          f"(max |onnx - float64| > allowed, absolute; PyTorch float32 is off by "
                          f"{ {k: f'{torch64[k]:.3g}' for k in bad} }): {bad}",
                          details={"kind": "parity", "onnx_float64_diff": {k: onnx64[k] for k in bad},
                                   "allowed": {k: allowed[k] for k in bad},
                                   "torch_float32_diff": {k: torch64[k] for k in bad},
                                   "not_finite": [k for k in bad if not finite[k]]})
    return report


def parity_summary(parity: dict[str, Any]) -> str:
    """The worst output as 'figure (allowed X)' in the same absolute units, for logs and the CLI."""
    f64 = parity["float64"]
    diff = f64["onnx_diff"] if f64 else parity["max_abs_diff"]
    worst = max(diff, key=lambda k: diff[k] / max(parity["allowed"][k], 1e-30))
    if f64 is None:
        return f"max |onnx - torch| on {worst}: {diff[worst]:.2e} (allowed {parity['allowed'][worst]:.2e})"
    return (f"max |onnx - float64| on {worst}: {diff[worst]:.2e} (allowed {parity['allowed'][worst]:.2e}; "
            f"PyTorch float32 itself is off by {f64['torch_float32_diff'][worst]:.2e})")
