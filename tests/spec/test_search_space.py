"""SearchSpace: defaults, enumeration, seeded sampling, files, and validation against a model's dims."""

from __future__ import annotations

import json
import random
from importlib.resources import files

import pytest

from slicer.errors import ConfigError
from slicer.spec.dims import ModelDims
from slicer.spec.search_space import SearchSpace
from slicer.spec.subnet_config import SubnetConfig

MINILM = ModelDims(family="encoder", vocab_size=30522, hidden=384, num_layers=6, num_heads=12, head_dim=32,
                   ffn=1536, max_positions=512, norm_eps=1e-12, type_vocab_size=2)
SMOLLM2 = ModelDims(family="decoder", vocab_size=49152, hidden=576, num_layers=30, num_heads=9, head_dim=64,
                    ffn=1536, max_positions=8192, norm_eps=1e-5, num_kv_heads=3, tie_embeddings=True)


def test_default_space_validates_and_spans_half_to_full(tiny_dims):
    space = SearchSpace.default(tiny_dims).validate(tiny_dims)
    assert space.layers == (2, 3, 4)
    assert space.heads[-1] == tiny_dims.num_heads and all(h % tiny_dims.group_size == 0 for h in space.heads)
    assert space.ffn == (32, 48, 64) and space.hidden == (tiny_dims.hidden,)
    assert space.largest(tiny_dims) == SubnetConfig.maximal(tiny_dims)


def test_default_space_of_the_decoder_uses_whole_groups(decoder_dims):
    assert SearchSpace.default(decoder_dims).heads == (3, 6)


def test_enumerate_yields_every_distinct_uniform_config(tiny_dims):
    space = SearchSpace.default(tiny_dims)
    configs = list(space.enumerate(tiny_dims))
    assert len(configs) == len(space) == 3 * len(space.heads) * 3
    assert len({c.key for c in configs}) == len(configs)
    assert all(c.is_uniform for c in configs)
    assert configs[0] == space.smallest(tiny_dims) and configs[-1] == space.largest(tiny_dims)
    shapes = {(len(c.layers), c.heads[0], c.ffn[0], c.hidden) for c in configs}
    assert shapes == {(n, h, f, d) for n in space.layers for h in space.heads for f in space.ffn for d in space.hidden}


def test_sample_is_deterministic_for_a_seed(tiny_dims):
    space = SearchSpace((1, 2, 3, 4), (3, 6) if tiny_dims.family == "decoder" else (1, 2, 3, 4), (16, 32, 64), (24, 32),
                        per_layer=True)
    a = [space.sample(tiny_dims, random.Random(7)) for _ in range(3)]
    first = [space.sample(tiny_dims, r) for r in [random.Random(7)] for _ in range(20)]
    second = [space.sample(tiny_dims, r) for r in [random.Random(7)] for _ in range(20)]
    assert first == second
    assert a[0] == a[1] == a[2] == first[0]
    assert len(set(first)) > 1  # the stream moves on
    other = [space.sample(tiny_dims, r) for r in [random.Random(8)] for _ in range(20)]
    assert other != first


def test_sample_with_fixed_depth_keeps_all_layers(tiny_dims):
    space = SearchSpace.default(tiny_dims)
    rng = random.Random(0)
    fixed = [space.sample(tiny_dims, rng, vary_depth=False) for _ in range(50)]
    assert all(c.layers == tuple(range(tiny_dims.num_layers)) for c in fixed)
    assert len({(c.heads, c.ffn) for c in fixed}) > 1  # widths still vary
    varied = [space.sample(tiny_dims, rng) for _ in range(50)]
    assert {len(c.layers) for c in varied} == set(space.layers)


def test_samples_come_from_the_space(tiny_dims):
    space = SearchSpace.default(tiny_dims)
    rng = random.Random(1)
    for _ in range(50):
        cfg = space.sample(tiny_dims, rng)
        assert cfg.is_uniform  # per_layer is off
        assert len(cfg.layers) in space.layers and cfg.heads[0] in space.heads and cfg.ffn[0] in space.ffn
        assert cfg.hidden in space.hidden


def test_per_layer_sampling_gives_non_uniform_configs(tiny_dims):
    d = SearchSpace.default(tiny_dims).to_dict()
    space = SearchSpace.from_dict({**d, "per_layer": True})
    rng = random.Random(3)
    configs = [space.sample(tiny_dims, rng) for _ in range(40)]
    assert any(not c.is_uniform for c in configs)
    assert all(set(c.heads) <= set(space.heads) and set(c.ffn) <= set(space.ffn) for c in configs)


