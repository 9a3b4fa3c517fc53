"""One-pass artifact builds: manifest and hashes, build options, validation that catches wrong graphs, int8 scheme."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from test_graph_builder import real_like_batches, subnet

from slicer.errors import ExportError
from slicer.onnx import build
from slicer.onnx.build import BuildOptions, build_artifact
from slicer.onnx.quantize import excluded_nodes, int8_quality, quantize_int8
from slicer.onnx.validate import ValidationSet, parity_batches, session
from slicer.paths import sha256_file

pytestmark = pytest.mark.usefixtures("single_thread")


def labelled(dims, seed: int, rows: int = 16) -> list[dict[str, torch.Tensor]]:
    out = []
    for b in real_like_batches(dims, seed):
        b = dict(b)
        b["labels"] = b["input_ids"][:, 0] % dims.num_labels
        out.append(b)
    return out


@pytest.fixture(scope="module")
def head_dims(encoder_dims):
    return encoder_dims.with_labels(3)


@pytest.fixture(scope="module")
def model(head_dims):
    return subnet(head_dims, {"layers": 3, "heads": [4, 1, 3], "ffn": [40, 64, 8], "hidden": 24}, True)


@pytest.fixture(scope="module")
def validation(head_dims):
    return ValidationSet(real_like_batches(head_dims), labelled(head_dims, 5), "test batches")


def test_manifest_records_files_hashes_options_and_validation(model, validation, tmp_path):
    out = tmp_path / "a"
    out.mkdir()
    manifest = build_artifact(model, out, validation, BuildOptions(mode="plain"), extra={"note": 1})
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    for name, info in manifest["files"].items():  # hashed while written, equal to a fresh hash
        assert sha256_file(out / name) == info["sha256"] and (out / name).stat().st_size == info["size"]
    assert manifest["build"] == {"precision": "fp32", "builder": "direct", "mode": "plain",
                                 "recipe": BuildOptions(mode="plain").recipe}
    assert manifest["outputs"] == ["embeddings", "logits"] and manifest["note"] == 1
    parity = manifest["parity"]
    assert parity["judged_against"] == "PyTorch float32" and parity["float64"] is None  # agreed within the floor
    assert all(parity["max_abs_diff"][k] <= parity["allowed"][k] for k in parity["allowed"])
    assert manifest["validation"]["parity_examples"] == 5 and manifest["validation"]["parity_lengths"] == [6, 11]


def test_options_are_checked_and_key_the_recipe():
    assert len({BuildOptions(mode=m, builder=b).recipe for m in ("plain", "fused") for b in ("direct", "torch")}) == 3
    assert BuildOptions(builder="torch").mode == "plain"
    for bad in ({"precision": "fp8"}, {"builder": "tvm"}, {"mode": "fast"}):
        with pytest.raises(ExportError, match=next(iter(bad))):
            BuildOptions(**bad)


def test_a_graph_that_disagrees_with_pytorch_fails_the_build(model, validation, head_dims, tmp_path, monkeypatch):
    other = subnet(head_dims, model.cfg.to_dict(), True, seed=9)  # same shape, other weights
    real = build.subnet_weights  # the graph is built (and validated in memory) from these weights
    monkeypatch.setattr(build, "subnet_weights", lambda m: real(other if m is model else m))
    (tmp_path / "bad").mkdir()
    with pytest.raises(ExportError, match="float64"):
        build_artifact(model, tmp_path / "bad", validation)


@pytest.mark.parametrize("mode", ["fused", "plain"])
def test_a_subtly_broken_decoder_graph_fails_the_build(decoder_dims, tmp_path, monkeypatch, mode):
    """The build checks the graph in memory while writing it: one RMSNorm weight off by 1 % in what the graph is
    built from (the file and the checked graph alike) fails it, prefill or decode."""
    model = subnet(decoder_dims, {"layers": 3, "heads": [6, 3, 6], "ffn": [48, 64, 8]}, True)
    validation = ValidationSet(parity_batches([b.tolist() for b in real_like_batches(decoder_dims)[1]["input_ids"]] * 2,
                                              "decoder"), source="test rows")
    (tmp_path / "good").mkdir()
    build_artifact(model, tmp_path / "good", validation, BuildOptions(mode=mode))  # the same build, unbroken, passes
    real = build.subnet_weights

    def broken(m):
        weights = real(m)
        weights["layers.1.ffn_norm.weight"] = weights["layers.1.ffn_norm.weight"] * 1.01
        return weights

    monkeypatch.setattr(build, "subnet_weights", broken)
    (tmp_path / "bad").mkdir()
    with pytest.raises(ExportError, match="float64"):
        build_artifact(model, tmp_path / "bad", validation, BuildOptions(mode=mode))


def test_int8_keeps_ffn_down_projections_in_fp32_and_quantises_the_rest(model, validation, tmp_path):
    out = tmp_path / "i"
    out.mkdir()
    build_artifact(model, out, validation, BuildOptions(mode="plain"))
    info = quantize_int8(out / "model.onnx", tmp_path / "int8.onnx")
    kept = excluded_nodes(out / "model.onnx")
    assert kept == [f"layers.{j}.ffn.down.matmul" for j in range(3)] and info["kept_fp32_nodes"] == 3
    nodes = {n.name: n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert all(nodes[k] == "MatMul" for k in kept)  # still float
    assert sum(op in ("MatMulInteger", "DynamicQuantizeMatMul") for op in nodes.values()) >= 6
    assert (tmp_path / "int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size


def test_int8_of_a_fused_graph_quantises_attention_weights_too(model, validation, tmp_path):
    """The fused Attention carries no scale/qkv_hidden_sizes attribute, so the quantiser makes it a QAttention with
    int8 weights (with them, it left Attention float32: the fused maxnet's int8 was 0.46x fp32, the plain one 0.37x)."""
    out = tmp_path / "f"
    out.mkdir()
    manifest = build_artifact(model, out, validation, BuildOptions("int8", mode="fused"))
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert ops.count("QAttention") == len(model.cfg.layers) and "Attention" not in ops
    assert manifest["int8_quality"]["examples"] == sum(len(b["input_ids"]) for b in validation.gate)


def test_int8_gate_judges_agreement_on_every_gate_example(model, validation, head_dims, tmp_path):
    out = tmp_path / "g"
    out.mkdir()
    build_artifact(model, out, validation, BuildOptions(mode="plain"))
    same = int8_quality(model, out / "model.onnx", out / "model.onnx", validation.gate)
    assert same["accepted"] and same["argmax_agreement"] == 1.0 and same["accuracy_drop_points"] == 0.0
    assert same["examples"] == sum(len(b["input_ids"]) for b in validation.gate)
    other_dir = tmp_path / "o"
    other_dir.mkdir()
    build_artifact(subnet(head_dims, model.cfg.to_dict(), True, seed=4), other_dir, validation, BuildOptions(mode="plain"))
    different = int8_quality(model, out / "model.onnx", other_dir / "model.onnx", validation.gate)
    assert different["argmax_agreement"] < 0.99
    assert different["accepted"] == (different["accuracy_drop_points"] <= 0.5)
    with pytest.raises(ExportError, match="no examples"):
        int8_quality(model, out / "model.onnx", out / "model.onnx", [])


def test_parity_batches_are_padded_at_two_lengths():
    from slicer.onnx.validate import DECODER_PARITY_TOKENS

    blocks = [list(range(1, 65))] * 20  # language-model blocks: all one length, cut short to spread lengths
    (batch,) = parity_batches(blocks, "decoder")  # one batch, padded
    lengths = batch["attention_mask"].sum(1).tolist()
    assert batch["input_ids"].shape[1] == max(lengths) == DECODER_PARITY_TOKENS and len(set(lengths)) == len(lengths) > 2
    sentences = [list(range(1, n)) for n in range(3, 60)]
    short, long = parity_batches(sentences, "encoder")
    assert short["input_ids"].shape[1] < long["input_ids"].shape[1] and "token_type_ids" in short


def test_torch_exporter_stays_selectable(model, validation, tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    manifest = build_artifact(model, out, validation, BuildOptions(builder="torch"))
    assert manifest["build"]["builder"] == "torch"
    direct = tmp_path / "d"
    direct.mkdir()
    build_artifact(model, direct, validation)
    feed = {k: v.numpy() for k, v in real_like_batches(model.dims, 7)[1].items()}
    a, b = session(out / "model.onnx").run(None, feed), session(direct / "model.onnx").run(None, feed)
    assert all(np.abs(x - y).max() < 1e-4 for x, y in zip(a, b))
