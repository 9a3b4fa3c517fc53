"""From a base name or folder (and optionally an adapter stack) to a supernet, and from there to a subnet folder.

The CLI and the server both go through here, so they slice the same way.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.calibration import calibration_batches
from .errors import ConfigError
from .formats.adapter_stack import load_adapter_stack, read_stack_meta, stack_fingerprint
from .formats.reordering_cache import ReorderingCache
from .formats.storage import fingerprint, load_base, save_subnet
from .formats.teachers import resolve_base
from .nn.supernet import Supernet
from .spec.palette import read_palette
from .spec.subnet_config import SubnetConfig
from .spec.vocab import TASK_OF_FAMILY
from .train.reorder import reorder_by_importance

log = logging.getLogger(__name__)


@dataclass
class OpenSupernet:
    supernet: Supernet
    base_dir: Path
    base_fingerprint: str
    adapters_dir: Path | None
    reordered: bool


def open_supernet(base: str | Path, adapters: str | Path | None = None, reorder: bool = True,
                  reordering_cache: str | Path | None = None) -> OpenSupernet:
    """Load a base; attach its adapter stack (which carries its own reordering), or reorder it by importance.

    ``reordering_cache``: a folder where the importance order is kept, so the next open skips the ranking."""
    base_dir = resolve_base(base)
    model = load_base(base_dir)
    fp = fingerprint(base_dir)
    if adapters is not None:
        supernet = load_adapter_stack(model, Path(adapters), fp)
        return OpenSupernet(supernet, base_dir, fp, Path(adapters), reordered=bool(read_stack_meta(adapters)["reordered"]))
    if reorder:
        cache = ReorderingCache(reordering_cache, fp) if reordering_cache is not None else None
        reorder_by_importance(model, base_dir, cache=cache)
    return OpenSupernet(Supernet(model), base_dir, fp, None, reordered=reorder)


def read_config_arg(value: str) -> str:
    """A config given on the command line: JSON text, or the path of a JSON file; returns the JSON text."""
    text = value.strip()
    if text.startswith("{"):
        return text
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"config: {value!r} is neither JSON (starting with '{{') nor an existing file")
    return path.read_text()


def slice_to_folder(opened: OpenSupernet, cfg: SubnetConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Extract ``cfg`` (parsed by the caller; extraction checks it fits) and save it with the base's tokenizer;
    returns the saved metadata plus timings."""
    dims = opened.supernet.dims
    start = time.perf_counter()
    subnet = opened.supernet.extract(cfg)
    extract_s = time.perf_counter() - start
    provenance = {
        "base": str(opened.base_dir),
        "base_fingerprint": opened.base_fingerprint,
        "adapters": str(opened.adapters_dir) if opened.adapters_dir else None,
        "reordered": opened.reordered,
    }
    meta = save_subnet(subnet, out, tokenizer_from=opened.base_dir, provenance=provenance, overwrite=overwrite)
    teacher = SubnetConfig.maximal(dims).param_count(dims)
    meta["teacher_params"] = {"total": teacher.total, "non_embedding": teacher.non_embedding}
    meta["extract_seconds"] = extract_s
    log.debug("slice metadata: %s", json.dumps(meta))
    return meta


def validation_batches(opened: OpenSupernet, data: str | Path | None = None, max_len: int = 64,
                       limit: int = 256) -> list[dict]:
    """Real inputs to validate an export on: the data's dev split (with labels) if given, else calibration text."""
    family = opened.supernet.dims.family
    max_len = min(max_len, opened.supernet.dims.max_positions)
    if data is None:
        return calibration_batches(opened.base_dir, family, n=16, max_len=max_len)
    from .data.batching import eval_batches
    from .data.examples import load_eval_examples
    from .data.readers import ReadOptions
    from .formats.adapter_stack import read_stack_meta

    task = TASK_OF_FAMILY[family]
    trained_on = (read_stack_meta(opened.adapters_dir).get("data") or {}) if opened.adapters_dir else {}
    # Only the dev split is read, its labels numbered as the model was trained.
    dev, _ = load_eval_examples(opened.base_dir, data, task, max_len, family, trained_on.get("label_names"),
                                ReadOptions.from_dict(trained_on.get("read")))
    # Evenly spaced, not a prefix: prepared splits may be sorted by label.
    n = len(dev.ids)
    keep = sorted({round(i * (n - 1) / max(1, limit - 1)) for i in range(min(limit, n))})
    dev.ids = [dev.ids[i] for i in keep]
    dev.labels = [dev.labels[i] for i in keep] if dev.labels else None
    return eval_batches(dev, 32)


def expected_quality(adapters: Path | None, cfg: SubnetConfig) -> dict[str, Any] | None:
    """The palette table's row for ``cfg`` (accuracy or loss measured at training time), if there is one."""
    table = read_palette(adapters)
    if table is None:
        return None
    row = next((r for r in table["configs"] if r["key"] == cfg.key), None)
    return None if row is None else {table["metric"]: row[table["metric"]], "data_fingerprint": table["data_fingerprint"]}


def device_fields(opened: OpenSupernet) -> dict[str, Any]:
    """What a device needs beside the graph to use an artifact: label names, the longest input the model was
    trained at, how embeddings are pooled and the tokenizer's special ids (from the stack and the base's configs)."""
    dims = opened.supernet.dims
    meta = read_stack_meta(opened.adapters_dir) if opened.adapters_dir is not None else {}
    labels = (meta.get("data") or {}).get("label_names")
    if dims.num_labels and (not labels or len(labels) != dims.num_labels):
        labels = [f"LABEL_{i}" for i in range(dims.num_labels)]
    trained_len = (meta.get("train_settings") or {}).get("max_len")
    special: dict[str, Any] = {"pad_token_id": dims.pad_token_id}
    for name in ("config.json", "generation_config.json"):  # generation_config wins, as in transformers
        path = opened.base_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            special.update({k: data[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if data.get(k) is not None})
    return {
        "labels": labels if dims.num_labels else None,
        "max_seq_len": min(trained_len or dims.max_positions, dims.max_positions),
        "pooling": "mean" if dims.family == "encoder" else None,
        # encoders were trained on the tokenizer's own template ([CLS] ... [SEP]); decoders on raw ids
        "tokenizer": {**special, "add_special_tokens": dims.family == "encoder"},
    }


def export_to_folder(opened: OpenSupernet, cfg: SubnetConfig, out: str | Path, precision: str = "fp32",
                     data: str | Path | None = None) -> dict[str, Any]:
    """Slice, merge, export, validate (and quantise) ``cfg`` into an artifact folder; returns its manifest.
    ``cfg`` is parsed by the caller; extraction checks that it fits the base."""
    from .onnx.export import build_artifact
    from .onnx.quiet import quiet_build_logs

    quiet_build_logs()

    timings = {}
    start = time.perf_counter()
    subnet = opened.supernet.extract(cfg)
    timings["slice_merge_s"] = time.perf_counter() - start
    extra = {
        "base_fingerprint": opened.base_fingerprint,
        # the stack by content, never by path: a manifest is served to devices and must not expose server folders
        "adapters": {"fingerprint": stack_fingerprint(opened.adapters_dir)} if opened.adapters_dir else None,
        "expected_quality": expected_quality(opened.adapters_dir, cfg),
        "slice_timings": timings,
        "device": device_fields(opened),
    }
    return build_artifact(subnet, Path(out), validation_batches(opened, data), tokenizer=opened.base_dir,
                          precision=precision, extra=extra)