# ----- files -------------------------------------------------------------------------------------------------------
def test_from_yaml_and_json_files(tmp_path, tiny_dims):
    yaml_file = tmp_path / "space.yaml"
    yaml_file.write_text("layers: [2, 4]\nheads: [6, 3]\nffn: [64, 32]\nhidden: [48, 24]\nper_layer: true\n")
    json_file = tmp_path / "space.json"
    json_file.write_text(json.dumps({"layers": [4, 2], "heads": [3, 6], "ffn": [32, 64], "hidden": [24, 48], "per_layer": True}))
    a, b = SearchSpace.from_file(yaml_file), SearchSpace.from_file(json_file)
    assert a == b
    assert a.layers == (2, 4) and a.heads == (3, 6) and a.ffn == (32, 64) and a.hidden == (24, 48) and a.per_layer
    assert SearchSpace.from_dict(json.loads(a.to_json())) == a


def test_a_single_number_is_a_one_value_list(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("layers: 3\nheads: [6]\nffn: 768\nhidden: 384\n")
    space = SearchSpace.from_file(f).validate(MINILM)
    assert space.layers == (3,) and space.ffn == (768,) and not space.per_layer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("layers: [3]\nheads: [6]\nffn: [768]\nhidden: [384]\ndepth: [2]\n", "unknown key.*depth"),
        ("layers: []\nheads: [6]\nffn: [768]\nhidden: [384]\n", "layers: expected a non-empty list"),
        ("layers: [3]\nheads: [6, seven]\nffn: [768]\nhidden: [384]\n", "heads: expected integers"),
        ("layers: [3]\nheads: [6]\nffn: [768.5]\nhidden: [384]\n", "ffn: expected integers"),
        ("layers: [3]\nheads: [6]\nffn: [768]\nhidden: [true]\n", "hidden: expected integers"),
        ("layers: [3]\nheads: [6]\nffn: [768]\n", "missing key.*hidden"),
        ("layers: [3\nheads: [6]\n", "not valid YAML"),
        ("- 3\n- 6\n", "expected a mapping"),
    ],
)
def test_bad_files_are_config_errors(tmp_path, text, expected):
    f = tmp_path / "space.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        SearchSpace.from_file(f)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        SearchSpace.from_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (SearchSpace((3, 7), (6,), (768,), (384,)), "layers: 7"),
        (SearchSpace((3,), (6, 13), (768,), (384,)), "heads: 13"),
        (SearchSpace((3,), (6,), (768, 2048), (384,)), "ffn: 2048"),
        (SearchSpace((3,), (6,), (768,), (256, 512)), "hidden: 512"),
        (SearchSpace((0, 3), (6,), (768,), (384,)), "layers: 0"),
    ],
)
def test_values_that_do_not_fit_the_dims_name_the_dimension(space, expected):
    with pytest.raises(ConfigError, match=expected):
        space.validate(MINILM)


def test_decoder_space_heads_must_be_whole_groups():
    with pytest.raises(ConfigError, match=r"heads: 4.*steps of 3"):
        SearchSpace((15,), (4, 9), (768,), (576,)).validate(SMOLLM2)


def test_shipped_minilm_space():
    path = files("slicer.spec") / "search_spaces" / "minilm.yaml"
    space = SearchSpace.from_file(str(path)).validate(MINILM)
    smallest = space.smallest(MINILM)
    assert smallest == SubnetConfig.parse({"layers": 3, "heads": 6, "ffn": 768}, MINILM)
    assert space.largest(MINILM) == SubnetConfig.maximal(MINILM)
    # "about 1/4 of the teacher's transformer-layer parameters"
    ratio = smallest.param_count(MINILM).non_embedding / SubnetConfig.maximal(MINILM).param_count(MINILM).non_embedding
    assert 0.24 < ratio < 0.26


def test_shipped_smollm2_space():
    path = files("slicer.spec") / "search_spaces" / "smollm2.yaml"
    space = SearchSpace.from_file(str(path)).validate(SMOLLM2)
    assert space.largest(SMOLLM2) == SubnetConfig.maximal(SMOLLM2)
    assert all(c.heads[0] % 3 == 0 for c in space.enumerate(SMOLLM2))
