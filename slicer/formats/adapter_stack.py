"""Adapter stacks on disk: safetensors for the numbers, JSON metadata that fingerprints the base.

A stack is only valid on the base it was trained on, with the same rank, targets, stages and shapes.
Loading it anywhere else fails loudly and says what differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import AdapterMismatchError, CheckpointError
from ..nn.adapters import AdapterSettings
from ..nn.importance import Reordering
from ..nn.model import SlicedTransformer
from ..nn.supernet import Supernet, adapter_shapes
from ..paths import atomic_directory, new_file_mode
from ..spec.search_space import SearchSpace
from .checkpoint import read_json, read_safetensors

STACK_FORMAT = "mlfs-adapters/1"
STACK_META = "adapter_config.json"
STACK_WEIGHTS = "adapters.safetensors"
REORDER_PREFIX = "reordering."


def save_adapter_stack(
    supernet: Supernet,
    out: str | Path,
    base_fingerprint: str,
    reordering: Reordering | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out = Path(out)
    s = supernet.settings
    meta = {
        "format": STACK_FORMAT,
        "base_fingerprint": base_fingerprint,
        "base_dims": supernet.dims.base().to_dict(),
        "num_labels": supernet.dims.num_labels,
        "rank": s.rank,
        "alpha": s.alpha,
        "targets": list(s.targets),
        "stages": s.stages,
        "stage": supernet.stage,
        "search_space": supernet.space.to_dict(),
        "reordered": reordering is not None,
        **(extra or {}),
    }
    state = {**supernet.adapter_state(), **supernet.head_state()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if reordering is not None:
        tensors.update({REORDER_PREFIX + k: v.contiguous() for k, v in reordering.to_tensors().items()})
    with atomic_directory(out) as tmp:
        save_file(tensors, str(tmp / STACK_WEIGHTS))
        new_file_mode(tmp / STACK_WEIGHTS)  # safetensors leaves 0600
        (tmp / STACK_META).write_text(json.dumps(meta, indent=2))
    return meta


def read_stack_meta(folder: str | Path) -> dict[str, Any]:
    """An adapter stack's metadata (rank, targets, stages, task, training settings, ...), format-checked."""
    meta = read_json(Path(folder) / STACK_META)
    if meta.get("format") != STACK_FORMAT:
        raise CheckpointError(f"{Path(folder) / STACK_META}: format {meta.get('format')!r}, expected {STACK_FORMAT!r}")
    return meta


def load_adapter_stack(base: SlicedTransformer, folder: str | Path, base_fingerprint: str) -> Supernet:
    """Reorder ``base`` as the stack was trained, attach the stack and load it; every mismatch is an error.

    The global torch RNG is left as it was (building adapters draws from it before they are overwritten).
    """
    with torch.random.fork_rng():
        return _load_adapter_stack(base, Path(folder), base_fingerprint)


def _load_adapter_stack(base: SlicedTransformer, folder: Path, base_fingerprint: str) -> Supernet:
    meta = read_stack_meta(folder)
    if meta["base_fingerprint"] != base_fingerprint:
        raise AdapterMismatchError(
            f"adapters in {folder} were trained on base {meta['base_fingerprint'][:12]}, "
            f"but this base is {base_fingerprint[:12]}; load them with the base they were trained on"
        )
    if meta["base_dims"] != base.dims.base().to_dict():
        raise AdapterMismatchError(f"adapters in {folder} were made for other model dimensions: {meta['base_dims']}")
    settings = AdapterSettings(meta["rank"], tuple(meta["targets"]), meta["stages"], meta.get("alpha"))
    tensors = read_safetensors(folder / STACK_WEIGHTS)
    reorder = {k[len(REORDER_PREFIX):]: v for k, v in tensors.items() if k.startswith(REORDER_PREFIX)}
    # Check everything before touching the caller's base model.
    num_labels = meta.get("num_labels", 0)
    expected = adapter_shapes(base.dims, settings)
    if num_labels:
        expected.update({"head.weight": (num_labels, base.dims.hidden), "head.bias": (num_labels,)})
    got = {k: tuple(v.shape) for k, v in tensors.items() if not k.startswith(REORDER_PREFIX)}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        detail = f"missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {[(k, got[k], expected[k]) for k in wrong[:3]]}"
        raise AdapterMismatchError(f"adapters in {folder} do not fit this base: {detail}")
    reordering = Reordering.from_tensors(reorder, base.dims) if reorder else None
    space = SearchSpace.from_dict(meta["search_space"]).validate(base.dims)
    if reordering is not None:
        reordering.apply(base)
    if num_labels:
        base.add_classification_head(num_labels)
    supernet = Supernet(base, settings, space)
    with torch.no_grad():
        for name, value in {**supernet.adapter_state(), **supernet.head_state()}.items():
            value.copy_(tensors[name])
    supernet.set_stage(min(meta.get("stage", 0), settings.stages - 1))
    return supernet


def stack_fingerprint(folder: str | Path) -> str:
    """sha256 over an adapter stack's metadata and tensors: part of every artifact key built from it."""
    h = hashlib.sha256()
    for name in (STACK_META, STACK_WEIGHTS):
        path = Path(folder) / name
        if not path.is_file():
            raise CheckpointError(f"missing file: {path}")
        h.update(name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()
