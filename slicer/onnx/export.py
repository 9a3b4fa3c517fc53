"""Subnet -> ONNX artifact: export, validation against PyTorch, optional int8, manifest.

Every export is validated on real inputs and fails beyond ``PARITY_TOLERANCE``: exporters have produced
wrong graphs on this stack (DESIGN.md §4), so nothing unvalidated becomes an artifact.

Graph interface (what devices feed):
- encoder: ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T) -> ``embeddings`` (B, hidden, mean-pooled)
  and, with a task head, ``logits`` (B, labels);
- decoder: ``input_ids`` (B, T), ``attention_mask`` (B, P+T), ``position_ids`` (B, T), ``past.{n}.key|value``
  (B, kv_heads, P, head_dim) -> ``logits`` (B, T, vocab) and ``present.{n}.key|value`` (B, kv_heads, P+T, head_dim).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from ..nn.model import SlicedTransformer
from ..paths import sha256_file

log = logging.getLogger(__name__)

EXPORTER_VERSION = "mlfs-onnx/1"  # bump whenever the graph interface or export recipe changes: it keys caches
OPSET = 18
PARITY_TOLERANCE = 1e-4  # max |onnx - torch| on any output, relative to the output's scale when that exceeds 1
INT8_MIN_AGREEMENT = 0.99  # argmax agreement with fp32 (classification / next token)
INT8_MIN_COSINE = 0.99  # embeddings: mean cosine similarity with fp32


class EncoderGraph(nn.Module):
    def __init__(self, model: SlicedTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return (out.pooled,) if out.logits is None else (out.pooled, out.logits)


class DecoderGraph(nn.Module):
    def __init__(self, model: SlicedTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past_flat):
        past = tuple((past_flat[2 * n], past_flat[2 * n + 1]) for n in range(len(past_flat) // 2))
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past, use_cache=True)
        return (out.logits, *[t for kv in out.past_key_values for t in kv])


def graph_names(model: SlicedTransformer) -> tuple[list[str], list[str]]:
    if model.dims.family == "encoder":
        outputs = ["embeddings"] + (["logits"] if model.dims.num_labels else [])
        return ["input_ids", "attention_mask", "token_type_ids"], outputs
    n = len(model.cfg.layers)
    past = [f"past.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def example_inputs(model: SlicedTransformer, batch: int = 2, seq: int = 5, past: int = 3) -> dict[str, torch.Tensor]:
    """Inputs in graph order; sizes differ per axis so the exporter cannot confuse dynamic dimensions."""
    dims = model.dims
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, dims.vocab_size, (batch, seq), generator=g)
    if dims.family == "encoder":
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    kv_heads = [h // dims.group_size for h in model.cfg.heads]
    inputs = {"input_ids": ids, "attention_mask": torch.ones(batch, past + seq, dtype=torch.long),
              "position_ids": (torch.arange(seq) + past).expand(batch, seq).contiguous()}
    for i, kv in enumerate(kv_heads):
        for name in ("key", "value"):
            inputs[f"past.{i}.{name}"] = torch.randn(batch, kv, past, dims.head_dim, generator=g)
    return inputs


def _dynamic_shapes(names: list[str]) -> dict[str, dict[int, Any]]:
    batch, seq, total, past = (torch.export.Dim(n) for n in ("batch", "seq", "total", "past"))
    shapes: dict[str, dict[int, Any]] = {}
    for name in names:
        if name.startswith("past."):
            shapes[name] = {0: batch, 2: past}
        elif name == "attention_mask" and any(n.startswith("past.") for n in names):
            shapes[name] = {0: batch, 1: total}
        else:
            shapes[name] = {0: batch, 1: seq}
    return shapes


def export_onnx(model: SlicedTransformer, path: Path, opset: int = OPSET) -> None:
    """Export with the dynamo exporter into one self-contained file (dynamic batch, sequence and past axes)."""
    model = model.eval()
    inputs_names, output_names = graph_names(model)
    graph = EncoderGraph(model) if model.dims.family == "encoder" else DecoderGraph(model)
    example = example_inputs(model)
    dynamic = _dynamic_shapes(inputs_names)
    if model.dims.family == "decoder":  # the exporter names *args inputs positionally
        dynamic = {"input_ids": dynamic["input_ids"], "attention_mask": dynamic["attention_mask"],
                   "position_ids": dynamic["position_ids"],
                   "past_flat": tuple(dynamic[n] for n in inputs_names if n.startswith("past."))}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, tuple(example.values()), str(path), dynamo=True, opset_version=opset,
                              input_names=inputs_names, output_names=output_names, dynamic_shapes=dynamic,
                              external_data=False, verbose=False)
    except Exception as err:  # the exporter raises many types; all mean "no artifact"
        raise ExportError(f"ONNX export failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}") from err


def session(path: Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run_torch(model: SlicedTransformer, feed: dict[str, torch.Tensor]) -> list[np.ndarray]:
    graph = EncoderGraph(model) if model.dims.family == "encoder" else DecoderGraph(model)
    with torch.no_grad():
        return [t.numpy() for t in graph(*feed.values())]


def validation_feeds(model: SlicedTransformer, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Graph inputs from real batches; for decoders a prefill (past length 0) and a decode step after it."""
    feeds = []
    for b in batches:
        if model.dims.family == "encoder":
            feeds.append({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                          "token_type_ids": b.get("token_type_ids", torch.zeros_like(b["input_ids"]))})
            continue
        ids, mask = b["input_ids"], b["attention_mask"]
        B = ids.shape[0]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        empty = example_inputs(model, batch=B, seq=1, past=0)
        prefill = {"input_ids": ids[:, :-1], "attention_mask": mask[:, :-1], "position_ids": positions[:, :-1],
                   **{k: v for k, v in empty.items() if k.startswith("past.")}}
        feeds.append(prefill)
        with torch.no_grad():
            out = DecoderGraph(model)(*prefill.values())
        decode = {"input_ids": ids[:, -1:], "attention_mask": mask, "position_ids": positions[:, -1:]}
        for i, t in enumerate(out[1:]):
            decode[f"past.{i // 2}.{'key' if i % 2 == 0 else 'value'}"] = t
        feeds.append(decode)
    return feeds


