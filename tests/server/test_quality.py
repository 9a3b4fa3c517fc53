"""`quality` means one thing in every response: higher is better, named by `quality_metric` (a language model's
palette ranks by negative loss, in GET /v1/models and POST /v1/resolve alike)."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from helpers.store import running_server, save_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from slicer.formats.adapter_stack import save_adapter_stack
from slicer.formats.storage import fingerprint, load_base
from slicer.nn.adapters import AdapterSettings
from slicer.nn.supernet import Supernet
from slicer.slicing import open_supernet
from slicer.spec.palette import write_palette


@pytest.fixture(scope="module")
def lm_server(tmp_path_factory):
    """A store serving a tiny random Llama with an adapter stack whose palette table is in loss (lower = better)."""
    root = tmp_path_factory.mktemp("lm-store")
    base = root / "tiny-llama"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                                 num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=64,
                                 tie_word_embeddings=True)).save_pretrained(base)
    save_tokenizer(base)
    stack = root / "adapters" / "lm"
    supernet = Supernet(load_base(base), AdapterSettings(rank=4)).eval()
    save_adapter_stack(supernet, stack, fingerprint(base))
    opened = open_supernet(str(base), stack)
    configs = list(opened.supernet.space.enumerate(opened.supernet.dims))
    # bigger configs have lower loss; losses are positive, so +loss and -loss cannot be confused
    rows = [{"key": c.key, "loss": 5.0 - c.param_count(opened.supernet.dims).non_embedding / 1e5} for c in configs]
    write_palette(stack, rows, "causal-lm", "test")
    (root / "models.json").write_text(json.dumps({"models": [{"name": "lm", "base": str(base), "adapters": "adapters/lm"}]}))
    with running_server(root) as url:
        yield url, {r["key"]: r["loss"] for r in rows}


def test_a_language_model_palette_reports_negative_loss_in_models_and_resolve(lm_server):
    url, losses = lm_server
    model = httpx.get(f"{url}/v1/models").json()["models"][0]
    assert model["metric"] == "loss" and model["quality_metric"] == "neg_loss"
    quality = {row["key"]: row["quality"] for row in model["palette"]}
    assert quality == {k: -v for k, v in losses.items()}
    assert all(row["quality_metric"] == "neg_loss" for row in model["palette"])
    r = httpx.post(f"{url}/v1/resolve", json={"model": "lm", "budget": {"precision": "fp32", "max_memory_mb": 1000}},
                   timeout=300)
    assert r.status_code == 200, r.text
    est = r.json()["estimates"]
    best = max(quality, key=quality.get)  # the loosest budget gets the lowest-loss config
    assert est["quality"] == quality[best] and est["quality_metric"] == "neg_loss"
    assert next(row for row in model["palette"] if row["key"] == best)["config"] == r.json()["config"]
