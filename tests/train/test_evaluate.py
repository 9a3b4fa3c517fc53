"""Palette evaluation on a tiny encoder: the supernet at a config scores exactly what its extracted subnet scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slicer.data.batching import Examples, eval_batches
from slicer.nn.adapters import AdapterSettings
from slicer.nn.factory import build_model
from slicer.nn.supernet import Supernet
from slicer.spec.search_space import SearchSpace
from slicer.train.evaluate import evaluate_config

pytestmark = pytest.mark.usefixtures("single_thread")


def test_classification_accuracy_and_loss_match_the_extracted_subnet(encoder_dims):
    torch.manual_seed(0)
    model = build_model(encoder_dims)
    model.add_classification_head(2)
    net = Supernet(model, AdapterSettings(rank=4), SearchSpace((2, 4), (2, 4), (32, 64), (encoder_dims.hidden,)))
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(2, encoder_dims.vocab_size, (int(n),), generator=g).tolist() for n in torch.randint(3, 12, (40,), generator=g)]
    batches = eval_batches(Examples(ids, [i % 2 for i in range(40)], "encoder"), 16)
    cfg = net.space.smallest(encoder_dims)

    scores = evaluate_config(net, cfg, batches, "classification")

    subnet = net.extract(cfg)
    logits = torch.cat([subnet(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    assert scores["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert scores["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert net.active == net.max_config  # evaluation leaves the supernet at its maxnet
