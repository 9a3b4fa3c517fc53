"""Direct builds of the real teachers (slow): a deep SmolLM2 slice passes parity on the float64 judgement (its
float32 rounding exceeds any fixed tolerance), and MiniLM's minnet int8 passes its gate on the whole dev split."""

from __future__ import annotations

import pytest
import torch

from slicer.onnx.build import BuildOptions, build_artifact
from slicer.slicing import open_supernet, validation_set
from slicer.spec.subnet_config import SubnetConfig

pytestmark = pytest.mark.slow


def test_deep_smollm2_slice_passes_parity_and_a_broken_one_fails(prepared_teacher, tmp_path, monkeypatch):
    from slicer.errors import ExportError
    from slicer.onnx import build

    prepared_teacher("smollm2")
    torch.set_num_threads(2)
    opened = open_supernet("smollm2", reorder=False)
    cfg = SubnetConfig.parse({"layers": 20, "heads": 6, "ffn": 1024}, opened.supernet.dims)  # issue 18's slice
    subnet = opened.supernet.extract(cfg)
    validation = validation_set(opened)
    (tmp_path / "a").mkdir()
    manifest = build_artifact(subnet, tmp_path / "a", validation, BuildOptions())
    parity = manifest["parity"]
    assert all(parity["max_abs_diff"][k] <= parity["allowed"][k] or
               parity["float64"]["onnx_diff"][k] <= parity["allowed"][k] for k in parity["allowed"])
    weights = build.subnet_weights(subnet)
    weights["layers.10.ffn_norm.weight"] = weights["layers.10.ffn_norm.weight"] * 1.02
    original = build.subnet_weights

    def broken_weights(model):
        return weights if model is subnet else original(model)

    (tmp_path / "b").mkdir()
    monkeypatch.setattr(build, "subnet_weights", broken_weights)
    with pytest.raises(ExportError, match="float64"):
        build_artifact(subnet, tmp_path / "b", validation, BuildOptions())


def test_minilm_minnet_int8_passes_the_gate_on_the_whole_dev_split(prepared_teacher, tmp_path):
    from pathlib import Path

    prepared_teacher("minilm")
    adapters = Path(__file__).resolve().parents[2] / "palettes" / "minilm-movie-reviews" / "adapters"
    opened = open_supernet("minilm", adapters)
    validation = validation_set(opened, "movie-reviews")
    cfg = SubnetConfig.parse({"layers": 3, "heads": 6, "ffn": 768}, opened.supernet.dims)
    manifest = build_artifact(opened.supernet.extract(cfg), tmp_path, validation, BuildOptions("int8", mode="plain"))
    quality = manifest["int8_quality"]
    assert quality["accepted"] and quality["examples"] == sum(len(b["input_ids"]) for b in validation.gate) > 1000
    assert quality["accuracy_drop_points"] <= 0.5
