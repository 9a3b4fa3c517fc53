"""The default store serves SmolLM2 with the shipped python-code palette (issue 18)."""

from __future__ import annotations

import pytest

from server import store
from slicer.formats.adapter_stack import StackMeta
from slicer.spec.palette import read_palette


def test_the_default_store_serves_smollm2_with_its_palette(tmp_path, monkeypatch):
    """No teacher is loaded: preparing a teacher or a data set is stubbed, the stack and its table are the shipped files."""
    monkeypatch.setattr(store, "prepare_teacher", lambda name: None)
    monkeypatch.setattr(store, "prepared_teacher_names", lambda: {"minilm", "smollm2"})
    monkeypatch.setattr(store, "_prepared_dataset", lambda name: name)
    store.prepare_default_store(tmp_path)
    served = store.load_models(tmp_path)["smollm2"]
    assert served.adapters is not None and served.adapters.is_relative_to(tmp_path.resolve())
    assert served.validation_data == "python-code"
    table = read_palette(served.adapters)
    assert table is not None and table.task == "causal-lm" and table.metric == "loss"
    assert table.data["name"] == "python-code" and table.data["split"] == "val"
    assert all(r["perplexity"] > 1 and r["loss"] > 0 for r in table.rows)
    meta = StackMeta.read(served.adapters)
    assert meta.base_dims.family == "decoder" and meta.task == "causal-lm" and meta.reordered
    keys = {r["key"] for r in table.rows}
    assert len(keys) == len(table.rows) >= 2  # a range of configs, smallest to the maxnet


@pytest.mark.slow
def test_the_shipped_decoder_palette_is_verified_and_loads_on_the_teacher():
    """Real teacher and data: the table's fingerprint is python-code's val split, the stack fits SmolLM2."""
    from slicer.data.prepared import prepare_dataset
    from slicer.formats.teachers import prepare_teacher
    from slicer.slicing import open_supernet

    prepare_teacher("smollm2")
    prepare_dataset("python-code")
    check = store.check_palette(store.DEFAULT_DECODER_PALETTE, "python-code")
    assert check["verified"] is True, check
    opened = open_supernet("smollm2", store.DEFAULT_DECODER_PALETTE)
    assert opened.reordered and opened.supernet.dims.num_layers == 30
