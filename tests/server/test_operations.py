"""Operator work on a store: registering adapter stacks over HTTP, `mlfs warm`, `mlfs bench latency`, and the
client-side latency measurement they rely on."""

from __future__ import annotations

import hashlib
import json
import pickle

import httpx
import numpy as np
import pytest
import torch
from helpers.models import randomize_adapters, randomize_deltas
from helpers.store import TOKEN, make_store
from typer.testing import CliRunner

from client_sdk.latency import measure_latency, synthetic_inputs
from server.cli import app
from server.metadata import SQLiteMetadata
from slicer.formats.adapter_stack import STACK_META, STACK_WEIGHTS, save_adapter_stack
from slicer.formats.storage import fingerprint, load_base
from slicer.nn.adapters import AdapterSettings, recommended
from slicer.nn.importance import Reordering
from slicer.nn.supernet import Supernet
from slicer.slicing import open_supernet
from slicer.spec.subnet_config import SubnetConfig

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL = {"layers": 2, "heads": 2, "ffn": 32}


def make_stack(base_dir, out, seed=3, reordering=None):
    supernet = Supernet(load_base(base_dir), AdapterSettings(rank=4)).eval()
    randomize_adapters(supernet, seed)
    supernet.set_stage(2)
    save_adapter_stack(supernet, out, fingerprint(base_dir), reordering)
    return out


def upload(server, name, folder, base, headers=AUTH, weights=None):
    files = {"adapter_config": (STACK_META, (folder / STACK_META).read_bytes()),
             "adapters": (STACK_WEIGHTS, weights if weights is not None else (folder / STACK_WEIGHTS).read_bytes())}
    return httpx.put(f"{server}/v1/models/{name}", data={"base": base}, files=files, headers=headers, timeout=120)


def test_a_registered_adapter_stack_is_served_and_its_artifact_has_the_adapters(server, store, tmp_path):
    base = str(store / "tiny-bert")
    stack = make_stack(store / "tiny-bert", tmp_path / "stack")
    r = upload(server, "tiny-tuned", stack, base)
    assert r.status_code == 201, r.text
    assert r.json()["configs"] > 1
    assert "tiny-tuned" in [m["name"] for m in httpx.get(f"{server}/v1/models").json()["models"]]
    assert "tiny-tuned" in json.loads((store / "models.json").read_text())["models"][-1]["name"]

    got = httpx.post(f"{server}/v1/resolve", timeout=300,
                     json={"model": "tiny-tuned", "budget": {"precision": "fp32", "max_memory_mb": 1000}}).json()
    plain = httpx.post(f"{server}/v1/resolve", timeout=300,
                       json={"model": "tiny", "budget": {"precision": "fp32", "max_memory_mb": 1000}}).json()
    assert got["artifact_id"] != plain["artifact_id"]  # the adapter fingerprint is part of the key
    import onnxruntime as ort

    sess = ort.InferenceSession(httpx.get(server + got["url"]).content, providers=["CPUExecutionProvider"])
    ids = np.array([[2, 5, 9, 11, 3]])
    onnx_out = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})[0]
    opened = open_supernet(base, stack)
    with torch.no_grad():
        ref = opened.supernet.extract(SubnetConfig.from_dict(got["config"]))(input_ids=torch.tensor(ids)).pooled.numpy()
        no_adapters = open_supernet(base).supernet.extract(SubnetConfig.from_dict(got["config"]))(
            input_ids=torch.tensor(ids)).pooled.numpy()
    assert np.abs(onnx_out - ref).max() < 1e-4
    assert np.abs(onnx_out - no_adapters).max() > 1e-3  # the merge did something


