"""Client SDK fixtures: a store serving a tiny classifier (``tiny-cls``, labels negative/positive) beside the
plain tiny BERT, and a real uvicorn server over it."""

from __future__ import annotations

import json

import pytest


def make_classifier_store(root):
    """tiny_store's BERT plus an adapter stack with a two-label head, served as ``tiny-cls``."""
    import torch
    from tiny_store import make_store

    from slicer.adapter_stack import save_adapter_stack
    from slicer.storage import fingerprint, load_base
    from slicer.supernet import Supernet

    make_store(root)
    base = root / "tiny-bert"
    torch.manual_seed(1)
    model = load_base(base)
    model.add_classification_head(2)
    supernet = Supernet(model)
    with torch.no_grad():  # a head with some weight, so the configs' answers differ visibly
        for name, p in supernet.named_parameters():
            if "head" in name:
                p.normal_(0, 2.0)
    supernet.set_stage(2)
    save_adapter_stack(supernet, root / "cls-stack", fingerprint(base),
                       extra={"task": "classification", "data": {"label_names": ["negative", "positive"]},
                              "train_settings": {"max_len": 32}})
    models = json.loads((root / "models.json").read_text())["models"]
    models.append({"name": "tiny-cls", "base": str(base), "adapters": str(root / "cls-stack")})
    (root / "models.json").write_text(json.dumps({"models": models}))
    return root


@pytest.fixture(scope="module")
def cls_store(tmp_path_factory):
    return make_classifier_store(tmp_path_factory.mktemp("cls-store"))


@pytest.fixture(scope="module")
def cls_server(cls_store):
    from tiny_store import running_server

    with running_server(cls_store, build_wait_s=120) as url:
        yield url
