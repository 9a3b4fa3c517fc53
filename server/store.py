"""The store: which models are served (a base and optionally an adapter stack each), their artifact cache
and metadata. ``models.json`` lists the models; the default store is prepared on first start."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slicer import (
    PALETTE_FILE,
    STACK_META,
    STACK_WEIGHTS,
    ConfigError,
    MLFSError,
    OpenSupernet,
    StackMeta,
    TeacherError,
    atomic_directory,
    list_teachers,
    open_supernet,
    prepare_teacher,
    read_palette,
    safe_join,
)

from .errors import AlreadyExists, UnknownModel

log = logging.getLogger(__name__)
MODELS_FILE = "models.json"
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
STACK_FILES = (STACK_META, STACK_WEIGHTS, PALETTE_FILE)  # the only files an uploaded stack may contain
DEFAULT_PALETTE = Path(__file__).resolve().parents[1] / "palettes" / "minilm-movie-reviews" / "adapters"
DEFAULT_DECODER_PALETTE = Path(__file__).resolve().parents[1] / "palettes" / "smollm2-python-code" / "adapters"


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
        validation = item.get("validation_data")
        if validation and validation.startswith(f"{VALIDATION_DIR}/"):
            validation = str(safe_join(Path(root), validation))  # a folder in the store, wherever the cwd is
        models[item["name"]] = ServedModel(item["name"], item["base"], adapters, item.get("description", ""),
                                           validation)
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
        models["minilm-sentiment"] = _shipped_palette(root, "minilm-sentiment", "minilm", DEFAULT_PALETTE, "movie-reviews",
                                                      "MiniLM sentiment classifier palette (MLFS, movie reviews)")
    models["minilm"] = ServedModel("minilm", "minilm", None, "MiniLM sentence embeddings, sliced from the pretrained teacher")
    if "smollm2" in prepared_teacher_names():
        if DEFAULT_DECODER_PALETTE.is_dir():
            models["smollm2"] = _shipped_palette(root, "smollm2", "smollm2", DEFAULT_DECODER_PALETTE, "python-code",
                                                 "SmolLM2-135M Python code palette (MLFS, python-code)")
        else:
            models["smollm2"] = ServedModel("smollm2", "smollm2", None, "SmolLM2-135M, sliced from the pretrained teacher")
    write_models(root, models)
    log.info("prepared the default store at %s with %s", root, list(models))


def _shipped_palette(root: Path, name: str, base: str, palette: Path, dataset: str, description: str) -> ServedModel:
    """A palette shipped in the repository, copied into the store (``palettes/<stack>/adapters``) and served with
    exports validated on ``dataset``'s dev split."""
    dest = root / "adapters" / palette.parent.name
    shutil.copytree(palette, dest, dirs_exist_ok=True)
    return ServedModel(name, base, dest, description, _prepared_dataset(dataset))


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


def _store_relative(validation: str | None, resolved_root: Path) -> str | None:
    """A validation folder inside the store as its store-relative name (a dataset name stays as it is)."""
    if validation and Path(validation).is_absolute():
        with contextlib.suppress(ValueError):
            return Path(validation).resolve().relative_to(resolved_root).as_posix()
    return validation


def write_models(root: Path, models: dict[str, ServedModel]) -> None:
    """Rewrite models.json atomically (temporary file, fsync, rename)."""
    resolved = root.resolve()
    items = [{"name": m.name, "base": m.base, "description": m.description,
              "validation_data": _store_relative(m.validation_data, resolved),
              "adapters": None if m.adapters is None else str(m.adapters.resolve().relative_to(resolved))}
             for m in models.values()]
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{MODELS_FILE}.")
    with os.fdopen(fd, "w") as f:
        json.dump({"models": items}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MODELS_FILE)


VALIDATION_DIR = "validation"
VALIDATION_SUFFIXES = (".jsonl", ".csv", ".tsv")


def register_adapter_stack(root: Path, name: str, base: str, files: dict[str, Path], description: str = "",
                           validation: Path | None = None, replace: bool = False,
                           ) -> tuple[ServedModel, OpenSupernet, dict[str, Any]]:
    """Add (or with ``replace``, replace) model ``name``: an adapter stack opened against ``base`` first.

    Only the stack's own files are accepted; the weights must be safetensors (a header is parsed, nothing is
    unpickled) and every tensor must have the shape the base needs. ``validation`` is a dev file
    (``.jsonl``/``.csv``/``.tsv``, read as the stack's training read it) that int8 builds are judged on; a
    ``palette.json`` whose data fingerprint differs from it is refused. Nothing changes unless all of it holds.
    Returns the served model, the supernet opened to check it, and the palette check (:func:`check_palette`).
    """
    from safetensors import safe_open

    root = Path(root)
    if not MODEL_NAME.match(name):
        raise ConfigError(f"model name {name!r}: 1-64 lowercase letters, digits, '.', '_' or '-'")
    models = load_models(root)
    if name in models and not replace:
        raise AlreadyExists(f"model {name!r} already exists; PUT replaces it, DELETE removes it")
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
        with _staged_validation(root, name, validation) as (val_dir, val_ref):
            if validation is None:  # a replaced model keeps its validation data
                val_dir = val_ref = models[name].validation_data if name in models else None
            check = check_palette(work, val_dir)
            if check["verified"] is False and val_dir is not None:
                raise ConfigError(f"{PALETTE_FILE} does not come from the validation data: {check['reason']}")
    served = ServedModel(name, base, dest, description, val_ref)
    write_models(root, {**models, name: served})
    log.info("%s adapter stack %s on %s", "replaced" if name in models else "registered", name, base)
    return served, dataclasses.replace(opened, adapters_dir=dest), check


