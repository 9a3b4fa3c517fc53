"""The direct graph builder: the same configs built directly (plain and fused) and by torch.onnx.export agree with
each other and with PyTorch, keep the export's interface, and a wrong graph is still caught."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers.models import randomize_adapters

from slicer.errors import ExportError
from slicer.nn.factory import build_model
from slicer.nn.supernet import Supernet
from slicer.onnx.build import subnet_weights
from slicer.onnx.graph import ENCODER_FUSION, EncoderFusion, build_graph, graph_names, write_graph
from slicer.onnx.validate import PARITY_TOLERANCE, check_parity, graph_feeds, run_reference, session
from slicer.spec.subnet_config import SubnetConfig

pytestmark = pytest.mark.usefixtures("single_thread")

ENCODER_CONFIGS = {
    "uniform": {"layers": 4},
    "heterogeneous": {"layers": 3, "heads": [4, 1, 3], "ffn": [40, 64, 8]},
    "sliced-hidden": {"layers": 2, "heads": [2, 4], "ffn": 24, "hidden": 20},
}
DECODER_CONFIGS = {
    "uniform": {"layers": 4},
    "heterogeneous": {"layers": 3, "heads": [6, 3, 6], "ffn": [48, 64, 8]},
    "sliced-hidden": {"layers": 2, "heads": [3, 6], "ffn": 24, "hidden": 40},
}


def subnet(dims, spec, adapters: bool, seed: int = 0):
    """A subnet of a random base; with adapters, extracted (merged) from a supernet with non-zero adapters."""
    torch.manual_seed(seed)
    base = build_model(dims)
    for p in base.parameters():  # larger than init: a wrong graph must show
        p.data.add_(0.2 * torch.randn_like(p))
    net = Supernet(base)
    if adapters:
        randomize_adapters(net, seed, std=0.2)
    return net.extract(SubnetConfig.parse(spec, dims))


def real_like_batches(dims, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Two right-padded batches of different lengths, as validation uses."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for rows, length in ((3, 6), (2, 11)):
        ids = torch.randint(1, dims.vocab_size, (rows, length), generator=g)
        mask = torch.ones_like(ids)
        mask[-1, length - 3:] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
        if dims.family == "encoder":
            batch["token_type_ids"] = torch.zeros_like(ids)
        batches.append(batch)
    return batches


def max_diff(model, path, feeds) -> float:
    sess = session(path)
    worst = 0.0
    for feed in feeds:
        ours = sess.run(None, {k: v.numpy() for k, v in feed.items()})
        for a, b in zip(ours, run_reference(model, feed)):
            if a.size:
                worst = max(worst, float(np.abs(a - b.numpy()).max() / max(1.0, float(b.abs().max()))))
    return worst


# Every feature in some case, each case in both modes: (config, adapters merged, head / LM head untied)
ENCODER_CASES = [("uniform", False, 0), ("heterogeneous", True, 3), ("sliced-hidden", True, 0), ("sliced-hidden", False, 3)]
DECODER_CASES = [("uniform", False, True), ("heterogeneous", True, True), ("sliced-hidden", True, False),
                 ("heterogeneous", False, False)]


@pytest.mark.parametrize("mode", ["plain", "fused"])
@pytest.mark.parametrize(("name", "adapters", "head"), ENCODER_CASES)
def test_encoder_graph_equals_pytorch(encoder_dims, tmp_path, mode, name, adapters, head):
    dims = encoder_dims.with_labels(head) if head else encoder_dims
    model = subnet(dims, ENCODER_CONFIGS[name], adapters)
    write_graph(dims, model.cfg, subnet_weights(model), tmp_path / "m.onnx", mode)
    assert max_diff(model, tmp_path / "m.onnx", graph_feeds(model, real_like_batches(dims))) < PARITY_TOLERANCE


FUSIONS = [EncoderFusion(a, s, b) for a in ("contrib", "mha", "plain") for s in (True, False) for b in (True, False)]


@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f"{f.attention}-skip{int(f.skip_norm)}-biasgelu{int(f.bias_gelu)}")
def test_every_encoder_fusion_equals_pytorch(encoder_dims, tmp_path, fusion):
    """benchmarks/ort_latency.py times every combination: each must compute the subnet (padded rows, a head)."""
    dims = encoder_dims.with_labels(3)
    model = subnet(dims, ENCODER_CONFIGS["heterogeneous"], True)
    build_graph(dims, model.cfg, subnet_weights(model), "fused", encoder_fusion=fusion).write(tmp_path / "m.onnx")
    assert max_diff(model, tmp_path / "m.onnx", graph_feeds(model, real_like_batches(dims))) < PARITY_TOLERANCE
    ops = [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node]
    attention = {"contrib": "Attention", "mha": "MultiHeadAttention", "plain": "Softmax"}[fusion.attention]
    assert ops.count(attention) == len(model.cfg.layers)
    assert ops.count("SkipLayerNormalization") == (2 * len(model.cfg.layers) if fusion.skip_norm else 0)
    assert ops.count("BiasGelu") == (len(model.cfg.layers) if fusion.bias_gelu else 0)


def test_graph_modes_are_the_fusion_presets(encoder_dims):
    """``fused``: contrib Attention and BiasGelu, LayerNormalization kept (faster than onnxruntime's CPU
    SkipLayerNormalization); ``plain``: standard operators only."""
    model = subnet(encoder_dims, ENCODER_CONFIGS["uniform"], False)
    weights = subnet_weights(model)
    assert ENCODER_FUSION["fused"] == EncoderFusion("contrib", skip_norm=False, bias_gelu=True)
    for mode, fusion in ENCODER_FUSION.items():
        preset = build_graph(encoder_dims, model.cfg, weights, mode).model()
        assert preset.graph == build_graph(encoder_dims, model.cfg, weights, mode, encoder_fusion=fusion).model().graph
    plain = build_graph(encoder_dims, model.cfg, weights, "plain").model()
    assert all(n.domain in ("", "ai.onnx") for n in plain.graph.node)
    assert [o.domain for o in plain.opset_import] == [""]


@pytest.mark.parametrize("mode", ["plain", "fused"])
@pytest.mark.parametrize(("name", "adapters", "tied"), DECODER_CASES)
def test_decoder_graph_with_past_equals_pytorch(decoder_dims, tmp_path, mode, name, adapters, tied):
    import dataclasses

    dims = decoder_dims if tied else dataclasses.replace(decoder_dims, tie_embeddings=False)
    model = subnet(dims, DECODER_CONFIGS[name], adapters)
    write_graph(dims, model.cfg, subnet_weights(model), tmp_path / "m.onnx", mode)
    feeds = graph_feeds(model, real_like_batches(dims))  # prefill, then a decode step on its key/value cache
    assert any(f["past.0.key"].shape[2] > 0 for f in feeds)
    assert max_diff(model, tmp_path / "m.onnx", feeds) < PARITY_TOLERANCE


TORCH_CASES = {  # each built both ways; the exporter takes seconds, so a few configs that cover every feature
    "encoder-head-hetero-hidden-adapters": ("encoder", 3, {"layers": 3, "heads": [4, 1, 3], "ffn": [40, 64, 8], "hidden": 24}, True),
    "encoder-no-head-uniform": ("encoder", 0, {"layers": 2}, False),
    "decoder-past-hetero-hidden-adapters": ("decoder", 0, {"layers": 3, "heads": [6, 3, 6], "ffn": [48, 64, 8], "hidden": 40}, True),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_direct_and_torch_export_agree_in_interface_and_outputs(case, encoder_dims, decoder_dims, tmp_path):
    from slicer.onnx.export import export_onnx

    family, head, spec, adapters = TORCH_CASES[case]
    dims = (encoder_dims.with_labels(head) if head else encoder_dims) if family == "encoder" else decoder_dims
    model = subnet(dims, spec, adapters)
    write_graph(dims, model.cfg, subnet_weights(model), tmp_path / "direct.onnx", "fused")
    export_onnx(model, tmp_path / "torch.onnx")

    def interface(path):  # names, element types and dynamic axes: what devices feed stays as it is
        graph = onnx.load(str(path), load_external_data=False).graph
        return [(v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in [*graph.input, *graph.output]]

    assert interface(tmp_path / "direct.onnx") == interface(tmp_path / "torch.onnx")
    inputs, outputs = graph_names(dims, model.cfg)
    assert [n for n, _, _ in interface(tmp_path / "direct.onnx")] == inputs + outputs
    feeds = graph_feeds(model, real_like_batches(dims, seed=3))
    direct, exported = session(tmp_path / "direct.onnx"), session(tmp_path / "torch.onnx")
    for feed in feeds:
        np_feed = {k: v.numpy() for k, v in feed.items()}
        for a, b in zip(direct.run(None, np_feed), exported.run(None, np_feed)):
            assert a.shape == b.shape
            if a.size:
                assert np.abs(a - b).max() <= PARITY_TOLERANCE * max(1.0, float(np.abs(b).max()))
    for path in ("direct.onnx", "torch.onnx"):  # and both pass the build's own check
        check_parity(model, tmp_path / path, feeds)


def test_parity_check_rejects_a_graph_of_other_weights(encoder_dims, tmp_path):
    dims = encoder_dims.with_labels(3)
    model, other = subnet(dims, {"layers": 3}, True, seed=0), subnet(dims, {"layers": 3}, True, seed=1)
    write_graph(dims, other.cfg, subnet_weights(other), tmp_path / "wrong.onnx", "fused")
    with pytest.raises(ExportError, match="float64"):
        check_parity(model, tmp_path / "wrong.onnx", graph_feeds(model, real_like_batches(dims)))


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_beyond_float32_agreement_a_correct_graph_is_judged_against_float64(family, encoder_dims, decoder_dims, tmp_path,
                                                                          monkeypatch):
    """Deep slices round more than any fixed tolerance: a floor so tight that float32 rounding exceeds it stands in
    for one. The correct graph then passes on the float64 judgement (it is no farther from float64 than PyTorch
    float32 is), and the figures say so, in absolute units."""
    from slicer.onnx import validate

    dims = encoder_dims.with_labels(3) if family == "encoder" else decoder_dims
    model = subnet(dims, (ENCODER_CONFIGS if family == "encoder" else DECODER_CONFIGS)["heterogeneous"], True)
    write_graph(dims, model.cfg, subnet_weights(model), tmp_path / "m.onnx", "fused")
    monkeypatch.setattr(validate, "PARITY_TOLERANCE", 1e-12)
    report = check_parity(model, tmp_path / "m.onnx", graph_feeds(model, real_like_batches(dims)))
    assert report["judged_against"] == "PyTorch float64"
    f64 = report["float64"]
    assert all(f64["onnx_diff"][k] <= report["allowed"][k] == validate.REFERENCE_FACTOR * f64["torch_float32_diff"][k]
               for k in report["allowed"])
    assert "float64" in validate.parity_summary(report) and "allowed" in validate.parity_summary(report)


def test_parity_check_rejects_a_subtly_broken_graph(decoder_dims, tmp_path):
    """One layer's RMSNorm weight off by 1 %: small, but far beyond float32 rounding."""
    model = subnet(decoder_dims, DECODER_CONFIGS["heterogeneous"], True)
    weights = subnet_weights(model)
    weights["layers.1.ffn_norm.weight"] = weights["layers.1.ffn_norm.weight"] * 1.01
    write_graph(decoder_dims, model.cfg, weights, tmp_path / "broken.onnx", "plain")
    with pytest.raises(ExportError, match="allowed"):
        check_parity(model, tmp_path / "broken.onnx", graph_feeds(model, real_like_batches(decoder_dims)))


