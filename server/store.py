"""The store: which models are served (a base and optionally an adapter stack each), their artifact cache
and metadata. ``models.json`` lists the models; the default store is prepared on first start."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from slicer.errors import ConfigError, TeacherError
from slicer.paths import safe_join
from slicer.teachers import list_teachers, prepare_teacher

log = logging.getLogger(__name__)
MODELS_FILE = "models.json"
DEFAULT_PALETTE = Path(__file__).resolve().parents[1] / "palettes" / "minilm-movie-reviews" / "adapters"


@dataclass(frozen=True)
class ServedModel:
    name: str
    base: str  # a teacher name or a checkpoint folder
    adapters: Path | None
    description: str = ""


def load_models(root: Path) -> dict[str, ServedModel]:
    path = Path(root) / MODELS_FILE
    try:
        items = json.loads(path.read_text())["models"]
    except (OSError, KeyError, json.JSONDecodeError) as err:
        raise ConfigError(f"store {root}: cannot read {MODELS_FILE} ({err})") from None
    models = {}
    for item in items:
        adapters = safe_join(Path(root), item["adapters"]) if item.get("adapters") else None
        models[item["name"]] = ServedModel(item["name"], item["base"], adapters, item.get("description", ""))
    return models


def prepare_default_store(root: Path) -> None:
    """MiniLM with the shipped sentiment palette, and SmolLM2 when it is prepared. Idempotent."""
    root = Path(root)
    if (root / MODELS_FILE).is_file():
        return
    root.mkdir(parents=True, exist_ok=True)
    prepare_teacher("minilm")
    models = []
    if DEFAULT_PALETTE.is_dir():
        dest = root / "adapters" / "minilm-movie-reviews"
        shutil.copytree(DEFAULT_PALETTE, dest, dirs_exist_ok=True)
        models.append({"name": "minilm-sentiment", "base": "minilm", "adapters": "adapters/minilm-movie-reviews",
                       "description": "MiniLM sentiment classifier palette (MLFS, movie reviews)"})
    models.append({"name": "minilm", "base": "minilm", "adapters": None,
                   "description": "MiniLM sentence embeddings, sliced from the pretrained teacher"})
    try:
        if any(t.name == "smollm2" and t.prepared for t in list_teachers()):
            models.append({"name": "smollm2", "base": "smollm2", "adapters": None,
                           "description": "SmolLM2-135M, sliced from the pretrained teacher"})
    except TeacherError:
        pass
    (root / MODELS_FILE).write_text(json.dumps({"models": models}, indent=2))
    log.info("prepared the default store at %s with %s", root, [m["name"] for m in models])