def check_parity(model: SlicedTransformer, onnx_path: Path, feeds: list[dict[str, torch.Tensor]],
                 tolerance: float = PARITY_TOLERANCE) -> dict[str, dict[str, float]]:
    """Max |onnxruntime - PyTorch| per output over the feeds, and the output's scale (max |PyTorch|).

    An output fails when its error exceeds ``tolerance * max(1, scale)``: float32 rounding grows with the
    magnitude of what is computed (logits of a large vocabulary), a wrong graph is off by far more.
    """
    sess = session(onnx_path)
    _, names = graph_names(model)
    worst, scale = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for feed in feeds:
        ours = sess.run(None, {k: v.numpy() for k, v in feed.items()})
        ref = _run_torch(model, feed)
        for name, a, b in zip(names, ours, ref):
            if a.size:
                worst[name] = max(worst[name], float(np.abs(a - b).max()))
                scale[name] = max(scale[name], float(np.abs(b).max()))
    bad = {k: v for k, v in worst.items() if v > tolerance * max(1.0, scale[k])}
    if bad:
        raise ExportError(f"ONNX output differs from PyTorch beyond {tolerance} x max(1, |output|): {bad}")
    return {"max_abs_diff": worst, "output_scale": scale}


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 weights. Dynamo graphs carry value_info that quantize_dynamic chokes on: clear it first."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(src))
    del proto.graph.value_info[:]
    cleared = dst.with_suffix(".cleared.onnx")
    onnx.save(proto, str(cleared))
    try:
        quantize_dynamic(str(cleared), str(dst), weight_type=QuantType.QInt8)
    except Exception as err:
        raise ExportError(f"int8 quantisation failed: {type(err).__name__}: {err}") from err
    finally:
        cleared.unlink(missing_ok=True)


