"""Model folders on disk: load a base (HF checkpoint), save and load standalone subnets, fingerprints.

Weights are read from safetensors only (never pickle). Folders are written under a temporary name and
renamed into place, so a failed save leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..nn.factory import build_model
from ..nn.model import SlicedTransformer
from ..paths import atomic_directory, new_file_mode
from ..spec.dims import ModelDims
from ..spec.subnet_config import BYTES_PER_PARAM, SubnetConfig
from .checkpoint import (
    check_state,
    dims_from_hf_config,
    hf_config_or_reason,
    hf_to_ours,
    ours_to_hf,
    read_json,
    read_manifest,
    read_safetensors,
)
from .generation import CHAT_TEMPLATE_FILE, GENERATION_CONFIG_FILE

log = logging.getLogger(__name__)

SUBNET_FORMAT = "mlfs-subnet/1"
SUBNET_META = "mlfs_model.json"
WEIGHTS = "model.safetensors"
# the chat template travels with the tokenizer (transformers reads it from either file)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   CHAT_TEMPLATE_FILE)
HF_SUBDIR = "transformers"


def fingerprint(folder: Path) -> str:
    """sha256 over a base model's config.json and weights: what adapters and artifacts are tied to."""
    h = hashlib.sha256()
    for name in ("config.json", WEIGHTS):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"missing file: {path}")
        h.update(name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def materialise(dims: ModelDims, cfg: SubnetConfig, state: dict[str, torch.Tensor], source: str) -> SlicedTransformer:
    """Build the model ``(dims, cfg)`` around ``state`` without a throwaway random init; shapes are checked."""
    model = build_model(dims, cfg, device="meta")
    check_state(state, model.expected_shapes(), source)
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return model.eval()


def read_dims(folder: str | Path) -> ModelDims:
    """A base folder's architecture from its config.json alone (cheap: validate configs before loading weights)."""
    return dims_from_hf_config(read_json(Path(folder) / "config.json"))


def load_base(folder: str | Path) -> SlicedTransformer:
    """Load a Hugging Face checkpoint folder (config.json + model.safetensors) as an elastic model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"base model folder not found: {folder}")
    dims = read_dims(folder)
    state = hf_to_ours(read_safetensors(folder / WEIGHTS), dims)
    return materialise(dims, SubnetConfig.maximal(dims), state, str(folder / WEIGHTS))


def copy_tokenizer(source: Path | None, dest: Path) -> list[str]:
    copied = []
    if source is not None:
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, dest / name)
                copied.append(name)
    return copied


def subnet_summary(dims: ModelDims, cfg: SubnetConfig) -> dict[str, Any]:
    count = cfg.param_count(dims)
    return {
        "params": {"total": count.total, "embedding": count.embedding, "non_embedding": count.non_embedding},
        "weight_bytes": {p: count.total * b for p, b in BYTES_PER_PARAM.items()},
    }


def check_output_folder(out: str | Path, overwrite: bool) -> Path:
    """Refuse to replace a non-empty folder unless asked to."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise CheckpointError(f"output folder {out} exists and is not empty; choose another or pass --overwrite")
    return out


@dataclass(frozen=True)
class SubnetMeta:
    """``mlfs_model.json``, written last into a subnet folder: the base's dims, the config, sizes and where the
    weights came from. ``write``/``read`` are its one writer and reader (``read`` checks the format)."""

    dims: ModelDims
    config: SubnetConfig
    provenance: dict[str, Any] = field(default_factory=dict)
    transformers_checkpoint: str | None = None  # subfolder with a stock transformers twin, if one can exist
    tokenizer_files: tuple[str, ...] = ()
    transformers_skipped: str | None = None  # why there is no stock transformers twin (shown by mlfs slice)

    def to_dict(self) -> dict[str, Any]:
        return {"format": SUBNET_FORMAT, "family": self.dims.family, "dims": self.dims.to_dict(),
                "config": self.config.to_dict(), "config_key": self.config.key,
                **subnet_summary(self.dims, self.config), "provenance": self.provenance,
                "transformers_checkpoint": self.transformers_checkpoint, "tokenizer_files": list(self.tokenizer_files),
                "transformers_skipped": self.transformers_skipped}

    def write(self, folder: Path) -> dict[str, Any]:
        data = self.to_dict()
        (Path(folder) / SUBNET_META).write_text(json.dumps(data, indent=2))
        return data

    @classmethod
    def read(cls, folder: str | Path) -> SubnetMeta:
        path = Path(folder) / SUBNET_META
        data = read_manifest(path, (SUBNET_FORMAT,))
        try:
            dims = ModelDims.from_dict(data["dims"])
            return cls(dims, SubnetConfig.from_dict(data["config"]), data.get("provenance") or {},
                       data.get("transformers_checkpoint"), tuple(data.get("tokenizer_files") or ()),
                       data.get("transformers_skipped"))
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"{path}: not a subnet description ({err!r})") from None


def save_subnet(
    model: SlicedTransformer,
    out: str | Path,
    tokenizer_from: Path | None = None,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a standalone subnet folder; also a stock-transformers checkpoint when transformers can describe it.

    Returns the metadata written to ``mlfs_model.json`` (``SubnetMeta.to_dict``).
    """
    out = check_output_folder(out, overwrite)
    dims, cfg = model.dims, model.cfg
    with atomic_directory(out) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        tokenizer_files = copy_tokenizer(tokenizer_from, tmp)
        hf_config, skipped = hf_config_or_reason(dims, cfg)
        if hf_config is not None:
            hf_dir = tmp / HF_SUBDIR
            hf_dir.mkdir()
            (hf_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
            save_file(ours_to_hf(state, dims.family), str(hf_dir / WEIGHTS))
            copy_tokenizer(tokenizer_from, hf_dir)
            if tokenizer_from is not None and (Path(tokenizer_from) / GENERATION_CONFIG_FILE).is_file():
                # stop tokens and sampling defaults: transformers' generate() reads them from here
                shutil.copy2(Path(tokenizer_from) / GENERATION_CONFIG_FILE, hf_dir / GENERATION_CONFIG_FILE)
        for weights in tmp.rglob("*.safetensors"):
            new_file_mode(weights)  # safetensors writes 0600; a saved model is as readable as any file
        meta = SubnetMeta(dims, cfg, provenance or {}, HF_SUBDIR if hf_config is not None else None,
                          tuple(tokenizer_files), skipped).write(tmp)
    log.info("saved subnet %s to %s", cfg.describe(), out)
    return meta


def load_subnet(folder: str | Path) -> SlicedTransformer:
    """Load a folder written by ``save_subnet``; shapes are checked against its config."""
    folder = Path(folder)
    meta = SubnetMeta.read(folder)
    cfg = meta.config.validate(meta.dims)
    return materialise(meta.dims, cfg, read_safetensors(folder / WEIGHTS), str(folder / WEIGHTS))
