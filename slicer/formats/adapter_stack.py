"""Adapter stacks on disk: safetensors for the numbers, JSON metadata that fingerprints the base.

A stack is only valid on the base it was trained on, with the same rank, targets, stages and shapes.
Loading it anywhere else fails loudly and says what differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import AdapterMismatchError, CheckpointError, ConfigError
from ..nn.adapters import AdapterSettings
from ..nn.importance import Reordering
from ..nn.model import SlicedTransformer
from ..nn.supernet import Supernet, adapter_shapes
from ..paths import atomic_directory, new_file_mode
from ..spec.dims import ModelDims
from ..spec.search_space import SearchSpace
from ..spec.vocab import TASKS, Task
from .checkpoint import read_manifest, read_safetensors

STACK_FORMAT = "mlfs-adapters/2"  # /2 adds stage ranks, vector deltas and head deltas
READABLE_FORMATS = ("mlfs-adapters/1", STACK_FORMAT)  # /1: low-rank pairs at one rank and the head alone
STACK_META = "adapter_config.json"
STACK_WEIGHTS = "adapters.safetensors"
REORDER_PREFIX = "reordering."
_STACK_FIELDS = frozenset({  # the keys StackMeta reads; any other is kept in ``extra``
    "format", "base_fingerprint", "base_dims", "num_labels", "rank", "alpha", "targets", "stages", "stage_ranks",
    "vector_deltas", "head_deltas", "stage", "search_space", "reordered", "task", "data", "train_settings"})


@dataclass(frozen=True)
class StackMeta:
    """``adapter_config.json``: what a stack fits (base fingerprint and dims, adapter settings, search space, head)
    and what it was trained on. ``write``/``read`` are its one writer and reader; ``read`` accepts every format in
    ``READABLE_FORMATS`` and turns a missing or malformed field into a CheckpointError naming the file."""

    base_fingerprint: str
    base_dims: ModelDims
    settings: AdapterSettings
    search_space: SearchSpace
    num_labels: int = 0
    stage: int = 0
    reordered: bool = False
    task: Task | None = None  # written by training; older or hand-made stacks may lack it
    data: dict[str, Any] = field(default_factory=dict)  # what it was trained on: label_names, read options, ...
    train_settings: dict[str, Any] = field(default_factory=dict)  # TrainSettings as written (a record, not parsed)
    extra: dict[str, Any] = field(default_factory=dict)  # any other key (notes, provenance), kept as written
    format: str = STACK_FORMAT

    @property
    def label_names(self) -> list[str] | None:
        return self.data.get("label_names")

    @property
    def trained_max_len(self) -> int | None:
        """The longest input the stack was trained at, if recorded."""
        return self.train_settings.get("max_len")

    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        # What it was trained on is written only when known (stacks built outside training have none of it).
        trained = {"task": self.task, "data": self.data or None, "train_settings": self.train_settings or None}
        return {
            "format": self.format, "base_fingerprint": self.base_fingerprint, "base_dims": self.base_dims.to_dict(),
            "num_labels": self.num_labels, "rank": s.rank, "alpha": s.alpha, "targets": list(s.targets),
            "stages": s.stages, "stage_ranks": list(s.ranks), "vector_deltas": s.vectors, "head_deltas": s.head,
            "stage": self.stage, "search_space": self.search_space.to_dict(), "reordered": self.reordered,
            **{k: v for k, v in trained.items() if v is not None}, **self.extra,
        }

    def write(self, folder: str | Path) -> dict[str, Any]:
        data = self.to_dict()
        (Path(folder) / STACK_META).write_text(json.dumps(data, indent=2))
        return data

    @classmethod
    def read(cls, folder: str | Path) -> StackMeta:
        path = Path(folder) / STACK_META
        data = read_manifest(path, READABLE_FORMATS)
        try:
            ranks = tuple(data.get("stage_ranks") or ())
            uniform = len(set(ranks)) <= 1  # equal ranks are ``rank`` for every stage; /1 stacks list none
            settings = AdapterSettings(data["rank"], tuple(data["targets"]), data["stages"], data.get("alpha"),
                                       stage_ranks=() if uniform else ranks,
                                       vectors=bool(data.get("vector_deltas", False)),
                                       head=bool(data.get("head_deltas", False)))
            task = data.get("task")
            if task is not None and task not in TASKS:
                raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")
            if not isinstance(data["base_fingerprint"], str):
                raise TypeError(f"base_fingerprint must be a string, got {data['base_fingerprint']!r}")
            meta = cls(data["base_fingerprint"], ModelDims.from_dict(data["base_dims"]), settings,
                       SearchSpace.from_dict(data["search_space"]), int(data.get("num_labels") or 0),
                       int(data.get("stage") or 0), bool(data["reordered"]), task, dict(data.get("data") or {}),
                       dict(data.get("train_settings") or {}), {k: v for k, v in data.items() if k not in _STACK_FIELDS},
                       data["format"])
        except KeyError as err:
            raise CheckpointError(f"{path}: not an adapter stack description (missing field {err})") from None
        except (TypeError, ValueError) as err:  # ConfigError is a ValueError: a field has a wrong value
            raise CheckpointError(f"{path}: not an adapter stack description ({err})") from None
        return meta


def save_adapter_stack(
    supernet: Supernet,
    out: str | Path,
    base_fingerprint: str,
    reordering: Reordering | None = None,
    task: Task | None = None,
    data: dict[str, Any] | None = None,
    train_settings: dict[str, Any] | None = None,
) -> StackMeta:
    """Write ``supernet``'s adapters and head (and ``reordering``) as a stack folder; ``task``, ``data`` and
    ``train_settings`` record what it was trained on. Returns the metadata written."""
    out = Path(out)
    meta = StackMeta(base_fingerprint, supernet.dims.base(), supernet.settings, supernet.space,
                     supernet.dims.num_labels, supernet.stage, reordering is not None, task, data or {},
                     train_settings or {})
    state = {**supernet.adapter_state(), **supernet.head_state()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if reordering is not None:
        tensors.update({REORDER_PREFIX + k: v.contiguous() for k, v in reordering.to_tensors().items()})
    with atomic_directory(out) as tmp:
        save_file(tensors, str(tmp / STACK_WEIGHTS))
        new_file_mode(tmp / STACK_WEIGHTS)  # safetensors leaves 0600
        meta.write(tmp)
    return meta


def load_adapter_stack(base: SlicedTransformer, folder: str | Path, base_fingerprint: str) -> Supernet:
    """Reorder ``base`` as the stack was trained, attach the stack and load it; every mismatch is an error.

    The global torch RNG is left as it was (building adapters draws from it before they are overwritten).
    """
    with torch.random.fork_rng():
        return _load_adapter_stack(base, Path(folder), base_fingerprint)


def _load_adapter_stack(base: SlicedTransformer, folder: Path, base_fingerprint: str) -> Supernet:
    meta = StackMeta.read(folder)
    if meta.base_fingerprint != base_fingerprint:
        raise AdapterMismatchError(
            f"adapters in {folder} were trained on base {meta.base_fingerprint[:12]}, "
            f"but this base is {base_fingerprint[:12]}; load them with the base they were trained on"
        )
    if meta.base_dims != base.dims.base():
        raise AdapterMismatchError(f"adapters in {folder} were made for other model dimensions: {meta.base_dims.to_dict()}")
    settings = meta.settings
    tensors = read_safetensors(folder / STACK_WEIGHTS)
    reorder = {k[len(REORDER_PREFIX):]: v for k, v in tensors.items() if k.startswith(REORDER_PREFIX)}
    # Check everything before touching the caller's base model.
    num_labels = meta.num_labels
    expected = adapter_shapes(base.dims.with_labels(num_labels) if num_labels else base.dims, settings)
    if num_labels:
        expected.update({"head.weight": (num_labels, base.dims.hidden), "head.bias": (num_labels,)})
    got = {k: tuple(v.shape) for k, v in tensors.items() if not k.startswith(REORDER_PREFIX)}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        detail = f"missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {[(k, got[k], expected[k]) for k in wrong[:3]]}"
        raise AdapterMismatchError(f"adapters in {folder} do not fit this base: {detail}")
    reordering = Reordering.from_tensors(reorder, base.dims) if reorder else None
    space = meta.search_space.validate(base.dims)
    if reordering is not None:
        reordering.apply(base)
    if num_labels:
        base.add_classification_head(num_labels)
    supernet = Supernet(base, settings, space)
    with torch.no_grad():
        for name, value in {**supernet.adapter_state(), **supernet.head_state()}.items():
            value.copy_(tensors[name])
    supernet.set_stage(min(meta.stage, settings.stages - 1))
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
