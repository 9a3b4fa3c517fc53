"""SubnetConfig: the user forms, the canonical key, the error messages, and parameter counts without building."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slicer.errors import ConfigError
from slicer.nn.factory import build_model
from slicer.spec.dims import ModelDims
from slicer.spec.subnet_config import SubnetConfig, depth_map

pytestmark = pytest.mark.usefixtures("single_thread")

MINILM = ModelDims(family="encoder", vocab_size=30522, hidden=384, num_layers=6, num_heads=12, head_dim=32,
                   ffn=1536, max_positions=512, norm_eps=1e-12, type_vocab_size=2)


# ----- user forms -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("num_layers", "keep", "expected"),
    [(6, 3, (1, 3, 5)), (6, 6, (0, 1, 2, 3, 4, 5)), (6, 1, (5,)), (6, 2, (2, 5)), (4, 2, (1, 3)), (30, 15, tuple(range(1, 30, 2)))],
)
def test_depth_map_spreads_layers_and_keeps_the_last(num_layers, keep, expected):
    assert depth_map(num_layers, keep) == expected


def test_layers_as_count_uses_the_depth_map():
    cfg = SubnetConfig.parse({"layers": 3}, MINILM)
    assert cfg.layers == (1, 3, 5)
    assert cfg.heads == (12, 12, 12) and cfg.ffn == (1536,) * 3 and cfg.hidden == 384


def test_layers_as_explicit_list():
    cfg = SubnetConfig.parse({"layers": [0, 2, 5], "heads": 6}, MINILM)
    assert cfg.layers == (0, 2, 5)
    assert cfg.heads == (6, 6, 6)


def test_heads_and_ffn_scalar_or_per_layer_list():
    scalar = SubnetConfig.parse({"layers": 2, "heads": 6, "ffn": 768}, MINILM)
    assert scalar.heads == (6, 6) and scalar.ffn == (768, 768)
    per_layer = SubnetConfig.parse({"layers": 2, "heads": [3, 12], "ffn": [100, 1536]}, MINILM)
    assert per_layer.heads == (3, 12) and per_layer.ffn == (100, 1536)
    assert not per_layer.is_uniform and scalar.is_uniform


def test_missing_keys_mean_the_maximum():
    assert SubnetConfig.parse({}, MINILM) == SubnetConfig.maximal(MINILM)
    assert SubnetConfig.parse("{}", MINILM) == SubnetConfig.maximal(MINILM)
    cfg = SubnetConfig.parse({"ffn": 768}, MINILM)
    assert cfg.layers == tuple(range(6)) and cfg.heads == (12,) * 6 and cfg.hidden == 384 and cfg.ffn == (768,) * 6


def test_parse_accepts_json_text_and_a_config():
    text = '{"layers": 3, "heads": 6, "ffn": 768}'
    cfg = SubnetConfig.parse(text, MINILM)
    assert cfg == SubnetConfig.uniform(MINILM, 3, 6, 768)
    assert SubnetConfig.parse(cfg, MINILM) is cfg


# ----- canonical form and key ------------------------------------------------------------------------------------
def test_same_config_in_different_user_forms_has_one_key_and_json():
    forms = [
        {"layers": 3, "heads": 6, "ffn": 768},
        {"layers": [1, 3, 5], "heads": [6, 6, 6], "ffn": [768, 768, 768], "hidden": 384},
        '{"ffn": 768, "heads": 6, "layers": 3}',
        '{"hidden":384,"layers":[1,3,5],"heads":6,"ffn":[768,768,768]}',
    ]
    configs = [SubnetConfig.parse(f, MINILM) for f in forms]
    assert len({c.key for c in configs}) == 1
    assert len({c.to_json() for c in configs}) == 1
    assert configs[0].to_json() == '{"ffn":[768,768,768],"heads":[6,6,6],"hidden":384,"layers":[1,3,5]}'
    assert SubnetConfig.from_dict(json.loads(configs[0].to_json())) == configs[0]


def test_key_is_stable_across_runs_and_filesystem_safe():
    cfg = SubnetConfig.parse({"layers": 3, "heads": 6, "ffn": 768}, MINILM)
    assert cfg.key == SubnetConfig((1, 3, 5), (6, 6, 6), (768, 768, 768), 384).key
    assert len(cfg.key) == 16 and all(c in "0123456789abcdef" for c in cfg.key)


@pytest.mark.parametrize(
    "other",
    [
        {"layers": [0, 3, 5], "heads": 6, "ffn": 768},
        {"layers": 3, "heads": 9, "ffn": 768},
        {"layers": 3, "heads": 6, "ffn": 769},
        {"layers": 3, "heads": 6, "ffn": 768, "hidden": 383},
        {"layers": 3, "heads": [6, 6, 9], "ffn": 768},
        {"layers": 3, "heads": 6, "ffn": [768, 768, 767]},
        {"layers": 4, "heads": 6, "ffn": 768},
    ],
)
def test_different_configs_have_different_keys(other):
    base = SubnetConfig.parse({"layers": 3, "heads": 6, "ffn": 768}, MINILM)
    cfg = SubnetConfig.parse(other, MINILM)
    assert cfg != base
    assert cfg.key != base.key and cfg.to_json() != base.to_json()


def test_describe_is_a_short_label():
    assert SubnetConfig.parse({"layers": 3, "heads": 6, "ffn": 768}, MINILM).describe() == "L3[1,3,5] H6 F768 D384"
    assert "6/12" in SubnetConfig.parse({"layers": 2, "heads": [6, 12]}, MINILM).describe()


# ----- errors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "field", "allowed"),
    [
        ({"layer": 3}, "unknown key", "'layers', 'heads', 'ffn', 'hidden'"),
        ({"layers": 3, "depth": 2}, "unknown key", "allowed keys"),
        ({"layers": True}, "layers", "integer"),
        ({"heads": False}, "heads", "integer"),
        ({"ffn": 768.0}, "ffn", "integer"),
        ({"hidden": "384"}, "hidden", "integer"),
        ({"layers": [1, "3"]}, "layers", "integer"),
        ({"heads": [6, 6.5, 6, 6, 6, 6]}, "heads", "integer"),
        ({"layers": 0}, "layers", "1..6"),
        ({"layers": 7}, "layers", "1..6"),
        ({"layers": [0, 6]}, "layers", "0..5"),
        ({"layers": [-1, 2]}, "layers", "0..5"),
        ({"heads": 0}, "heads", "1..12"),
        ({"heads": 13}, "heads", "1..12"),
        ({"ffn": 0}, "ffn", "1..1536"),
        ({"ffn": 1537}, "ffn", "1..1536"),
        ({"hidden": 0}, "hidden", "1..384"),
        ({"hidden": 385}, "hidden", "1..384"),
        ({"layers": 3, "heads": [6, 6]}, "heads", "3 layers"),
        ({"layers": [0, 1], "ffn": [768, 768, 768]}, "ffn", "2 layers"),
        ({"layers": [3, 1]}, "layers", "strictly increasing"),
        ({"layers": [1, 1, 2]}, "layers", "strictly increasing"),
        ({"layers": []}, "layers", "at least one layer"),
    ],
)
def test_errors_name_the_field_and_what_is_allowed(spec, field, allowed):
    with pytest.raises(ConfigError) as err:
        SubnetConfig.parse(spec, MINILM)
    message = str(err.value)
    assert field in message and allowed in message, message


def test_decoder_heads_must_be_whole_kv_groups(decoder_dims):
    assert decoder_dims.group_size == 3
    assert SubnetConfig.parse({"heads": 3}, decoder_dims).heads == (3,) * 4
    for bad in (1, 2, 4, 5):
        with pytest.raises(ConfigError) as err:
            SubnetConfig.parse({"heads": bad}, decoder_dims)
        message = str(err.value)
        assert message.startswith(f"heads: {bad} ")
        assert "allowed [3, 6]" in message and "groups of 3" in message, message
    with pytest.raises(ConfigError, match="heads: 4"):
        SubnetConfig.parse({"layers": 2, "heads": [3, 4]}, decoder_dims)


def test_gqa_allowed_heads_are_listed_as_a_range():
    smollm = ModelDims(family="decoder", vocab_size=49152, hidden=576, num_layers=30, num_heads=9, head_dim=64,
                       ffn=1536, max_positions=8192, norm_eps=1e-5, num_kv_heads=3, tie_embeddings=True)
    with pytest.raises(ConfigError) as err:
        SubnetConfig.parse({"heads": 8}, smollm)
    assert "allowed 3..9 in steps of 3" in str(err.value)
    assert SubnetConfig.parse({"heads": 6}, smollm).heads == (6,) * 30


@pytest.mark.parametrize("text", ["{layers: 3}", '{"layers": 3', "", "not json"])
def test_invalid_json_text(text):
    with pytest.raises(ConfigError, match="not valid JSON"):
        SubnetConfig.parse(text, MINILM)


@pytest.mark.parametrize("spec", ["[3, 6]", "3", [3, 6]])
def test_a_config_must_be_an_object(spec):
    with pytest.raises(ConfigError, match="JSON object"):
        SubnetConfig.parse(spec, MINILM)


def test_config_errors_are_value_errors():
    with pytest.raises(ValueError):
        SubnetConfig.parse({"layers": 99}, MINILM)


# ----- parameter counts -------------------------------------------------------------------------------------------
def test_minilm_param_counts():
    full = SubnetConfig.maximal(MINILM).param_count(MINILM)
    assert full.non_embedding == 10_646_784
    assert full.embedding == (30522 + 512 + 2) * 384 + 2 * 384
    assert full.total == 22_713_216 - (384 * 384 + 384)  # all-MiniLM-L6-v2 (22.7M) less its pooler
    small = SubnetConfig.parse({"layers": 3, "heads": 6, "ffn": 768}, MINILM).param_count(MINILM)
    assert small.non_embedding == 2_665_152
    assert small.embedding == full.embedding  # full hidden size: same tables


def test_weight_bytes_and_bad_precision():
    cfg = SubnetConfig.maximal(MINILM)
    total = cfg.param_count(MINILM).total
    assert cfg.weight_bytes(MINILM) == 4 * total
    assert cfg.weight_bytes(MINILM, "int8") == total
    with pytest.raises(ConfigError, match=r"precision.*fp32"):
        cfg.weight_bytes(MINILM, "fp8")


@st.composite
def valid_configs(draw, dims: ModelDims) -> SubnetConfig:
    layers = sorted(draw(st.sets(st.integers(0, dims.num_layers - 1), min_size=1)))
    g = dims.group_size
    heads = [draw(st.integers(1, dims.num_heads // g)) * g for _ in layers]
    ffn = [draw(st.integers(1, dims.ffn)) for _ in layers]
    hidden = draw(st.integers(1, dims.hidden))
    return SubnetConfig.parse({"layers": layers, "heads": heads, "ffn": ffn, "hidden": hidden}, dims)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_param_count_matches_the_built_model(data, tiny_dims):
    cfg = data.draw(valid_configs(tiny_dims))
    count = cfg.param_count(tiny_dims)
    model = build_model(tiny_dims, cfg)
    assert count.total == model.num_parameters()
    assert count.total == sum(p.numel() for name, p in model.named_parameters())
    embedding = sum(p.numel() for name, p in model.named_parameters() if name.startswith("embeddings.") or name == "lm_head.weight")
    assert count.embedding == embedding
    assert cfg.weight_bytes(tiny_dims, "fp16") == 2 * count.total
    assert cfg.weight_bytes(tiny_dims, "fp32") == 4 * count.total


@pytest.mark.parametrize(
    ("num_layers", "keep", "expected"),
    [(30, 10, (0, 3, 6, 10, 13, 16, 19, 23, 26, 29)), (30, 2, (0, 29)), (4, 3, (0, 2, 3)), (6, 6, tuple(range(6))), (5, 1, (4,))],
)
def test_decoder_depth_map_keeps_the_first_and_last_layers(num_layers, keep, expected):
    assert depth_map(num_layers, keep, keep_first=True) == expected


def test_layer_counts_follow_the_family_depth_map(decoder_dims, encoder_dims):
    assert SubnetConfig.parse({"layers": 2}, decoder_dims).layers == (0, 3)
    assert SubnetConfig.parse({"layers": 2}, encoder_dims).layers == (1, 3)