def int8_quality(model: SlicedTransformer, fp32: Path, int8: Path, feeds: list[dict[str, torch.Tensor]],
                 labels: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """How the int8 graph agrees with fp32 on real inputs; ``accepted`` says whether it keeps task quality.

    classification: argmax agreement >= 99%, or accuracy drop <= 0.5 point when labels are given;
    embeddings: mean cosine similarity >= 0.99; causal LM: next-token argmax agreement >= 99%.
    """
    a, b = session(fp32), session(int8)
    family, has_head = model.dims.family, bool(model.dims.num_labels)
    agree = total = 0
    cosines: list[float] = []
    correct = {"fp32": 0, "int8": 0}
    for k, feed in enumerate(feeds):
        np_feed = {n: v.numpy() for n, v in feed.items()}
        ra, rb = a.run(None, np_feed), b.run(None, np_feed)
        if family == "encoder":
            ea, eb = ra[0], rb[0]
            cos = (ea * eb).sum(-1) / (np.linalg.norm(ea, axis=-1) * np.linalg.norm(eb, axis=-1) + 1e-12)
            cosines.extend(cos.tolist())
            if has_head:
                pa, pb = ra[1].argmax(-1), rb[1].argmax(-1)
                agree += int((pa == pb).sum())
                total += pa.size
                if labels is not None:
                    y = labels[k].numpy()
                    correct["fp32"] += int((pa == y).sum())
                    correct["int8"] += int((pb == y).sum())
        else:
            mask = feed["attention_mask"][:, -feed["input_ids"].shape[1]:].numpy().astype(bool)
            pa, pb = ra[0].argmax(-1), rb[0].argmax(-1)
            agree += int((pa == pb)[mask].sum())
            total += int(mask.sum())
    report: dict[str, Any] = {}
    if cosines:
        report["embedding_cosine_mean"] = float(np.mean(cosines))
        report["embedding_cosine_min"] = float(np.min(cosines))
    if total:
        report["argmax_agreement"] = agree / total
    if labels is not None and has_head and total:
        report["accuracy_fp32"], report["accuracy_int8"] = correct["fp32"] / total, correct["int8"] / total
        report["accuracy_drop_points"] = 100 * (report["accuracy_fp32"] - report["accuracy_int8"])
    checks = []
    if "argmax_agreement" in report:
        checks.append(("argmax agreement >= 99%", report["argmax_agreement"] >= INT8_MIN_AGREEMENT))
    if "accuracy_drop_points" in report:
        checks.append(("accuracy drop <= 0.5 point", report["accuracy_drop_points"] <= 0.5))
    if "embedding_cosine_mean" in report and not has_head:
        checks.append(("embedding cosine >= 0.99", report["embedding_cosine_mean"] >= INT8_MIN_COSINE))
    passed = [name for name, ok in checks if ok]
    report["accepted"] = bool(passed)
    report["criterion"] = passed[0] if passed else "none passed: " + "; ".join(name for name, _ in checks)
    return report




def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "exporter": EXPORTER_VERSION}


def build_artifact(
    model: SlicedTransformer,
    out: Path,
    batches: list[dict[str, torch.Tensor]],
    tokenizer: Path | None = None,
    precision: str = "fp32",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export, validate and (for int8) quantise ``model`` into folder ``out``; returns the manifest.

    The folder is built under a temporary name and renamed: nothing half-written is ever visible.
    """
    if precision not in ("fp32", "int8"):
        raise ExportError(f"precision: {precision!r} is not one of ['fp32', 'int8']")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.incomplete-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    timings: dict[str, float] = {}
    try:
        start = time.perf_counter()
        fp32 = tmp / "model.fp32.onnx"
        export_onnx(model, fp32)
        timings["export_s"] = time.perf_counter() - start
        start = time.perf_counter()
        labels = [b["labels"] for b in batches] if all("labels" in b for b in batches) else None
        feeds = validation_feeds(model, batches)
        parity = check_parity(model, fp32, feeds)
        timings["validate_s"] = time.perf_counter() - start
        quality = None
        if precision == "int8":
            start = time.perf_counter()
            quantize_int8(fp32, tmp / "model.onnx")
            quality = int8_quality(model, fp32, tmp / "model.onnx", feeds, labels if model.dims.family == "encoder" else None)
            timings["quantize_s"] = time.perf_counter() - start
            if not quality["accepted"]:
                raise ExportError(f"int8 model rejected: {quality['criterion']} ({quality})")
            fp32.unlink()
        else:
            fp32.rename(tmp / "model.onnx")
        if tokenizer is not None and (Path(tokenizer) / "tokenizer.json").is_file():
            shutil.copy2(Path(tokenizer) / "tokenizer.json", tmp / "tokenizer.json")
        inputs, outputs = graph_names(model)
        count = model.cfg.param_count(model.dims)
        files = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in sorted(tmp.iterdir())}
        manifest = {
            "format": "mlfs-artifact/1", "family": model.dims.family, "config": model.cfg.to_dict(),
            "config_key": model.cfg.key, "dims": model.dims.to_dict(),
            "params": {"total": count.total, "embedding": count.embedding, "non_embedding": count.non_embedding},
            "precision": precision, "opset": OPSET, "inputs": inputs, "outputs": outputs,
            "files": files, "versions": versions(),
            "parity": {**parity, "tolerance": PARITY_TOLERANCE, "rule": "max_abs_diff <= tolerance * max(1, output_scale)",
                       "feeds": len(feeds)},
            "int8_quality": quality, "timings": timings, **(extra or {}),
        }


        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return manifest
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
