"""Budget -> config selection: fits, quality order, latency sources, and the no-fit message."""

from __future__ import annotations

import dataclasses

import pytest

from server.latency_model import LatencyEstimate
from server.profiles import BUILTIN, ProfileError, load_profiles
from server.selection import (
    Budget,
    Candidate,
    NoFit,
    candidates_from_palette,
    choose,
    gflops,
    memory_mb,
)
from slicer.spec.palette import PaletteTable
from slicer.spec.search_space import SearchSpace
from slicer.spec.subnet_config import SubnetConfig


@pytest.fixture
def palette(minilm):
    configs = list(SearchSpace.from_dict({"layers": [3, 6], "heads": [6, 12], "ffn": [768, 1536], "hidden": [384]}).enumerate(minilm))
    # accuracy grows with size, as a trained palette's does
    rows = [{"key": c.key, "accuracy": 0.7 + c.param_count(minilm).non_embedding / 1e8} for c in configs]
    return configs, PaletteTable.of(rows, "classification", {"fingerprint": "f" * 64})


def test_memory_and_flops_grow_with_the_config(minilm):
    small = SubnetConfig.parse({"layers": 3, "heads": 6, "ffn": 768}, minilm)
    full = SubnetConfig.maximal(minilm)
    assert memory_mb(minilm, small, "fp32", 128, 1) < memory_mb(minilm, full, "fp32", 128, 1)
    assert memory_mb(minilm, full, "int8", 128, 1) < memory_mb(minilm, full, "fp32", 128, 1)
    assert memory_mb(minilm, full, "fp32", 256, 4) > memory_mb(minilm, full, "fp32", 128, 1)
    assert gflops(minilm, small, 128, 1) < gflops(minilm, full, 128, 1) / 3


def test_two_budgets_give_two_configs_and_the_tighter_is_smaller(minilm, palette):
    configs, table = palette
    cands = candidates_from_palette(minilm, table, configs)
    loose = choose(minilm, cands, Budget(max_memory_mb=500, precision="fp32"))
    full_mb = memory_mb(minilm, SubnetConfig.maximal(minilm), "fp32", 128, 1)
    tight_budget = Budget(max_memory_mb=full_mb - 1, precision="fp32")
    tight = choose(minilm, cands, tight_budget)
    assert loose.config == SubnetConfig.maximal(minilm)
    assert tight.config != loose.config and tight.memory_mb <= tight_budget.max_memory_mb
    assert tight.config.param_count(minilm).total < loose.config.param_count(minilm).total


def test_a_latency_budget_is_checked_against_the_conservative_estimate(minilm, palette):
    configs, table = palette
    cands = candidates_from_palette(minilm, table, configs)
    latency = {(c.key, "fp32"): LatencyEstimate(10.0 + 10 * gflops(minilm, c, 128, 1), 0.1, "fit") for c in configs}
    smallest, largest = latency[(configs[0].key, "fp32")], latency[(configs[-1].key, "fp32")]
    # a budget at the smallest config's central estimate is not met: its upper quantile is above it
    with pytest.raises(NoFit, match="90 % upper estimate"):
        choose(minilm, cands, Budget(max_latency_ms=smallest.ms, precision="fp32"), latency)
    choice = choose(minilm, cands, Budget(max_latency_ms=smallest.upper_ms, precision="fp32"), latency)
    assert choice.config == configs[0] and choice.latency is smallest
    # the same central estimates with a wider uncertainty need a looser budget
    assert choose(minilm, cands, Budget(max_latency_ms=largest.upper_ms, precision="fp32"), latency).config == configs[-1]
    wide = {k: LatencyEstimate(v.ms, 0.3, "calibration") for k, v in latency.items()}
    assert choose(minilm, cands, Budget(max_latency_ms=largest.upper_ms, precision="fp32"), wide).config != configs[-1]


def test_auto_precision_picks_int8_when_only_it_fits(minilm, palette):
    configs, table = palette
    full = [c for c in candidates_from_palette(minilm, table, configs) if c.config == SubnetConfig.maximal(minilm)]
    fp32_mb = memory_mb(minilm, full[0].config, "fp32", 128, 1)
    assert choose(minilm, full, Budget(max_memory_mb=fp32_mb - 1, precision="auto")).precision == "int8"
    assert choose(minilm, full, Budget(max_memory_mb=fp32_mb + 1, precision="auto")).precision == "fp32"


