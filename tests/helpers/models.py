"""Inputs and outputs for tests on tiny models: random token ids with right padding, one output tensor."""

from __future__ import annotations

import torch

from slicer.spec.dims import ModelDims


def padded_batch(dims: ModelDims, seed: int = 0, rows: int = 2, length: int = 7, pad: int = 2) -> dict[str, torch.Tensor]:
    """Random ids (never id 0) in ``rows`` rows; the second row's last ``pad`` positions are padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, dims.vocab_size, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length - pad:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def output(model, inputs) -> torch.Tensor:
    """The tensor a family is judged by: logits for decoders, last hidden states for encoders."""
    with torch.no_grad():
        out = model(**inputs)
    return out.last_hidden_state if out.logits is None else out.logits


def randomize_adapters(supernet, seed: int, std: float = 0.05) -> None:
    """Non-zero A matrices in every adapter (B starts random, A at zero), so adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for stack in supernet.adapter_stacks().values():
            for a in stack.A:
                a.copy_(std * torch.randn(a.shape, generator=g).to(a.dtype))


def randomize_deltas(supernet, seed: int, std: float = 0.1) -> None:
    """Non-zero vector/head deltas (they start at zero), so a stack's merged deltas change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for deltas in supernet.deltas.values():
            for d in deltas.deltas.values():
                d.copy_(std * torch.randn(d.shape, generator=g).to(d.dtype))