def test_registering_refuses_bad_stacks_and_keeps_the_store_unchanged(server, store, tmp_path):
    base = str(store / "tiny-bert")
    models_before = (store / "models.json").read_text()
    listing = lambda: sorted(p.name for p in (store / "adapters").glob("*")) if (store / "adapters").exists() else []  # noqa: E731
    adapters_before = listing()
    other = make_store(tmp_path / "other", layers=4, seed=9)  # same shapes, other weights: another fingerprint
    foreign = make_stack(other / "tiny-bert", tmp_path / "foreign")
    r = upload(server, "foreign", foreign, base)
    assert r.status_code == 422 and "trained on base" in r.text
    pickled = pickle.dumps({"weights": [1, 2, 3]})
    r = upload(server, "pickled", foreign, base, weights=pickled)
    assert r.status_code == 422 and "safetensors" in r.text
    dims = load_base(store / "tiny-bert").dims
    repeated = Reordering([torch.arange(dims.num_kv_heads) for _ in range(dims.num_layers)],
                          [torch.zeros(dims.ffn, dtype=torch.long) for _ in range(dims.num_layers)])
    r = upload(server, "repeated", make_stack(store / "tiny-bert", tmp_path / "repeated", reordering=repeated), base)
    assert r.status_code == 422 and "not a permutation" in r.text
    good = make_stack(store / "tiny-bert", tmp_path / "good")
    assert upload(server, "Bad Name!", good, base).status_code == 422
    r = upload(server, "elsewhere", good, "/etc")
    assert r.status_code == 422 and "unknown base" in r.text
    # PUT on an existing name replaces that model (issue 15): tests/server/test_new_user.py
    assert upload(server, "no-token", good, base, headers={}).status_code == 401
    assert (store / "models.json").read_text() == models_before
    assert listing() == adapters_before  # nothing half-registered left behind, hidden work folders included


