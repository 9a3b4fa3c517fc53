"""ONNX artifacts end to end: both builders' graphs run at other sizes than they were validated on, decoders generate
token by token with their key/value cache exactly like PyTorch, and wrong requests leave nothing behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slicer.errors import ExportError
from slicer.nn.factory import build_model
from slicer.onnx.build import BuildOptions, build_artifact
from slicer.onnx.validate import ValidationSet, session
from slicer.spec.subnet_config import SubnetConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def padded(dims, rows: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, dims.vocab_size, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, length // 2 :] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if dims.family == "encoder":
        batch["token_type_ids"] = torch.zeros_like(ids)
    return batch


@pytest.mark.parametrize("options", [BuildOptions(mode="fused"), BuildOptions(mode="plain"), BuildOptions(builder="torch")],
                         ids=["direct-fused", "direct-plain", "torch"])
def test_encoder_graph_has_dynamic_batch_and_sequence(encoder_dims, tmp_path, options):
    dims = encoder_dims.with_labels(3)
    torch.manual_seed(0)
    model = build_model(dims, SubnetConfig.parse({"layers": 3, "heads": [4, 2, 3], "ffn": 40}, dims)).eval()
    build_artifact(model, tmp_path, ValidationSet([padded(dims, 3, 9)]), options)
    feed = padded(dims, 5, 13, seed=4)  # other sizes than validation's
    got = session(tmp_path / "model.onnx").run(None, {k: v.numpy() for k, v in feed.items()})
    with torch.no_grad():
        ref = model(**feed)
    assert np.abs(got[0] - ref.pooled.numpy()).max() < 1e-5
    assert np.abs(got[1] - ref.logits.numpy()).max() < 1e-5


@pytest.mark.parametrize("options", [BuildOptions(mode="fused"), BuildOptions(mode="plain"), BuildOptions(builder="torch")],
                         ids=["direct-fused", "direct-plain", "torch"])
def test_decoder_artifact_generates_token_by_token_like_pytorch(decoder_dims, tmp_path, options):
    torch.manual_seed(0)
    cfg = SubnetConfig.parse({"layers": 3, "heads": [6, 3, 6], "ffn": 48}, decoder_dims)
    model = build_model(decoder_dims, cfg).eval()
    for p in model.parameters():  # large weights: a wrong cache would change the greedy path
        p.data.mul_(3.0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, decoder_dims.vocab_size, (2, 7), generator=g)
    manifest = build_artifact(model, tmp_path, ValidationSet([{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]), options)
    assert manifest["inputs"][:3] == ["input_ids", "attention_mask", "position_ids"]
    sess = session(tmp_path / "model.onnx")
    prompt = ids[:1, :4]
    kv = [h // decoder_dims.group_size for h in cfg.heads]
    feed = {"input_ids": prompt.numpy(), "attention_mask": np.ones((1, 4), dtype=np.int64),
            "position_ids": np.arange(4)[None]}
    for i, k in enumerate(kv):
        for name in ("key", "value"):
            feed[f"past.{i}.{name}"] = np.zeros((1, k, 0, decoder_dims.head_dim), dtype=np.float32)
    onnx_tokens, seq = [], prompt
    for step in range(6):
        outs = sess.run(None, feed)
        nxt = int(outs[0][0, -1].argmax())
        onnx_tokens.append(nxt)
        total = 4 + step + 1
        feed = {"input_ids": np.array([[nxt]]), "attention_mask": np.ones((1, total), dtype=np.int64),
                "position_ids": np.array([[total - 1]])}
        for i in range(len(kv)):
            feed[f"past.{i}.key"], feed[f"past.{i}.value"] = outs[1 + 2 * i], outs[2 + 2 * i]
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], dim=1)
    assert onnx_tokens == seq[0, 4:].tolist()
    assert len(set(onnx_tokens)) > 1


def test_export_to_folder_is_atomic_and_refuses_bad_options(encoder_dims, tmp_path, monkeypatch):
    from slicer import slicing
    from slicer.nn.supernet import Supernet

    torch.manual_seed(0)
    opened = slicing.OpenSupernet(Supernet(build_model(encoder_dims)), tmp_path, "fp", None, False)
    monkeypatch.setattr(slicing, "validation_set", lambda opened, data: ValidationSet([padded(encoder_dims, 2, 5)]))
    cfg = SubnetConfig.parse({"layers": 2}, encoder_dims)
    manifest = slicing.export_to_folder(opened, cfg, tmp_path / "art", BuildOptions(mode="plain"))
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == sorted(["manifest.json", *manifest["files"]])
    assert manifest["build"]["builder"] == "direct" and manifest["base_fingerprint"] == "fp"
    with pytest.raises(ExportError, match="precision"):
        BuildOptions(precision="fp8")

    def broken(*args, **kwargs):
        raise ExportError("broken graph")

    monkeypatch.setattr("slicer.onnx.build.check_parity", broken)
    with pytest.raises(ExportError, match="broken graph"):
        slicing.export_to_folder(opened, cfg, tmp_path / "y", BuildOptions(mode="plain"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # nothing half-written
