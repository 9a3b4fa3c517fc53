"""Tokenised training data and a deterministic batch order.

The order of batch ``k`` in epoch ``e`` of stage ``s`` depends only on (seed, s, e), so a resumed run sees
exactly the batches an uninterrupted run would, and data-parallel ranks can take disjoint slices of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from ..errors import ConfigError
from ..spec.vocab import DECODER, ENCODER, Family


@dataclass
class Examples:
    """Token ids per example (one sequence each; pairs are already joined by the tokenizer), labels if any."""

    ids: list[list[int]]
    labels: list[int] | None
    family: Family

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_pairs(tokenizer: Tokenizer, texts: Sequence[tuple[str, ...]], labels: Sequence[int], max_len: int, family: Family) -> Examples:
    """Classification examples: single sentences or sentence pairs, truncated to ``max_len`` tokens."""
    tokenizer = _truncating(tokenizer, max_len)
    inputs = [t[0] if len(t) == 1 else (t[0], t[1]) for t in texts]
    return Examples([e.ids for e in tokenizer.encode_batch(inputs)], list(labels), family)


def tokenize_stream(tokenizer: Tokenizer, text: str, block: int, family: Family = DECODER) -> Examples:
    """Language-modelling examples: the whole text as one token stream cut into blocks of ``block`` tokens."""
    tokenizer = Tokenizer.from_str(tokenizer.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    ids: list[int] = []
    for chunk in text.split("\n\n"):  # encode in pieces: one huge string is slow and memory-hungry
        ids.extend(tokenizer.encode(chunk + "\n\n", add_special_tokens=False).ids)
    blocks = [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]
    if not blocks:
        raise ConfigError(f"text too short: {len(ids)} tokens, need at least one block of {block}")
    return Examples(blocks, None, family)


def _truncating(tokenizer: Tokenizer, max_len: int) -> Tokenizer:
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_padding()
    tok.enable_truncation(max_len)
    return tok


def collate(examples: Examples, indices: Sequence[int], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch of the given examples."""
    rows = [examples.ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for k, r in enumerate(rows):
        input_ids[k, : len(r)] = torch.tensor(r)
        mask[k, : len(r)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if examples.family == ENCODER:
        batch["token_type_ids"] = torch.zeros_like(input_ids)
    if examples.labels is not None:
        batch["labels"] = torch.tensor([examples.labels[i] for i in indices])
    return batch


def epoch_order(n: int, seed: int, stage: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + stage * 10_007 + epoch)
    return torch.randperm(n, generator=g).tolist()


def batch_indices(n: int, batch_size: int, seed: int, stage: int, step: int, rank: int = 0, world: int = 1) -> list[int]:
    """Example indices of global step ``step`` of ``stage`` (incomplete last batches are dropped), this rank's share."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ConfigError(f"batch_size: {batch_size} is larger than the training set ({n} examples)")
    epoch, k = divmod(step, per_epoch)
    order = epoch_order(n, seed, stage, epoch)
    global_batch = order[k * batch_size : (k + 1) * batch_size]
    return global_batch[rank::world]


def eval_batches(examples: Examples, batch_size: int) -> list[dict[str, torch.Tensor]]:
    # Sorted by length so padding stays small; order does not change accuracy or mean loss.
    order = sorted(range(len(examples)), key=lambda i: len(examples.ids[i]))
    return [collate(examples, order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
