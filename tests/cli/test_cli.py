"""The mlfs command line as a user runs it: a real subprocess, exit codes and the one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slicer.formats.storage import load_subnet
from slicer.spec.palette import read_palette
from slicer.train.report import TrainingReport


def run_mlfs(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFS_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "slicer.cli", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random Llama checkpoint in Hugging Face format (no tokenizer: slicing falls back to magnitude)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=101, hidden_size=48, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
                      head_dim=8, intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_slice_writes_a_loadable_subnet_and_reports_its_size(tiny_llama, tmp_path):
    out = tmp_path / "sub"
    r = run_mlfs("slice", "--base", str(tiny_llama), "--config", '{"layers": 2, "heads": 3, "ffn": 32}', "--out", str(out), home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "L2[0,3] H3 F32 D48" in r.stdout and "non-embedding" in r.stdout
    meta = json.loads((out / "mlfs_model.json").read_text())
    model = load_subnet(out)
    assert model.num_parameters() == meta["params"]["total"]
    assert f"{meta['params']['non_embedding']:,}" in r.stdout
    assert (out / "transformers" / "config.json").is_file()


def test_config_from_file_and_config_command(tiny_llama, tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text('{"layers": [0, 2], "heads": [6, 3]}')
    r = run_mlfs("config", "--base", str(tiny_llama), "--config", str(cfg_file), home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '"layers":[0,2]' in r.stdout and '"heads":[6,3]' in r.stdout


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ('{"layers": 9}', "layers: 9 is out of range; allowed 1..4"),
        ('{"heads": 4}', "heads: 4 is not allowed; allowed [3, 6]"),
        ('{"depth": 2}', "unknown key(s) ['depth']"),
        ('{"layers": 2', "not valid JSON"),
        ("nope.json", "neither JSON"),
    ],
)
def test_bad_config_is_one_clear_line(tiny_llama, tmp_path, config, expected):
    r = run_mlfs("slice", "--base", str(tiny_llama), "--config", config, "--out", str(tmp_path / "x"), home=tmp_path)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert expected in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


def test_unknown_teacher_and_missing_files(tmp_path):
    r = run_mlfs("slice", "--base", "gpt17", "--config", "{}", "--out", str(tmp_path / "x"), home=tmp_path)
    assert r.returncode == 2 and "gpt17" in r.stderr and "minilm" in r.stderr and "Traceback" not in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_mlfs("slice", "--base", str(empty), "--config", "{}", "--out", str(tmp_path / "x"), home=tmp_path)
    assert r.returncode == 2 and "config.json" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_safetensors_is_reported_and_debug_shows_traceback(tiny_llama, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_llama / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    r = run_mlfs("slice", "--base", str(broken), "--config", "{}", "--out", str(tmp_path / "x"), home=tmp_path)
    assert r.returncode == 2 and "not a valid safetensors file" in r.stderr and "Traceback" not in r.stderr
    r = run_mlfs("--debug", "slice", "--base", str(broken), "--config", "{}", "--out", str(tmp_path / "x"), home=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_existing_output_folder_is_not_clobbered(tiny_llama, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_mlfs("slice", "--base", str(tiny_llama), "--config", "{}", "--out", str(out), home=tmp_path)
    assert r.returncode == 2 and "not empty" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_train_under_torchrun_writes_one_report(tmp_path, make_store):
    """Two gloo processes through the real command line: rank 0 alone writes the stack, metrics and report."""
    from helpers.store import WORDS

    base = make_store(tmp_path / "store") / "tiny-bert"
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 32), ("dev", 16)):
        rows = [{"text": " ".join(WORDS[2 + (k * 7 + i) % 40 + 50 * (k % 2)] for i in range(6)), "label": k % 2}
                for k in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    env = {**os.environ, "MLFS_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "slicer.cli", "train",
         "--base", str(base), "--data", str(data), "--task", "classification", "--out", str(out),
         "--max-steps", "2", "--batch-size", "8", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = TrainingReport.read(out)
    assert report.palette and read_palette(out / "adapters") is not None and (out / "reordering.safetensors").is_file()
    steps = [(r["stage"], r["step"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert steps == [(s, k) for s in (0, 1, 2) for k in range(2)]  # one writer, no duplicated rows
    assert result.stdout.count("adapters    ") == 1


def test_export_builds_a_validated_artifact_with_the_direct_builder(tmp_path, make_store):
    base = make_store(tmp_path / "store") / "tiny-bert"
    out = tmp_path / "art"
    r = run_mlfs("export", "--base", str(base), "--config", '{"layers": 2, "heads": [4, 2]}', "--out", str(out),
                 "--graph-mode", "plain", home=tmp_path)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())  # rich wraps lines at the terminal width
    assert "direct builder, plain graph" in text and "max |onnx - torch|" in text and "allowed" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["build"]["builder"] == "direct" and manifest["build"]["mode"] == "plain"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "tokenizer.json"]
    r = run_mlfs("export", "--base", str(base), "--config", '{"layers": 2}', "--out", str(tmp_path / "x"),
                 "--graph-mode", "fast", home=tmp_path)
    assert r.returncode != 0 and "fused" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


def test_serve_without_the_server_extra_names_the_extra(python_without):
    """`mlfs serve` where fastapi is not installed: one error line saying which extra to install."""
    r = python_without("import sys; sys.argv = ['mlfs', 'serve']; from server.cli import main; main()", ("fastapi",))
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "mlfs-edge[server]" in lines[0] and "'fastapi'" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_mlfs_composes_the_slicer_and_server_commands(tmp_path):
    """`mlfs` (server.cli) has the server's commands and the slicer's; `python -m slicer.cli` only the slicer's."""
    full = subprocess.run([sys.executable, "-m", "server.cli", "--help"], capture_output=True, text=True, timeout=120)
    lib = run_mlfs("--help", home=tmp_path)
    assert full.returncode == 0 and lib.returncode == 0
    for command in ("slice", "export", "train", "eval", "teacher", "data"):
        assert command in full.stdout and command in lib.stdout
    for command in ("serve", "warm", "bench"):
        assert command in full.stdout and command not in lib.stdout


def test_slice_copies_the_chat_template_and_generation_config_into_its_transformers_output(tiny_llama, tmp_path):
    base = tmp_path / "chat-base"
    shutil.copytree(tiny_llama, base)
    (base / "chat_template.jinja").write_text("{{ messages }}")
    (base / "generation_config.json").write_text('{"eos_token_id": [2, 7], "temperature": 0.6}')
    out = tmp_path / "sub"
    r = run_mlfs("slice", "--base", str(base), "--config", '{"layers": 2}', "--out", str(out), home=tmp_path)
    assert r.returncode == 0, r.stderr
    hf = out / "transformers"
    assert (hf / "chat_template.jinja").read_text() == "{{ messages }}"
    assert json.loads((hf / "generation_config.json").read_text())["eos_token_id"] == [2, 7]
    from transformers import GenerationConfig

    assert GenerationConfig.from_pretrained(hf).eos_token_id == [2, 7]  # transformers reads it from there
