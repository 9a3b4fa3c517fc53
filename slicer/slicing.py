"""From a base name or folder (and optionally an adapter stack) to a supernet, and from there to a subnet folder.

The CLI and the server both go through here, so they slice the same way.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .formats.adapter_stack import StackMeta, load_adapter_stack, stack_fingerprint
from .formats.generation import TextGeneration
from .formats.reordering_cache import ReorderingCache
from .formats.storage import fingerprint, load_base, save_subnet
from .formats.teachers import resolve_base
from .nn.supernet import Supernet
from .spec.palette import read_palette
from .spec.subnet_config import SubnetConfig
from .train.reorder import reorder_by_importance

log = logging.getLogger(__name__)


@dataclass
class OpenSupernet:
    supernet: Supernet
    base_dir: Path
    base_fingerprint: str
    adapters_dir: Path | None
    reordered: bool

    @functools.cached_property
    def generation(self) -> dict[str, Any] | None:
        """A decoder's text-generation settings (``TextGeneration``) for its manifests, read once: parsing the
        teacher's tokenizer.json for them took 0.1 s of every SmolLM2 build."""
        if self.supernet.dims.family != "decoder":
            return None
        return TextGeneration.from_folder(self.base_dir).to_dict()


def open_supernet(base: str | Path, adapters: str | Path | None = None, reorder: bool = True,
                  reordering_cache: str | Path | None = None) -> OpenSupernet:
    """Load a base; attach its adapter stack (which carries its own reordering), or reorder it by importance.

    ``reordering_cache``: a folder where the importance order is kept, so the next open skips the ranking."""
    base_dir = resolve_base(base)
    model = load_base(base_dir)
    fp = fingerprint(base_dir)
    if adapters is not None:
        supernet = load_adapter_stack(model, Path(adapters), fp)
        return OpenSupernet(supernet, base_dir, fp, Path(adapters), reordered=StackMeta.read(adapters).reordered)
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


def validation_set(opened: OpenSupernet, data: str | Path | None = None, max_len: int = 64):
    """Real inputs every build of this model is checked on (tokenised here, once; keep it for the next builds):
    a few of the data's dev examples at two lengths and its whole dev split for the int8 gate, else calibration text."""
    from .onnx.validate import build_validation_set

    dims = opened.supernet.dims
    # Labels numbered, and the data read, as the model was trained (the adapter stack records both).
    trained_on = StackMeta.read(opened.adapters_dir).data if opened.adapters_dir else {}
    return build_validation_set(opened.base_dir, dims.family, data, min(max_len, dims.max_positions), trained_on)


def expected_quality(adapters: Path | None, cfg: SubnetConfig) -> dict[str, Any] | None:
    """The palette table's row for ``cfg`` (accuracy or loss measured at training time), if there is one."""
    table = read_palette(adapters)
    if table is None:
        return None
    row = table.row(cfg.key)
    return None if row is None else {table.metric: row.get(table.metric), "data_fingerprint": table.data_fingerprint}


def device_fields(opened: OpenSupernet) -> dict[str, Any]:
    """What a device needs beside the graph to use an artifact: label names, the longest input the model was
    trained at, how embeddings are pooled and the tokenizer's special ids (from the stack and the base's configs)."""
    dims = opened.supernet.dims
    meta = StackMeta.read(opened.adapters_dir) if opened.adapters_dir is not None else None
    labels = meta.label_names if meta else None
    if dims.num_labels and (not labels or len(labels) != dims.num_labels):
        labels = [f"LABEL_{i}" for i in range(dims.num_labels)]
    trained_len = meta.trained_max_len if meta else None
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


def build_subnet_artifact(opened: OpenSupernet, cfg: SubnetConfig, folder: Path, validation, options=None) -> dict[str, Any]:
    """Slice, merge, write the graph, validate (and quantise) ``cfg`` into the empty ``folder``; returns the manifest.

    One pass: the caller owns the folder's atomic rename (the artifact cache, or ``export_to_folder``)."""
    from .onnx.build import BUILD_THREADS, BuildOptions, build_artifact, torch_threads
    from .onnx.quiet import quiet_build_logs

    quiet_build_logs()
    options = options or BuildOptions()
    with torch_threads(BUILD_THREADS):
        start = time.perf_counter()
        subnet = opened.supernet.extract(cfg)
        extra = {
            "base_fingerprint": opened.base_fingerprint,
            # the stack by content, never by path: a manifest is served to devices and must not expose server folders
            "adapters": {"fingerprint": stack_fingerprint(opened.adapters_dir)} if opened.adapters_dir else None,
            "expected_quality": expected_quality(opened.adapters_dir, cfg),
            "slice_timings": {"slice_merge_s": time.perf_counter() - start},
            "device": device_fields(opened),
            # decoders: chat template, special and stop tokens, sampling defaults (slicer.formats.generation)
            "generation": opened.generation,
        }
        return build_artifact(subnet, folder, validation, options, tokenizer=opened.base_dir, extra=extra)


def warm_up_builds(opened: OpenSupernet, validation, options=None) -> dict[str, float]:
    """Pay this process's one-time build costs at start-up (``slicer.onnx.build.warm_up``) on the search space's
    smallest config, so the first cold build of a request costs what every later one does; nothing is written.
    Returns the seconds per phase, ``total_s`` included."""
    from .onnx.build import BUILD_THREADS, BuildOptions, torch_threads, warm_up
    from .onnx.quiet import quiet_build_logs

    quiet_build_logs()
    start = time.perf_counter()
    sup = opened.supernet
    with torch_threads(BUILD_THREADS):
        subnet = sup.extract(sup.space.smallest(sup.dims))
        timings = {"slice_merge_s": time.perf_counter() - start}
        timings.update(warm_up(subnet, validation, options or BuildOptions()))
    timings["total_s"] = time.perf_counter() - start
    return timings


def export_to_folder(opened: OpenSupernet, cfg: SubnetConfig, out: str | Path, options=None,
                     data: str | Path | None = None) -> dict[str, Any]:
    """One config's artifact written atomically into folder ``out`` (``mlfs export``); returns its manifest.
    ``cfg`` is parsed by the caller; extraction checks that it fits the base."""
    from .paths import atomic_directory

    validation = validation_set(opened, data)
    with atomic_directory(Path(out)) as folder:
        return build_subnet_artifact(opened, cfg, folder, validation, options)