@contextmanager
def _staged_validation(root: Path, name: str, file: Path | None) -> Iterator[tuple[Path | None, str | None]]:
    """A validation file staged under ``<store>/validation/<name>`` (as ``dev<suffix>``) while the caller checks
    it; kept when the block ends normally. Yields (folder, reference for models.json)."""
    if file is None:
        yield None, None
        return
    suffix = Path(file).suffix.lower()
    if suffix not in VALIDATION_SUFFIXES:
        raise ConfigError(f"validation data must be one of {', '.join(VALIDATION_SUFFIXES)} (a dev split), "
                          f"got {Path(file).name!r}")
    target = safe_join(root, f"{VALIDATION_DIR}/{name}")
    with atomic_directory(target, fsync=False) as work:
        shutil.copyfile(file, work / f"dev{suffix}")
        yield work, str(target)


def attach_validation(root: Path, name: str, file: Path) -> tuple[ServedModel, dict[str, Any]]:
    """Attach a dev file to model ``name`` (refused if its palette's numbers come from other data)."""
    root = Path(root)
    models = load_models(root)
    if name not in models:
        raise UnknownModel(f"unknown model {name!r}; the store serves {sorted(models)}")
    served = models[name]
    with _staged_validation(root, name, file) as (val_dir, ref):
        check = check_palette(served.adapters, val_dir)
        if check["verified"] is False:
            raise ConfigError(f"{PALETTE_FILE} of {name!r} does not come from this validation data: {check['reason']}")
    served = dataclasses.replace(served, validation_data=ref)
    write_models(root, {**models, name: served})
    return served, check


def remove_model(root: Path, name: str) -> None:
    """Stop listing model ``name``; its uploaded stack and validation data (folders inside the store) go too."""
    root = Path(root)
    models = load_models(root)
    if name not in models:
        raise UnknownModel(f"unknown model {name!r}; the store serves {sorted(models)}")
    served = models.pop(name)
    write_models(root, models)
    for folder in (served.adapters, root / VALIDATION_DIR / name):
        if folder is not None and folder.is_dir() and folder.resolve().parent in (
                (root / "adapters").resolve(), (root / VALIDATION_DIR).resolve()):
            shutil.rmtree(folder, ignore_errors=True)
    log.info("removed model %s", name)


def check_palette(adapters: Path | None, validation: str | Path | None) -> dict[str, Any]:
    """Whether a stack's ``palette.json`` numbers come from its validation data: ``verified`` True (same data
    fingerprint), False (other data, or no validation data to check against; ``reason`` says which), or None
    (no palette). The validation split is read as the stack's training read its data."""
    from slicer.data.readers import ClassificationData, ReadOptions, load_eval_split

    palette = read_palette(adapters) if adapters is not None else None
    if palette is None:
        return {"verified": None, "reason": "no palette table", "data": None}
    shown = {k: palette.data.get(k) for k in ("name", "split", "fingerprint", "examples")}
    claimed = palette.data_fingerprint
    if validation is None:
        return {"verified": False, "reason": "no validation data attached to check the palette against", "data": shown}
    meta = StackMeta.read(adapters)
    try:
        dev, _ = load_eval_split(validation, meta.task or "classification", meta.label_names,
                                 ReadOptions.from_dict(meta.data.get("read")))
    except MLFSError as err:
        raise ConfigError(f"the validation data cannot be read as the stack's training data was: {err}") from None
    fp = dev.fingerprint() if isinstance(dev, ClassificationData) else hashlib.sha256(dev.encode()).hexdigest()
    if fp != claimed:
        return {"verified": False, "data": shown,
                "reason": f"the palette's data fingerprint is {str(claimed)[:12]}..., the validation data's {fp[:12]}..."}
    return {"verified": True, "reason": "the palette's data fingerprint matches the validation data", "data": shown}


OPERATOR_TOKEN_FILE = "operator_token"


def ensure_operator_token(root: Path) -> tuple[str, Path, bool]:
    """The store's operator token: ``(token, file, created)``. Generated on first use (``secrets``, 256 bits)
    into ``<store>/operator_token``, readable by its owner only (0600), so a fresh server can take the uploads
    the README shows without a restart."""
    import secrets

    root = Path(root)
    path = root / OPERATOR_TOKEN_FILE
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token, path, False
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{OPERATOR_TOKEN_FILE}.")  # created 0600
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    log.info("generated an operator token in %s", path)
    return token, path, True