def test_streamed_file_equals_the_in_memory_model(encoder_dims, tmp_path):
    model = subnet(encoder_dims, ENCODER_CONFIGS["heterogeneous"], False)
    graph = build_graph(encoder_dims, model.cfg, subnet_weights(model), "plain")
    info = graph.write(tmp_path / "m.onnx")
    loaded = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(loaded)
    assert loaded.graph == graph.model().graph
    assert info["size"] == (tmp_path / "m.onnx").stat().st_size
    from slicer.paths import sha256_file

    assert info["sha256"] == sha256_file(tmp_path / "m.onnx")


def test_weights_that_do_not_fit_the_config_are_refused(encoder_dims):
    model = subnet(encoder_dims, {"layers": 2}, False)
    weights = subnet_weights(model)
    with pytest.raises(ExportError, match="shape"):
        build_graph(encoder_dims, SubnetConfig.parse({"layers": 2, "heads": 3}, encoder_dims), weights)
    weights["layers.0.ffn.up.bias"] = np.full_like(weights["layers.0.ffn.up.bias"], np.nan)
    with pytest.raises(ExportError, match="non-finite"):
        build_graph(encoder_dims, model.cfg, weights)
    with pytest.raises(ExportError, match="mode"):
        build_graph(encoder_dims, model.cfg, subnet_weights(model), "fast")
