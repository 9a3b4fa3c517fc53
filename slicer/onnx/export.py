"""The reference exporter: ``torch.onnx.export`` (dynamo) of a subnet, selectable with ``builder="torch"``.

The direct builder (``slicer.onnx.graph``) is the default; this one stays as the reference the direct graphs are
tested against. It writes the same interface (see ``slicer.onnx.graph.graph_names``):
- encoder: ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T) -> ``embeddings`` (B, hidden, mean-pooled)
  and, with a task head, ``logits`` (B, labels);
- decoder: ``input_ids`` (B, T), ``attention_mask`` (B, P+T), ``position_ids`` (B, T), ``past.{n}.key|value``
  (B, kv_heads, P, head_dim) -> ``logits`` (B, T, vocab) and ``present.{n}.key|value`` (B, kv_heads, P+T, head_dim).
The exporter has produced wrong graphs on this stack (DESIGN.md §4): every build validates what it wrote.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ExportError
from ..nn.model import SlicedTransformer
from .graph import graph_names as _graph_names

OPSET = 18


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
    return _graph_names(model.dims, model.cfg)


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