def test_a_chunked_body_is_refused_before_it_is_read(server):
    def body():
        yield b'{"model": "tiny"}'

    r = httpx.post(f"{server}/v1/resolve", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 411 and "Content-Length" in r.text


def test_mlfs_warm_builds_and_pins(tmp_path):
    store = make_store(tmp_path / "store")
    runner = CliRunner()
    result = runner.invoke(app, ["warm", "--store", str(store), "--model", "tiny", "--subnet", json.dumps(SMALL)])
    assert result.exit_code == 0, result.output
    records = SQLiteMetadata(store / "meta.sqlite").list_artifacts()
    assert len(records) == 1 and records[0].pinned
    onnx = store / "cache" / records[0].key / "model.onnx"
    assert hashlib.sha256(onnx.read_bytes()).hexdigest() == records[0].files["model.onnx"]["sha256"]
    again = runner.invoke(app, ["warm", "--store", str(store), "--model", "tiny", "--subnet", json.dumps(SMALL)])
    assert again.exit_code == 0 and "cached" in again.output
    bad = runner.invoke(app, ["warm", "--store", str(store), "--model", "tiny", "--profile", "toaster"])
    assert bad.exit_code != 0 and "unknown device profile" in str(bad.exception or bad.output)


def test_bench_latency_stores_a_table_that_selection_then_uses(tmp_path):
    store = make_store(tmp_path / "store")
    result = CliRunner().invoke(app, ["bench", "latency", "--store", str(store), "--model", "tiny", "--profile",
                                      "tiny-1t-512m", "--max-configs", "3", "--runs", "2", "--seq-len", "16"])
    assert result.exit_code == 0, result.output
    meta = SQLiteMetadata(store / "meta.sqlite")
    table = meta.latency_table("tiny-1t-512m")
    assert len(table) == 3 and all(row["ms"] > 0 and row["seq_len"] == 16 and row["source"] == "bench" for row in table)
    # each row records how it was measured: the profile's threads, spinning off (the SDK default), the load
    assert meta._execute("SELECT DISTINCT threads, spinning FROM latency") == [(1, 0)]

    from server.metrics import Metrics
    from server.selection import Budget
    from server.service import DeliveryService
    from server.settings import Settings

    svc = DeliveryService(Settings(store=store), Metrics())
    svc.load(["tiny"])
    estimates = svc.latency_estimates(svc.model("tiny"), "tiny-1t-512m", 16, 1)
    assert all(estimates[(row["config_key"], "fp32")].source == "measured" and estimates[(row["config_key"], "fp32")].ms == row["ms"]
               for row in table)
    budget = Budget(None, max(row["ms"] for row in table) * 1.1, 16, 1, "fp32")
    choice = svc.choose(svc.model("tiny"), budget, "tiny-1t-512m")
    assert choice.latency.upper_ms <= budget.max_latency_ms
    svc.close()


def test_bench_calibrate_stores_a_calibration_per_profile_thread_count(tmp_path):
    store = make_store(tmp_path / "store")
    result = CliRunner().invoke(app, ["bench", "calibrate", "--store", str(store), "--rounds", "1", "--runs", "1"])
    assert result.exit_code == 0, result.output
    calibration = SQLiteMetadata(store / "meta.sqlite").calibration()
    assert 1 in calibration and 2 in calibration
    assert all(c["coeffs"][1] > 0 and c["info"]["allow_spinning"] is False for c in calibration.values())


def test_latency_feeds_cover_decoders_with_an_empty_past(decoder_dims, tmp_path):
    from slicer.nn.factory import build_model
    from slicer.onnx.build import build_artifact
    from slicer.onnx.validate import ValidationSet, session

    model = build_model(decoder_dims).eval()
    ids = torch.randint(1, decoder_dims.vocab_size, (1, 6))
    (tmp_path / "dec").mkdir()
    build_artifact(model, tmp_path / "dec", ValidationSet([{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]))
    sess = session(tmp_path / "dec" / "model.onnx")
    feeds = synthetic_inputs(sess, seq_len=5, batch_size=2)
    assert feeds["past.0.key"].shape == (2, 2, 0, 8) and feeds["attention_mask"].shape == (2, 5)
    result = measure_latency(tmp_path / "dec" / "model.onnx", threads=1, seq_len=5, batch_size=2, runs=3, warmup=1)
    assert 0 < result.median_ms <= result.p90_ms
    with pytest.raises(ValueError, match="runs"):
        measure_latency(tmp_path / "dec" / "model.onnx", runs=0)


def test_an_int8_model_that_fails_its_gate_is_a_clear_4xx_and_auto_falls_back_to_fp32(server, store, monkeypatch):
    from server.selection import memory_mb
    from slicer.formats.storage import read_dims
    from slicer.onnx import build

    def rejecting(*args, **kwargs):
        return {"accepted": False, "criterion": "none passed: argmax agreement >= 99%"}

    monkeypatch.setattr(build, "int8_quality", rejecting)
    # a budget only the int8 maxnet fits at the top: auto tries int8 first
    dims = read_dims(store / "tiny-bert")
    full = SubnetConfig.maximal(dims)
    limit = (memory_mb(dims, full, "int8", 40, 1) + memory_mb(dims, full, "fp32", 40, 1)) / 2
    body = {"model": "tiny", "budget": {"precision": "int8", "max_memory_mb": limit, "seq_len": 40}}
    r = httpx.post(f"{server}/v1/resolve", json=body, timeout=300)
    assert r.status_code == 422 and "cannot be built" in r.text and "argmax agreement" in r.text
    body["budget"]["precision"] = "auto"
    r = httpx.post(f"{server}/v1/resolve", json=body, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["precision"] == "fp32" and r.json()["config"] != full.to_dict()


def test_a_stack_with_vector_deltas_registers_and_its_artifact_merges_them(server, store, tmp_path):
    """A /2 stack (stage ranks, vector deltas; issue 17): served, and its artifact holds the merged deltas."""
    base_dir = store / "tiny-bert"
    net = Supernet(load_base(base_dir), recommended(rank=2)).eval()
    randomize_adapters(net, 4)
    randomize_deltas(net, 5, std=0.2)
    net.set_stage(2)
    save_adapter_stack(net, tmp_path / "stack", fingerprint(base_dir))
    r = upload(server, "tiny-parts", tmp_path / "stack", str(base_dir))
    assert r.status_code == 201, r.text
    got = httpx.post(f"{server}/v1/resolve", timeout=300,
                     json={"model": "tiny-parts", "budget": {"precision": "fp32", "max_memory_mb": 1000}}).json()
    import onnxruntime as ort

    sess = ort.InferenceSession(httpx.get(server + got["url"]).content, providers=["CPUExecutionProvider"])
    ids = np.array([[2, 5, 9, 11, 3]])
    onnx_out = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})[0]
    cfg = SubnetConfig.from_dict(got["config"])
    opened = open_supernet(str(base_dir), tmp_path / "stack")
    assert opened.supernet.deltas  # the vector deltas came back with the stack
    with torch.no_grad():
        ref = opened.supernet.extract(cfg)(input_ids=torch.tensor(ids)).pooled.numpy()
        for deltas in opened.supernet.deltas.values():
            deltas.upto = 0  # the same stack without its vector deltas
        without = opened.supernet.extract(cfg)(input_ids=torch.tensor(ids)).pooled.numpy()
    assert np.abs(onnx_out - ref).max() < 1e-4
    assert np.abs(onnx_out - without).max() > 1e-3  # the vector deltas are in the served weights
