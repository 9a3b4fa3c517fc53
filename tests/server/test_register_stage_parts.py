"""Registering a /2 adapter stack (stage ranks, vector deltas) over HTTP: served, and its artifact computes the
subnet with every part merged (issue 17)."""

from __future__ import annotations

import httpx
import numpy as np
import torch
from model_inputs import randomize_adapters
from test_server_operations import upload

from slicer.formats.adapter_stack import save_adapter_stack
from slicer.formats.storage import fingerprint, load_base
from slicer.nn.adapters import recommended
from slicer.nn.supernet import Supernet
from slicer.slicing import open_supernet
from slicer.spec.subnet_config import SubnetConfig


def test_a_stack_with_vector_deltas_registers_and_its_artifact_merges_them(server, store, tmp_path):
    base_dir = store / "tiny-bert"
    net = Supernet(load_base(base_dir), recommended(rank=2)).eval()
    randomize_adapters(net, 4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for deltas in net.deltas.values():
            for d in deltas.deltas.values():
                d.copy_(0.2 * torch.randn(d.shape, generator=g))
    net.set_stage(2)
    save_adapter_stack(net, tmp_path / "stack", fingerprint(base_dir))
    r = upload(server, "tiny-parts", tmp_path / "stack", str(base_dir))
    assert r.status_code == 201, r.text
    got = httpx.post(f"{server}/v1/resolve", timeout=300,
                     json={"model": "tiny-parts", "budget": {"precision": "fp32", "max_memory_mb": 1000}}).json()
    import onnxruntime as ort

    sess = ort.InferenceSession(httpx.get(server + got["url"]).content, providers=["CPUExecutionProvider"])
    ids = np.array([[2, 5, 9, 11, 3]])
    onnx_out = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})[0]
    cfg = SubnetConfig.from_dict(got["config"])
    opened = open_supernet(str(base_dir), tmp_path / "stack")
    assert opened.supernet.deltas  # the vector deltas came back with the stack
    with torch.no_grad():
        ref = opened.supernet.extract(cfg)(input_ids=torch.tensor(ids)).pooled.numpy()
        for deltas in opened.supernet.deltas.values():
            deltas.upto = 0  # the same stack without its vector deltas
        without = opened.supernet.extract(cfg)(input_ids=torch.tensor(ids)).pooled.numpy()
    assert np.abs(onnx_out - ref).max() < 1e-4
    assert np.abs(onnx_out - without).max() > 1e-3  # the vector deltas are in the served weights
