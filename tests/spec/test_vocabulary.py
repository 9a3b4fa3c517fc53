"""The torch-free vocabulary: tensor-name lists agree with the shapes, palette quality has one sign."""

from __future__ import annotations

import json

import pytest

from slicer.errors import ConfigError
from slicer.spec import shapes
from slicer.spec.palette import (
    PALETTE_FILE,
    metric_of,
    quality_metric,
    read_palette,
    row_quality,
    write_palette,
)
from slicer.spec.subnet_config import SubnetConfig


def _narrow(dims):
    """A config whose hidden size differs from every other width, so each axis is recognisable by its size."""
    return SubnetConfig.parse({"layers": 2, "heads": dims.group_size, "ffn": 7, "hidden": 5}, dims)


def test_hidden_axis_lists_match_the_shapes(tiny_dims):
    dims = tiny_dims.with_labels(3) if tiny_dims.family == "encoder" else tiny_dims
    cfg = _narrow(dims)
    for name, shape in shapes.parameter_shapes(dims, cfg).items():
        cols, rows = name.endswith(shapes.HIDDEN_COLS), name.endswith(shapes.HIDDEN_ROWS)
        assert not (cols and rows), name
        if cols:
            assert shape[1] == cfg.hidden, name
        elif rows:
            assert shape[0] == cfg.hidden, name
        else:  # every tensor with a hidden-sized axis is listed
            assert cfg.hidden not in shape, name


def test_unit_and_neuron_lists_match_the_shapes(tiny_dims):
    cfg = _narrow(tiny_dims)
    found = shapes.parameter_shapes(tiny_dims, cfg)
    unit = tiny_dims.group_size * tiny_dims.head_dim
    units = cfg.heads[0] // tiny_dims.group_size
    for name in shapes.QUERY_ROWS:
        if f"layers.0.{name}" in found:
            assert found[f"layers.0.{name}"][0] == units * unit
    for name in shapes.KV_ROWS:
        if f"layers.0.{name}" in found:
            assert found[f"layers.0.{name}"][0] == units * tiny_dims.head_dim
    assert all(found[f"layers.0.{n}"][1] == units * unit for n in shapes.UNIT_COLS)
    assert all(found[f"layers.0.{n}"][0] == cfg.ffn[0] for n in shapes.NEURON_ROWS if f"layers.0.{n}" in found)
    assert all(found[f"layers.0.{n}"][1] == cfg.ffn[0] for n in shapes.NEURON_COLS)
    assert all(f"layers.0.{path}.weight" in found or path == "ffn.gate" for path in shapes.PROJECTIONS.values())


def test_quality_is_higher_is_better_for_both_tasks():
    assert metric_of("classification") == "accuracy" and metric_of("causal-lm") == "loss"
    assert row_quality({"accuracy": 0.8, "loss": 0.4}, "accuracy") == 0.8
    assert row_quality({"loss": 2.5, "perplexity": 12.2}, "loss") == -2.5
    assert row_quality({"loss": 2.0}, "loss") > row_quality({"loss": 3.0}, "loss")  # lower loss ranks higher
    assert row_quality(None, "loss") is None and row_quality({"loss": 1.0}, None) is None
    assert quality_metric("accuracy") == "accuracy" and quality_metric("loss") == "neg_loss"
    with pytest.raises(ConfigError, match="causal-lm"):
        metric_of("regression")


def test_palette_round_trip_and_bad_tables(tmp_path):
    rows = [{"key": "k1", "loss": 2.0, "perplexity": 7.4}]
    path = write_palette(tmp_path, rows, "causal-lm", "f" * 64)
    assert path.name == PALETTE_FILE
    table = read_palette(tmp_path)
    assert table.metric == "loss" and list(table.rows) == rows and table.task == "causal-lm"
    assert table.data_fingerprint == "f" * 64 and table.quality("k1") == -2.0 and table.quality("k2") is None
    assert read_palette(tmp_path / "none") is None and read_palette(None) is None
    (tmp_path / PALETTE_FILE).write_text(json.dumps({"task": "causal-lm"}))
    with pytest.raises(ConfigError, match="palette table"):
        read_palette(tmp_path)
    (tmp_path / PALETTE_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="palette table"):
        read_palette(tmp_path)
