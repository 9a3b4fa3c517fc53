"""The files beside an adapter stack and a training run, each with one reader and one writer: ``adapter_config.json``
(StackMeta), ``palette.json`` (PaletteTable) and ``report.json`` (TrainingReport). The committed palette reads
unchanged; a malformed file is the project's error naming the file, never a KeyError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slicer.errors import CheckpointError, ConfigError
from slicer.formats.adapter_stack import STACK_META, StackMeta, save_adapter_stack
from slicer.formats.storage import SUBNET_META, SubnetMeta
from slicer.nn.adapters import AdapterSettings
from slicer.nn.factory import build_model
from slicer.nn.supernet import Supernet
from slicer.spec.palette import PALETTE_FILE, PaletteTable, read_palette
from slicer.spec.search_space import SearchSpace
from slicer.train.report import REPORT_FILE, REPORT_FORMAT, TrainingReport

SHIPPED = Path(__file__).resolve().parents[2] / "palettes" / "minilm-movie-reviews"


def test_the_committed_stack_metadata_reads_and_writes_back_byte_for_byte(tmp_path):
    raw = (SHIPPED / "adapters" / STACK_META).read_text()
    meta = StackMeta.read(SHIPPED / "adapters")
    assert meta.format == "mlfs-adapters/2" and meta.task == "classification" and meta.num_labels == 2
    assert meta.settings == AdapterSettings(8, ("q", "k", "v", "up"), 3, None, (8, 8, 32), vectors=True, head=True)
    assert meta.label_names == ["negative", "positive"] and meta.trained_max_len == 64 and meta.reordered
    assert meta.base_dims.hidden == 384 and meta.search_space.layers == (3, 4, 5, 6)
    assert set(meta.extra) == {"trained_on_base_fingerprint", "note"}  # provenance added by hand, kept
    meta.write(tmp_path)
    assert (tmp_path / STACK_META).read_text() == raw


def test_the_committed_palette_reads_and_writes_back_byte_for_byte(tmp_path):
    raw = (SHIPPED / "adapters" / PALETTE_FILE).read_text()
    table = read_palette(SHIPPED / "adapters")
    assert table.task == "classification" and table.metric == "accuracy" and len(table.rows) == 36
    assert table.data["name"] == "movie-reviews" and table.data_fingerprint == json.loads(raw)["data_fingerprint"]
    first = table.rows[0]
    assert table.quality(first["key"]) == first["accuracy"] and table.quality("no-such-key") is None
    assert table.write(tmp_path / PALETTE_FILE).read_text() == raw


def test_the_committed_report_reads_and_keeps_every_field(tmp_path):
    raw = json.loads((SHIPPED / REPORT_FILE).read_text())
    assert "format" not in raw  # written before the format was named: read as version 1
    report = TrainingReport.read(SHIPPED)
    assert report.task == "classification" and report.rank == 8 and report.steps_by_stage == {"0": 566, "1": 566, "2": 566}
    assert report.search_space == SearchSpace.from_dict(raw["search_space"]) and len(report.palette) == 36
    assert set(report.extra) == {"trained_on", "palette_evaluated_on", "cpu_cross_check"}
    report.write(tmp_path)
    again = json.loads((tmp_path / REPORT_FILE).read_text())
    assert {k: again[k] for k in raw} == raw  # nothing lost or changed
    assert set(again) - set(raw) == {"format", "stage_summaries", "threads"}  # the format, and empty defaults
    assert again["format"] == REPORT_FORMAT and TrainingReport.read(tmp_path) == report


def test_a_written_stack_reads_back_as_written(encoder_dims, tmp_path):
    net = Supernet(build_model(encoder_dims.with_labels(2)), AdapterSettings(rank=2, vectors=True))
    written = save_adapter_stack(net, tmp_path / "stack", "f" * 64, task="classification",
                                 data={"label_names": ["a", "b"]}, train_settings={"max_len": 32})
    meta = StackMeta.read(tmp_path / "stack")
    assert meta == written and meta.num_labels == 2 and meta.base_dims == encoder_dims.base()
    assert meta.label_names == ["a", "b"] and meta.trained_max_len == 32 and not meta.reordered
    bare = save_adapter_stack(net, tmp_path / "bare", "f" * 64)  # built outside training: nothing about data
    raw = json.loads((tmp_path / "bare" / STACK_META).read_text())
    assert not {"task", "data", "train_settings"} & set(raw)
    assert StackMeta.read(tmp_path / "bare") == bare and bare.label_names is None and bare.task is None


@pytest.mark.parametrize("change", [
    {"base_fingerprint": None}, {"rank": None}, {"search_space": None}, {"reordered": None}, {"rank": "eight"},
    {"targets": ["nope"]}, {"targets": 5}, {"search_space": {"layers": [1]}}, {"base_dims": {"bogus": 1}},
    {"task": "regression"}, {"format": "mlfs-adapters/9"}, {"base_fingerprint": 5}, {"data": "text"},
], ids=str)
def test_a_malformed_stack_description_names_its_file(change, tmp_path):
    raw = json.loads((SHIPPED / "adapters" / STACK_META).read_text())
    for key, value in change.items():
        raw.pop(key) if value is None else raw.__setitem__(key, value)
    (tmp_path / STACK_META).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=str(tmp_path / STACK_META)):
        StackMeta.read(tmp_path)
    (tmp_path / STACK_META).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="format"):
        StackMeta.read(tmp_path)


@pytest.mark.parametrize("content", ["[1, 2]", '{"format": "mlfs-subnet/0"}', "{"])
def test_a_subnet_description_that_is_not_one_names_its_file(content, tmp_path):
    """SubnetMeta reads through the same manifest check as StackMeta (a list once raised AttributeError)."""
    (tmp_path / SUBNET_META).write_text(content)
    with pytest.raises(CheckpointError, match=str(tmp_path / SUBNET_META)):
        SubnetMeta.read(tmp_path)


@pytest.mark.parametrize("table, problem", [
    ({"task": "classification", "configs": [{"accuracy": 0.5}]}, "configs\\[0\\] has no 'key'"),
    ({"task": "classification", "configs": [{"key": "k", "accuracy": "high"}]}, "not a number"),
    ({"task": "regression", "configs": []}, "task 'regression'"),
    ({"task": "causal-lm", "metric": "bleu", "configs": []}, "metric 'bleu'"),
    ({"task": "causal-lm"}, "no 'configs' list"),
], ids=["no key", "text metric", "task", "metric", "no rows"])
def test_a_malformed_palette_names_its_file(table, problem, tmp_path):
    (tmp_path / PALETTE_FILE).write_text(json.dumps(table))
    with pytest.raises(ConfigError, match=problem) as err:
        read_palette(tmp_path)
    assert str(tmp_path / PALETTE_FILE) in str(err.value)


def test_an_older_palette_with_the_fingerprint_alone_reads(tmp_path):
    older = {"task": "causal-lm", "data_fingerprint": "a" * 64, "configs": [{"key": "k", "loss": 2.5}]}
    (tmp_path / PALETTE_FILE).write_text(json.dumps(older))
    table = PaletteTable.read(tmp_path / PALETTE_FILE)
    assert table.metric == "loss" and table.data_fingerprint == "a" * 64 and table.quality("k") == -2.5


@pytest.mark.parametrize("change, problem", [
    ({"palette": None}, "missing palette"), ({"task": None, "rank": None}, "missing task, rank"),
    ({"format": "mlfs-report/9"}, "format 'mlfs-report/9'"), ({"task": "regression"}, "task 'regression'"),
    ({"search_space": {"layers": [3]}}, "search_space"), ({"palette": {"k": 1}}, "palette must be a JSON list"),
], ids=str)
def test_a_malformed_report_names_its_file(change, problem, tmp_path):
    raw = json.loads((SHIPPED / REPORT_FILE).read_text())
    for key, value in change.items():
        raw.pop(key) if value is None else raw.__setitem__(key, value)
    (tmp_path / REPORT_FILE).write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=problem) as err:
        TrainingReport.read(tmp_path)
    assert str(tmp_path / REPORT_FILE) in str(err.value)
    (tmp_path / REPORT_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="not a training report"):
        TrainingReport.read(tmp_path)
