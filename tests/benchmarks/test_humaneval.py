"""benchmarks/humaneval.py: the isolated test runner, batched greedy decoding against the SDK's one-prompt decoder
(tiny random Llama, about a second past the imports), and (``bench``) the --quick run end to end."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def humaneval(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the script imports bench_record beside it
    sys.modules.pop("humaneval", None)
    import humaneval

    return humaneval


def test_isolated_run_passes_fails_and_times_out(humaneval):
    problem = {"prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}
    assert humaneval.run_isolated(humaneval.check_program(problem, "    return a + b\n"), 60) == "passed"
    assert humaneval.run_isolated(humaneval.check_program(problem, "    return a - b\n"), 60) == "failed: AssertionError"
    assert humaneval.run_isolated(humaneval.check_program(problem, "    return (\n"), 60).startswith("failed: SyntaxError")
    assert humaneval.run_isolated("while True:\n    pass\n", 1) == "timed out"
    # the child runs under the limits, in its own empty folder, and cannot touch this process
    assert humaneval.run_isolated("import resource\nassert resource.getrlimit(resource.RLIMIT_AS)[0] == 2 << 30\n", 60) == "passed"
    assert humaneval.run_isolated("x = bytearray(3 << 30)\n", 60) == "failed: MemoryError"
    assert humaneval.run_isolated("import os\nassert os.listdir('.') == ['check.py']\n", 60) == "passed"


def test_batched_greedy_equals_one_prompt_decoding(humaneval, tmp_path):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    from client_sdk import ModelHandle
    from slicer.slicing import device_fields, open_supernet
    from slicer.spec.subnet_config import SubnetConfig

    # untied head and large weights: the picks depend on the context (a tied tiny model repeats its last token),
    # so a wrong position, mask or cache row shows in the text
    base = tmp_path / "llama"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128,
                                 tie_word_embeddings=False, initializer_range=0.3, bos_token_id=0,
                                 eos_token_id=39)).save_pretrained(base)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(40)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(base / "tokenizer.json"))
    net = open_supernet(str(base), None, reorder=False)
    dims = net.supernet.dims
    built = humaneval.build(net, SubnetConfig.maximal(dims), tmp_path / "teacher")
    manifest = {**built["manifest"], "device": {**device_fields(net), "max_seq_len": dims.max_positions}}
    handle = ModelHandle(tmp_path / "teacher", manifest, "t" * 64)
    assert handle.eos_ids == {39}
    # prompts of different lengths (left padding), stop strings that end some rows early (rows leave the batch)
    prompts = ["w1 w2 w3", "w4 " * 20, "w5 w6", "w7 w8 w9 w10 w11", "w12 " * 9, "w30 w31 w2 w5 w9 w17"]
    first = [handle.generate(p, 16).text.split() for p in prompts]
    stop = tuple(" " + " ".join(first[r][k : k + 2]) for r, k in ((0, 3), (2, 7), (5, 10)) if len(first[r]) > k + 1)
    want = [handle.generate(p, 16, stop=stop) for p in prompts]
    got = humaneval.greedy_batch(handle, prompts, 16, stop, batch=4)
    assert [g.text for g in got] == [w.text for w in want]
    assert [g.finish != "length" for g in got] == [w.finish_reason == "stop" for w in want]
    assert {g.finish for g in got} >= {"stop", "length"}, [g.finish for g in got]


@pytest.mark.bench
def test_quick_run_writes_a_complete_record(humaneval, tmp_path):
    humaneval.main(quick=True, out_dir=tmp_path)
    record = json.loads((tmp_path / "humaneval-quick.json").read_text())
    assert record["smoke"] is True and record["benchmark"] == "humaneval" and record["environment"]["git"]["commit"]
    res = record["results"]
    assert res["harness"]["canonical_passed"] == res["harness"]["of"] == 3 and res["harness"]["empty_body_passed"] == 0
    assert [m["name"] for m in res["models"]] == ["teacher", "L2 H3 F32", "L4 H6 F64"]
    for m in res["models"]:
        assert m["problems"] == 3 and m["pass_at_1"] == m["passed"] / 3 and sum(m["outcomes"].values()) == 3
        assert 0 < m["tokens_generated"] <= 3 * 8 and sum(m["finish"].values()) == 3
    with gzip.open(tmp_path / "humaneval-quick-completions.jsonl.gz", "rt") as f:
        samples = [json.loads(line) for line in f]
    assert len(samples) == 9 and {s["model"] for s in samples} == {"teacher", "L2 H3 F32", "L4 H6 F64"}
    assert (tmp_path / "humaneval-quick.png").read_bytes()[:4] == b"\x89PNG"
