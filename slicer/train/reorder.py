"""Reorder a model's units by importance on real text before slicing, with the order kept in a cache."""

from __future__ import annotations

import logging
from pathlib import Path

from ..data.calibration import calibration_batches
from ..errors import CheckpointError
from ..formats.reordering_cache import ReorderingCache
from ..nn.importance import compute_reordering
from ..spec.vocab import DECODER
from .losses import causal_lm_loss

log = logging.getLogger(__name__)


def reorder_by_importance(model, base_dir: Path, batches: list[dict] | None = None, cache: ReorderingCache | None = None):
    """Rank units on real text (given batches, else stdlib prose or code) and permute the model in place.

    Without a tokenizer (and no batches) the ranking falls back to weight magnitude.
    """
    family = model.dims.family
    if batches is None:
        try:
            batches = calibration_batches(base_dir, family, max_len=min(128, model.dims.max_positions))
        except CheckpointError as err:
            log.warning("no calibration text (%s); ranking by weight magnitude", err)
            batches = []
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    if family == DECODER and batches:
        # The decoder has its own objective, so rank by |activation x gradient| of the LM loss.
        method, loss = "taylor", causal_lm_loss
    else:
        method, loss = ("activation" if batches else "magnitude"), None

    def compute():
        return compute_reordering(model, batches, method, loss)

    reordering = cache.get_or_compute(model.dims, method, batches, compute) if cache is not None else compute()
    reordering.apply(model)
    return reordering
