"""Importance reordering: permute heads, FFN neurons and hidden channels so that prefixes keep the best.

The permutation preserves the model's function (the same sums in another order). Scores, best first:
- ``taylor``: |sum over tokens of activation x gradient| of a loss (DynaBERT's head-mask gradient);
- ``activation``: the unit's mean contribution to the residual stream on calibration text (no loss needed);
- ``magnitude``: weight norms only, the fallback without data.
Attention units are key/value groups (a single head without grouped-query attention): heads are sliced in
whole groups, so groups are what is ranked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import CheckpointError, ConfigError
from ..spec.dims import ModelDims
from ..spec.shapes import HIDDEN_COLS, HIDDEN_ROWS, KV_ROWS, NEURON_COLS, NEURON_ROWS, QUERY_ROWS, UNIT_COLS
from .model import ModelOutput, SlicedTransformer

METHODS = ("taylor", "activation", "magnitude")
LossFn = Callable[[ModelOutput, dict[str, torch.Tensor]], torch.Tensor]  # (output, the batch it came from)


@dataclass
class Reordering:
    """Per layer: order of attention units and of FFN neurons; optionally an order of hidden channels."""

    attn_units: list[torch.Tensor]
    ffn: list[torch.Tensor]
    hidden: torch.Tensor | None = None

    @torch.no_grad()
    def apply(self, model: SlicedTransformer) -> None:
        """Permute ``model``'s weights in place (a maximal, adapter-free model)."""
        dims, state = model.dims, model.state_dict()
        if not model.is_elastic or set(state) != set(model.expected_shapes()):
            # A wrapped model names its weights "...q.base.weight": permuting only some of them breaks it.
            raise ConfigError("reordering applies to a full, adapter-free base model; reorder before attaching adapters")
        unit = dims.group_size * dims.head_dim  # query rows per unit
        for i, (units, neurons) in enumerate(zip(self.attn_units, self.ffn)):
            p = f"layers.{i}."
            n = len(units)
            for name in QUERY_ROWS:
                _permute(state, p + name, lambda t, u=units, n=n: t.view(n, unit, *t.shape[1:])[u].flatten(0, 1))
            for name in KV_ROWS:
                _permute(state, p + name, lambda t, u=units, n=n: t.view(n, dims.head_dim, *t.shape[1:])[u].flatten(0, 1))
            for name in UNIT_COLS:
                _permute(state, p + name, lambda t, u=units, n=n: t.view(t.shape[0], n, unit)[:, u].flatten(1))
            for name in NEURON_ROWS:
                _permute(state, p + name, lambda t, k=neurons: t[k])
            for name in NEURON_COLS:
                _permute(state, p + name, lambda t, k=neurons: t[:, k])
        if self.hidden is not None:
            c = self.hidden
            for name in state:
                if name.endswith(HIDDEN_COLS):
                    _permute(state, name, lambda t: t[:, c])
                elif name.endswith(HIDDEN_ROWS):
                    _permute(state, name, lambda t: t[c])

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"attn_units.{i}": t for i, t in enumerate(self.attn_units)}
        out.update({f"ffn.{i}": t for i, t in enumerate(self.ffn)})
        if self.hidden is not None:
            out["hidden"] = self.hidden
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], dims: ModelDims) -> Reordering:
        """Read a saved reordering, checking that every order is a permutation of the model's units: a repeated
        index would silently duplicate a head or a neuron, one out of range would fail deep inside ``apply``."""
        sizes = {f"attn_units.{i}": dims.num_kv_heads for i in range(dims.num_layers)}
        sizes.update({f"ffn.{i}": dims.ffn for i in range(dims.num_layers)})
        if "hidden" in tensors:
            sizes["hidden"] = dims.hidden
        if set(tensors) != set(sizes):
            missing, extra = sorted(set(sizes) - set(tensors)), sorted(set(tensors) - set(sizes))
            raise CheckpointError(f"reordering: missing {missing[:3]}, unexpected {extra[:3]}")
        for name, size in sizes.items():
            t = tensors[name]
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() != 1 or \
                    not torch.equal(torch.sort(t.long()).values, torch.arange(size)):
                raise CheckpointError(f"reordering: {name} is not a permutation of 0..{size - 1}")
        return cls([tensors[f"attn_units.{i}"].long() for i in range(dims.num_layers)],
                   [tensors[f"ffn.{i}"].long() for i in range(dims.num_layers)],
                   tensors["hidden"].long() if "hidden" in tensors else None)


