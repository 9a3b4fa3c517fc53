"""Reorderings cached on disk: the cached open equals a fresh ranking, and nothing stale or damaged is trusted."""

from __future__ import annotations

import logging

import pytest
import torch

import slicer.train.reorder as reorder
from slicer.data.calibration import calibration_batches
from slicer.formats.reordering_cache import reordering_key
from slicer.slicing import open_supernet


@pytest.fixture(scope="module")
def base(tmp_path_factory, make_store):
    return make_store(tmp_path_factory.mktemp("store")) / "tiny-bert"


def weights(opened):
    """The base weights (adapters start random on every open, so they are left out)."""
    return {n: t for n, t in opened.supernet.model.state_dict().items() if ".adapter." not in n}


def no_ranking(*args, **kwargs):
    raise AssertionError("ranked again although the order was cached")


def test_a_cached_order_is_reused_and_gives_the_same_model(base, tmp_path, monkeypatch):
    fresh = open_supernet(str(base))
    first = open_supernet(str(base), reordering_cache=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    monkeypatch.setattr(reorder, "compute_reordering", no_ranking)
    second = open_supernet(str(base), reordering_cache=tmp_path)
    for name, tensor in weights(fresh).items():
        assert torch.equal(tensor, weights(first)[name]) and torch.equal(tensor, weights(second)[name]), name
    unranked = weights(open_supernet(str(base), reorder=False))
    assert not all(torch.equal(t, unranked[n]) for n, t in weights(fresh).items())  # the ranking did permute


def test_a_damaged_cache_file_is_ranked_again_and_replaced(base, tmp_path, caplog):
    open_supernet(str(base), reordering_cache=tmp_path)
    (cached,) = tmp_path.glob("*.safetensors")
    good = cached.read_bytes()
    cached.write_bytes(b"not safetensors")
    with caplog.at_level(logging.WARNING):
        opened = open_supernet(str(base), reordering_cache=tmp_path)
    assert "damaged" in caplog.text
    assert cached.read_bytes() == good
    fresh = weights(open_supernet(str(base)))
    assert all(torch.equal(t, fresh[n]) for n, t in weights(opened).items())


def test_an_unwritable_cache_only_costs_the_ranking(base, tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING):
        opened = open_supernet(str(base), reordering_cache=blocked)
    assert "could not cache" in caplog.text
    fresh = weights(open_supernet(str(base)))
    assert all(torch.equal(t, fresh[n]) for n, t in weights(opened).items())


def test_the_key_covers_the_base_the_method_and_every_calibration_token(base):
    batches = calibration_batches(base, "encoder", max_len=32)
    key = reordering_key("fp", "activation", batches)
    changed = [dict(b) for b in batches]
    changed[-1]["input_ids"] = changed[-1]["input_ids"].clone()
    changed[-1]["input_ids"][0, 1] += 1
    assert len({key, reordering_key("fp2", "activation", batches), reordering_key("fp", "taylor", batches),
                reordering_key("fp", "activation", changed), reordering_key("fp", "activation", batches[:-1])}) == 5
    assert reordering_key("fp", "activation", batches) == key
