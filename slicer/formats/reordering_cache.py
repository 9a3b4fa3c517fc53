"""Importance reorderings kept on disk, one safetensors file per (base, calibration text, method).

Ranking SmolLM2-135M on its calibration text takes about 30 s on a CPU, and a server that serves a base without
adapters would repeat it at every start. The key covers everything the ranking reads: the base's fingerprint,
the method and the calibration tokens themselves, so another tokenizer or calibration text never reuses a stale
order. A cached order is checked like any saved one (a permutation of the model's units); a damaged file is
recomputed, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..nn.importance import Reordering
from ..paths import data_home
from ..spec.dims import ModelDims
from .checkpoint import read_safetensors

log = logging.getLogger(__name__)
CACHE_SUBDIR = "reorderings"
RANKING_VERSION = "1"  # bump when importance scores change, so orders cached by older code are not reused


def reordering_key(base_fingerprint: str, method: str, batches: list[dict[str, torch.Tensor]]) -> str:
    h = hashlib.sha256(f"{RANKING_VERSION}\0{base_fingerprint}\0{method}".encode())
    for batch in batches:
        for name in sorted(batch):
            t = batch[name].detach().cpu().contiguous()
            h.update(f"\0{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def default_reordering_cache() -> Path:
    """Where the command line keeps reorderings: ``reorderings/`` in the data home."""
    return data_home() / CACHE_SUBDIR


class ReorderingCache:
    def __init__(self, folder: str | Path, base_fingerprint: str) -> None:
        self.folder, self.base_fingerprint = Path(folder), base_fingerprint

    def get_or_compute(self, dims: ModelDims, method: str, batches: list[dict[str, torch.Tensor]],
                       compute: Callable[[], Reordering]) -> Reordering:
        path = self.folder / f"{reordering_key(self.base_fingerprint, method, batches)}.safetensors"
        if path.is_file():
            try:
                return Reordering.from_tensors(read_safetensors(path), dims)
            except CheckpointError as err:
                log.warning("cached reordering %s is damaged (%s); computing it again", path, err)
        reordering = compute()
        self._write(path, reordering)
        return reordering

    def _write(self, path: Path, reordering: Reordering) -> None:
        """Write through a temporary file and a rename, so readers see a whole file or none. A cache that cannot be
        written (read-only store, full disk) costs the next start its ranking time, nothing else."""
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.stem[:16]}.", suffix=".incomplete")
            os.close(fd)
            save_file({k: v.contiguous() for k, v in reordering.to_tensors().items()}, tmp)
            os.replace(tmp, path)
        except OSError as err:
            log.warning("could not cache the reordering in %s (%s)", self.folder, err)
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