def _permute(state: dict[str, torch.Tensor], name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    if name in state:
        state[name].copy_(fn(state[name].clone()))


def _rank(scores: torch.Tensor) -> torch.Tensor:
    return torch.argsort(scores, descending=True, stable=True)


@dataclass
class Scores:
    attn_units: list[torch.Tensor]
    ffn: list[torch.Tensor]
    hidden: torch.Tensor

    def reordering(self, hidden: bool) -> Reordering:
        return Reordering([_rank(s) for s in self.attn_units], [_rank(s) for s in self.ffn],
                          _rank(self.hidden) if hidden else None)


@torch.no_grad()
def magnitude_scores(model: SlicedTransformer) -> Scores:
    dims = model.dims
    units, ffn = [], []
    for layer in model.layers:
        a = layer.attn
        n = dims.num_kv_heads
        q = a.q.weight.view(n, -1).norm(dim=1) + a.o.weight.view(a.o.weight.shape[0], n, -1).norm(dim=(0, 2))
        kv = a.k.weight.view(n, -1).norm(dim=1) + a.v.weight.view(n, -1).norm(dim=1)
        units.append(q + kv)
        f = layer.ffn
        up = f.up.weight.norm(dim=1) * (f.gate.weight.norm(dim=1) if hasattr(f, "gate") else 1.0)
        ffn.append(up * f.down.weight.norm(dim=0))
    return Scores(units, ffn, model.embeddings.word.weight.norm(dim=0))


def _taylor(x: torch.Tensor, mask: torch.Tensor, groups: int) -> torch.Tensor:
    """|d loss / d gate| per unit: activation x gradient summed over the unit and the real tokens of each example."""
    x_units = (x * mask).unflatten(-1, (groups, -1))  # (B, T, groups, width)
    g = x.grad.unflatten(-1, (groups, -1))
    return (x_units * g).sum(dim=(1, 3)).abs().sum(0)


def data_scores(
    model: SlicedTransformer, batches: list[dict[str, torch.Tensor]], method: str, loss_fn: LossFn | None = None
) -> Scores:
    """Scores from calibration batches (dicts of model inputs, ``attention_mask`` included)."""
    if method == "taylor" and loss_fn is None:
        raise ConfigError("importance method 'taylor' needs a loss; use 'activation' or 'magnitude' without one")
    dims = model.dims
    n_units = dims.num_kv_heads
    units = [torch.zeros(n_units) for _ in model.layers]
    ffn = [torch.zeros(layer.ffn.down.in_features) for layer in model.layers]
    hidden = torch.zeros(dims.hidden)
    captured: dict[str, torch.Tensor] = {}

    def capture(key: str):
        def hook(_module, args):
            x = args[0]
            if method == "taylor":
                x.retain_grad()
            captured[key] = x
        return hook

    handles = []
    for i, layer in enumerate(model.layers):
        handles.append(layer.attn.o.register_forward_pre_hook(capture(f"attn.{i}")))
        handles.append(layer.ffn.down.register_forward_pre_hook(capture(f"ffn.{i}")))
    saved_grad = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(method == "taylor")
        for batch in batches:
            mask = batch["attention_mask"].float()[..., None]  # (B, T, 1)
            with torch.set_grad_enabled(method == "taylor"):
                out = model(**batch, output_hidden_states=True)
                if method == "taylor":
                    for h in out.hidden_states:
                        h.retain_grad()
                    loss_fn(out, batch).backward()

            with torch.no_grad():
                for i, layer in enumerate(model.layers):
                    ctx = captured[f"attn.{i}"]  # (B, T, heads*hd)
                    if method == "taylor":
                        units[i] += _taylor(ctx, mask, n_units)
                        ffn[i] += _taylor(captured[f"ffn.{i}"], mask, ffn[i].numel())
                    else:
                        # contribution of each unit to the residual stream: |x_u W_o[:, u]^T| and |a_n| |W_down[:, n]|
                        w_o = layer.attn.o.weight.view(-1, n_units, ctx.shape[-1] // n_units)  # (hidden, units, width)
                        per_unit = torch.einsum("btuw,huw->btuh", (ctx * mask).unflatten(-1, (n_units, -1)), w_o)
                        units[i] += per_unit.norm(dim=-1).sum(dim=(0, 1))
                        a = (captured[f"ffn.{i}"] * mask).abs().sum(dim=(0, 1))
                        ffn[i] += a * layer.ffn.down.weight.norm(dim=0)
                for h in out.hidden_states:
                    hidden += _taylor(h, mask, dims.hidden) if method == "taylor" else (h * mask).abs().sum(dim=(0, 1))
            model.zero_grad(set_to_none=True)
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(model.parameters(), saved_grad):
            p.requires_grad_(flag)
    return Scores(units, ffn, hidden)


def compute_reordering(
    model: SlicedTransformer,
    batches: list[dict[str, torch.Tensor]] | None = None,
    method: str = "activation",
    loss_fn: LossFn | None = None,
    hidden: bool = False,
) -> Reordering:
    """Rank units of a maximal, adapter-free model; ``hidden`` also ranks hidden channels."""
    if method not in METHODS:
        raise ConfigError(f"importance method: {method!r} is not one of {list(METHODS)}")
    if not model.is_elastic:
        raise ConfigError("importance: reorder the full teacher, not a subnet")
    if method == "magnitude" or not batches:
        return magnitude_scores(model).reordering(hidden)
    model.eval()
    return data_scores(model, batches, method, loss_fn).reordering(hidden)