def test_nothing_fits_names_the_smallest_option(minilm, palette):
    configs, table = palette
    with pytest.raises(NoFit, match=r"smallest option, L3\[1,3,5\] H6 F768 D384 int8, needs \d+ MB"):
        choose(minilm, candidates_from_palette(minilm, table, configs), Budget(max_memory_mb=1))
    with pytest.raises(NoFit, match="latency estimates"):
        choose(minilm, candidates_from_palette(minilm, table, configs), Budget(max_latency_ms=5))


def test_without_a_palette_the_largest_fitting_config_wins(minilm, palette):
    configs, _ = palette
    cands = candidates_from_palette(minilm, None, configs)
    assert all(c.quality is None for c in cands)
    assert choose(minilm, cands, Budget(precision="fp32")).config == SubnetConfig.maximal(minilm)
    assert isinstance(cands[0], Candidate)


def test_profiles_builtin_and_from_file(tmp_path):
    assert {p.name for p in BUILTIN} <= set(load_profiles())
    f = tmp_path / "p.yaml"
    f.write_text("- {name: phone, threads: 4, memory_mb: 2048, speed_score: 0.6}\n")
    assert load_profiles(f)["phone"].speed_score == 0.6
    f.write_text("- {name: phone, threads: 0, memory_mb: 2048}\n")
    with pytest.raises(ProfileError, match="positive"):
        load_profiles(f)
    f.write_text("- {name: '../x', threads: 1, memory_mb: 1}\n")
    with pytest.raises(ProfileError, match="name"):
        load_profiles(f)



def test_excluded_builds_are_not_chosen(minilm, palette):
    configs, table = palette
    cands = candidates_from_palette(minilm, table, configs)
    best = choose(minilm, cands, Budget(precision="int8"))
    second = choose(minilm, cands, Budget(precision="int8"), exclude={(best.config.key, "int8")})
    assert second.config.key != best.config.key and second.precision == "int8"


def test_the_service_keeps_a_menu_per_shape_and_device_until_latency_rows_change(tmp_path):
    """Selection's memory and latency estimates are made once per model, shape and device, and made again when a
    latency row (this process's or another connection's, e.g. `mlfs bench latency` beside the server) changes
    them or the model is replaced."""
    from helpers.store import make_store

    from server.metadata import SQLiteMetadata
    from server.metrics import Metrics
    from server.service import DeliveryService
    from server.settings import Settings

    store = make_store(tmp_path / "store", layers=2)
    svc = DeliveryService(Settings(store=store, latency_calibration=False), Metrics())
    svc.load(["tiny"])
    model, profile, budget = svc.model("tiny"), "tiny-1t-512m", Budget(None, None, 16, 1, "fp32")
    menu = svc.menu(model, budget, profile, None, None)
    assert svc.menu(model, budget, profile, None, None) is menu
    assert svc.menu(model, Budget(None, None, 32, 1, "fp32"), profile, None, None) is not menu
    assert all(o.latency is None for o in menu)  # no calibration, no rows: nothing to estimate from
    with pytest.raises(NoFit, match="latency estimates"):
        svc.choose(model, Budget(None, 50.0, 16, 1, "fp32"), profile)

    best, other = menu[0].config, menu[-1].config
    svc.meta.put_latency(profile, best.key, "fp32", 16, 1, 80.0, "bench", threads=1)
    remade = svc.menu(model, budget, profile, None, None)
    assert remade is not menu and next(o for o in remade if o.config == best).latency.source == "measured"
    SQLiteMetadata(store / "meta.sqlite").put_latency(profile, other.key, "fp32", 16, 1, 20.0, "bench", threads=1)
    seen = svc.menu(model, budget, profile, None, None)
    assert seen is not remade and next(o for o in seen if o.config == other).latency.source == "measured"
    choice = svc.choose(model, Budget(None, 50.0, 16, 1, "fp32"), profile)
    assert choice.config != best and choice.latency.upper_ms <= 50.0

    svc.models["tiny"] = dataclasses.replace(model)  # replaced (a new adapter stack or validation data)
    assert svc.menu(svc.model("tiny"), budget, profile, None, None) is not seen
    svc.close()
