"""Client SDK test store: a store serving a tiny classifier (``tiny-cls``, labels negative/positive) beside the
plain tiny BERT."""

from __future__ import annotations

import json


def make_classifier_store(root):
    """helpers.store's BERT plus an adapter stack with a two-label head, served as ``tiny-cls``."""
    import torch

    from helpers.store import make_store
    from slicer.formats.adapter_stack import save_adapter_stack
    from slicer.formats.storage import fingerprint, load_base
    from slicer.nn.supernet import Supernet

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
                       task="classification", data={"label_names": ["negative", "positive"]},
                       train_settings={"max_len": 32})
    models = json.loads((root / "models.json").read_text())["models"]
    models.append({"name": "tiny-cls", "base": str(base), "adapters": str(root / "cls-stack")})
    (root / "models.json").write_text(json.dumps({"models": models}))
    return root
