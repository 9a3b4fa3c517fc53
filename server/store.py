"""The store: which models are served (a base and optionally an adapter stack each), their artifact cache
and metadata. ``models.json`` lists the models; the default store is prepared on first start."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from slicer import (
    PALETTE_FILE,
    STACK_META,
    STACK_WEIGHTS,
    ConfigError,
    MLFSError,
    OpenSupernet,
    TeacherError,
    atomic_directory,
    list_teachers,
    open_supernet,
    prepare_teacher,
    read_palette,
    safe_join,
)

log = logging.getLogger(__name__)
MODELS_FILE = "models.json"
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
STACK_FILES = (STACK_META, STACK_WEIGHTS, PALETTE_FILE)  # the only files an uploaded stack may contain
DEFAULT_PALETTE = Path(__file__).resolve().parents[1] / "palettes" / "minilm-movie-reviews" / "adapters"


@dataclass(frozen=True)
class ServedModel:
    name: str
    base: str  # a teacher name or a checkpoint folder
    adapters: Path | None
    description: str = ""
    validation_data: str | None = None  # a prepared dataset name: exports are checked on its dev split

def load_models(root: Path) -> dict[str, ServedModel]:
    path = Path(root) / MODELS_FILE
    try:
        items = json.loads(path.read_text())["models"]
    except (OSError, KeyError, json.JSONDecodeError) as err:
        raise ConfigError(f"store {root}: cannot read {MODELS_FILE} ({err})") from None
    models = {}
    for item in items:
        adapters = safe_join(Path(root), item["adapters"]) if item.get("adapters") else None
        models[item["name"]] = ServedModel(item["name"], item["base"], adapters, item.get("description", ""),
                                           item.get("validation_data"))
    return models


def prepare_default_store(root: Path) -> None:
    """MiniLM with the shipped sentiment palette, and SmolLM2 when it is prepared. Idempotent."""
    root = Path(root)
    if (root / MODELS_FILE).is_file():
        return
    root.mkdir(parents=True, exist_ok=True)
    prepare_teacher("minilm")
    models: dict[str, ServedModel] = {}
    if DEFAULT_PALETTE.is_dir():
        dest = root / "adapters" / "minilm-movie-reviews"
        shutil.copytree(DEFAULT_PALETTE, dest, dirs_exist_ok=True)
        models["minilm-sentiment"] = ServedModel("minilm-sentiment", "minilm", dest,
                                                 "MiniLM sentiment classifier palette (MLFS, movie reviews)",
                                                 _prepared_dataset("movie-reviews"))
    models["minilm"] = ServedModel("minilm", "minilm", None, "MiniLM sentence embeddings, sliced from the pretrained teacher")
    if "smollm2" in prepared_teacher_names():
        models["smollm2"] = ServedModel("smollm2", "smollm2", None, "SmolLM2-135M, sliced from the pretrained teacher")
    write_models(root, models)
    log.info("prepared the default store at %s with %s", root, list(models))


def _prepared_dataset(name: str) -> str | None:
    """Prepare a built-in dataset (seconds, offline) so exports are validated on its dev split; None if it fails."""
    from slicer import prepare_dataset

    try:
        prepare_dataset(name)
    except MLFSError as err:
        log.warning("could not prepare %s (%s); exports of this model are validated on calibration text", name, err)
        return None
    return name


def prepared_teacher_names() -> set[str]:
    try:
        return {t.name for t in list_teachers() if t.prepared}
    except TeacherError:
        return set()


def write_models(root: Path, models: dict[str, ServedModel]) -> None:
    """Rewrite models.json atomically (temporary file, fsync, rename)."""
    resolved = root.resolve()
    items = [{"name": m.name, "base": m.base, "description": m.description, "validation_data": m.validation_data,
              "adapters": None if m.adapters is None else str(m.adapters.resolve().relative_to(resolved))}
             for m in models.values()]
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{MODELS_FILE}.")
    with os.fdopen(fd, "w") as f:
        json.dump({"models": items}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MODELS_FILE)


def register_adapter_stack(root: Path, name: str, base: str, files: dict[str, Path],
                           description: str = "") -> tuple[ServedModel, OpenSupernet]:
    """Add an adapter stack to the store as model ``name``; it is opened against ``base`` first.

    Only the stack's own files are accepted; the weights must be safetensors (a header is parsed, nothing is
    unpickled) and every tensor must have the shape the base needs. Nothing is added unless all of it holds.
    Returns the served model and the supernet opened to check it, so the caller need not load it again.
    """
    from safetensors import safe_open

    root = Path(root)
    if not MODEL_NAME.match(name):
        raise ConfigError(f"model name {name!r}: 1-64 lowercase letters, digits, '.', '_' or '-'")
    models = load_models(root)
    if name in models:
        raise ConfigError(f"model {name!r} already exists; pick another name")
    unknown = set(files) - set(STACK_FILES)
    missing = {STACK_META, STACK_WEIGHTS} - set(files)
    if unknown or missing:
        raise ConfigError(f"an adapter stack is {STACK_META} + {STACK_WEIGHTS} (+ {PALETTE_FILE}); "
                          f"missing {sorted(missing)}, not allowed {sorted(unknown)}")
    dest = safe_join(root, f"adapters/{name}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(dest) as work:
        for fname, src in files.items():
            shutil.copyfile(src, work / fname)
        try:
            with safe_open(str(work / STACK_WEIGHTS), framework="numpy"):
                pass
        except Exception as err:  # the safetensors parser raises several types for a bad header
            raise ConfigError(f"{STACK_WEIGHTS} is not a valid safetensors file ({err})") from None
        if PALETTE_FILE in files:
            read_palette(work)  # raises ConfigError unless it is a palette table
        try:
            opened = open_supernet(base, work)  # shapes, base fingerprint, search space: every mismatch raises
        except MLFSError as err:
            raise ConfigError(f"the adapter stack does not fit base {base!r}: {err}") from None
    served = ServedModel(name, base, dest, description)
    write_models(root, {**models, name: served})
    log.info("registered adapter stack %s on %s", name, base)
    return served, dataclasses.replace(opened, adapters_dir=dest)
