"""ONNX artifacts: exported graphs agree with PyTorch, generate like it, and wrong graphs never become artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slicer.errors import ExportError
from slicer.nn.factory import build_model
from slicer.onnx import export
from slicer.spec.subnet_config import SubnetConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def encoder_with_head(dims, seed: int):
    torch.manual_seed(seed)
    model = build_model(dims.with_labels(3), SubnetConfig.parse({"layers": 3, "heads": [4, 2, 3], "ffn": 40}, dims.with_labels(3)))
    return model.eval()


def padded(dims, rows: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, dims.vocab_size, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, length // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": ids[:, 0] % 3}


@pytest.fixture(scope="module")
def encoder_artifact(tmp_path_factory, encoder_dims):
    model = encoder_with_head(encoder_dims, seed=0)
    out = tmp_path_factory.mktemp("art") / "enc"
    manifest = export.build_artifact(model, out, [padded(encoder_dims, 3, 9)], precision="fp32")
    return model, out, manifest


def test_manifest_describes_the_files_and_the_validation(encoder_artifact):
    model, out, manifest = encoder_artifact
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for name, info in manifest["files"].items():
        assert export.sha256_file(out / name) == info["sha256"] and (out / name).stat().st_size == info["size"]
    assert manifest["config_key"] == model.cfg.key and manifest["opset"] >= 17
    assert manifest["outputs"] == ["embeddings", "logits"]
    parity = manifest["parity"]
    assert all(parity["max_abs_diff"][k] <= export.PARITY_TOLERANCE * max(1, parity["output_scale"][k]) for k in parity["max_abs_diff"])
    assert all(v > 0 for v in parity["output_scale"].values())
    assert manifest["params"]["total"] == model.num_parameters()
    assert not list(out.parent.glob(".*incomplete*"))


def test_encoder_graph_has_dynamic_batch_and_sequence(encoder_artifact, encoder_dims):
    model, out, _ = encoder_artifact
    feed = padded(encoder_dims, 5, 13, seed=4)  # other sizes than the export's examples
    del feed["labels"]
    got = export.session(out / "model.onnx").run(None, {k: v.numpy() for k, v in feed.items()})
    with torch.no_grad():
        ref = model(**feed)
    assert np.abs(got[0] - ref.pooled.numpy()).max() < 1e-5
    assert np.abs(got[1] - ref.logits.numpy()).max() < 1e-5


def test_a_graph_that_disagrees_with_pytorch_is_rejected_and_leaves_nothing(encoder_dims, tmp_path, monkeypatch):
    model = encoder_with_head(encoder_dims, seed=0)
    other = encoder_with_head(encoder_dims, seed=1)  # same shape, other weights: what a broken exporter looks like
    real_export = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda m, path, opset=export.OPSET: real_export(other, path, opset))
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export.build_artifact(model, tmp_path / "bad", [padded(encoder_dims, 2, 7)])
    assert list(tmp_path.iterdir()) == []


def test_int8_gate_accepts_agreement_and_rejects_a_different_model(encoder_artifact, encoder_dims, tmp_path):
    model, out, _ = encoder_artifact
    batches = [padded(encoder_dims, 8, 9, seed=s) for s in range(3)]
    feeds = export.validation_feeds(model, batches)
    labels = [b["labels"] for b in batches]
    export.quantize_int8(out / "model.onnx", tmp_path / "int8.onnx")
    assert (tmp_path / "int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    same = export.int8_quality(model, out / "model.onnx", out / "model.onnx", feeds, labels)
    assert same["accepted"] and same["argmax_agreement"] == 1.0 and same["accuracy_drop_points"] == 0.0
    export.export_onnx(encoder_with_head(encoder_dims, seed=7), tmp_path / "other.onnx")
    different = export.int8_quality(model, out / "model.onnx", tmp_path / "other.onnx", feeds, labels)
    assert different["argmax_agreement"] < 0.99
    assert different["accepted"] == (different["accuracy_drop_points"] <= 0.5)


def test_decoder_artifact_generates_token_by_token_like_pytorch(decoder_dims, tmp_path):
    torch.manual_seed(0)
    cfg = SubnetConfig.parse({"layers": 3, "heads": [6, 3, 6], "ffn": 48}, decoder_dims)
    model = build_model(decoder_dims, cfg).eval()
    for p in model.parameters():  # large weights: a wrong cache would change the greedy path
        p.data.mul_(3.0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, decoder_dims.vocab_size, (2, 7), generator=g)
    manifest = export.build_artifact(model, tmp_path / "dec", [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}])
    assert manifest["inputs"][:3] == ["input_ids", "attention_mask", "position_ids"]
    sess = export.session(tmp_path / "dec" / "model.onnx")
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


def test_bad_precision_is_refused(encoder_dims, tmp_path):
    with pytest.raises(ExportError, match="precision"):
        export.build_artifact(encoder_with_head(encoder_dims, 0), tmp_path / "x", [], precision="fp8")
    assert not Path(tmp_path / "x").exists()
