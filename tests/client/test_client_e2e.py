"""The client SDK against a real delivery server on loopback (uvicorn, tiny classifier store)."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from helpers.faults import FaultyTransport

from client_sdk import Backoff, Budget, Client, ModelHandle, SimulatedProbe, SwapPolicy
from server.settings import Settings

MODEL = "tiny-cls"
TEXTS = [["w1 w2 w3"], ["w4 w5 w6 w7", "w8"], ["w9 w10"], ["w11 w12 w13 w14 w15", "w16 w17", "w3"]]


def resolve(url, mb):
    r = httpx.post(f"{url}/v1/resolve", json={"model": MODEL, "budget": {"precision": "fp32", "max_memory_mb": mb}},
                   timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def sizes(cls_server):
    """(largest config's memory estimate, a budget just below it, the smaller artifact that budget gets)."""
    big = resolve(cls_server, 1000)
    small = resolve(cls_server, big["estimates"]["memory_mb"] - 0.05)
    assert small["artifact_id"] != big["artifact_id"]
    return big, big["estimates"]["memory_mb"] - 0.05, small


def wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_predict_runs_on_through_a_swap_down_and_back_up_and_no_call_fails(cls_server, sizes, tmp_path):
    big, tight_mb, small = sizes
    probe = SimulatedProbe(1000, cpu_count=1)
    client = Client(cls_server, MODEL, probe=probe, cache_dir=tmp_path, count_loaded_model=False, threads=1,
                    budget=Budget(precision="fp32"))
    assert client.load().artifact_id == big["artifact_id"]
    answers, failures, stop = [], [], threading.Event()

    def caller(k):
        i = k
        while not stop.is_set():
            texts = TEXTS[i % len(TEXTS)]
            i += 1
            try:
                preds = client.predict(texts)
                answers.append((preds[0].artifact_id, i % len(TEXTS) - 1, [p.probabilities for p in preds]))
            except Exception as err:  # any failure is a defect
                failures.append(err)

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(2)]
    for t in callers:
        t.start()
    swaps = []
    client.events.subscribe(lambda e: swaps.append(e) if e.kind == "swap" else None)
    client.start_monitor(SwapPolicy(interval_s=0.05, cooldown_s=0.0, up_polls=1))
    try:
        wait_for(lambda: len(answers) > 20)
        probe.set(memory_available_mb=tight_mb)  # other apps took memory
        wait_for(lambda: client.current.artifact_id == small["artifact_id"])
        n = len(answers)
        wait_for(lambda: len(answers) > n + 20)
        probe.set(memory_available_mb=1000)  # and gave it back
        wait_for(lambda: client.current.artifact_id == big["artifact_id"])
        n = len(answers)
        wait_for(lambda: len(answers) > n + 20)
    finally:
        stop.set()
        for t in callers:
            t.join()
        client.stop_monitor()
    assert failures == []
    assert [(e.from_id, e.to_id) for e in swaps] == [(big["artifact_id"], small["artifact_id"]),
                                                      (small["artifact_id"], big["artifact_id"])]
    # both models could not be held at once going down; going up they could
    assert [e.data["strategy"] for e in swaps] == ["sequential", "overlap"]
    decisions = client.events.of("decision")
    directions = [d.data["direction"] for d in decisions]  # an up-check that kept the model is a decision too
    down = directions.index("down")
    assert "up" in directions[down + 1 :] and "memory budget" in decisions[down].reason
    # every answer equals what the model that gave it returns on its own
    seen = {a[0] for a in answers}
    assert seen == {big["artifact_id"], small["artifact_id"]}
    reference, handles = {}, {}
    for artifact_id in seen:
        handle = ModelHandle(client.cache.folder(artifact_id), client.cache.verified_manifest(artifact_id), artifact_id, 1)
        reference[artifact_id] = [[p.probabilities for p in handle.predict(t)] for t in TEXTS]
        handles[artifact_id] = handle
    # slices of one base share one parsed tokenizer (parsing holds the GIL: a swap between them parses none)
    assert handles[big["artifact_id"]].tokenizer is handles[small["artifact_id"]].tokenizer
    assert reference[big["artifact_id"]] != reference[small["artifact_id"]]
    for artifact_id, k, probs in answers:
        for got, ref in zip(probs, reference[artifact_id][k]):
            assert got.keys() == {"negative", "positive"}
            assert np.allclose(list(got.values()), list(ref.values()), atol=1e-6)
    client.close()


def test_a_cut_download_resumes_with_a_range_request_and_a_flipped_byte_is_fetched_again(cls_server, sizes, tmp_path):
    big = sizes[0]
    cut = FaultyTransport(faults=[("cut", big["size_bytes"] // 2)])
    client = Client(cls_server, MODEL, probe=SimulatedProbe(1000), cache_dir=tmp_path / "a", transport=cut,
                    count_loaded_model=False, budget=Budget(precision="fp32"), backoff=Backoff(first_s=0.01))
    assert client.load().artifact_id == big["artifact_id"]
    model_requests = [entry for entry in cut.log if entry[1].endswith("/files/model.onnx")]
    assert [(r[2], r[3]) for r in model_requests] == [(None, 200), (f"bytes={big['size_bytes'] // 2}-", 206)]
    assert client.predict(["w1 w2"])[0].label in ("negative", "positive")
    client.close()

    flip = FaultyTransport(faults=[("flip", 1000)])
    client = Client(cls_server, MODEL, probe=SimulatedProbe(1000), cache_dir=tmp_path / "b", transport=flip,
                    count_loaded_model=False, budget=Budget(precision="fp32"))
    assert client.load().artifact_id == big["artifact_id"]
    model_requests = [entry for entry in flip.log if entry[1].endswith("/files/model.onnx")]
    assert [(r[2], r[3]) for r in model_requests] == [(None, 200), (None, 200)]  # rejected, fetched whole again
    client.cache.verified_manifest(big["artifact_id"])
    client.close()

    # a file truncated in the cache is not loaded: the next client drops it and downloads it again
    model = tmp_path / "b" / "artifacts" / big["artifact_id"] / "model.onnx"
    model.write_bytes(model.read_bytes()[:-100])
    again = Client(cls_server, MODEL, probe=SimulatedProbe(1000), cache_dir=tmp_path / "b", count_loaded_model=False,
                   budget=Budget(precision="fp32"))
    assert again.load().artifact_id == big["artifact_id"]
    assert [e.kind for e in again.events.history if e.kind in ("swap_failed", "downloaded")] == ["swap_failed", "downloaded"]
    assert model.stat().st_size == big["size_bytes"]
    again.close()


def test_a_benchmark_report_moves_the_servers_latency_estimate(cls_server, sizes, tmp_path):
    big = sizes[0]
    recorder = FaultyTransport()
    client = Client(cls_server, MODEL, probe=SimulatedProbe(1000, profile="small-2t-1g"), cache_dir=tmp_path,
                    count_loaded_model=False, transport=recorder, device_token="dev-token",
                    budget=Budget(precision="fp32", seq_len=16))
    result = client.benchmark(runs=5, warmup=1)
    assert result.reported and result.artifact_id == big["artifact_id"] and result.p95_ms >= result.p50_ms > 0
    telemetry = [e for e in recorder.log if e[1] == "/v1/telemetry/latency"]
    assert telemetry and telemetry[0][3] == 204 and telemetry[0][4] == "Bearer dev-token"
    palette = httpx.get(f"{cls_server}/v1/models", params={"seq_len": 16}).json()["models"]
    row = next(p for m in palette if m["name"] == MODEL for p in m["palette"] if p["config"] == big["config"])
    # the report is the uncontended median, the figure the server's bench stores too
    assert result.uncontended_ms is not None and result.uncontended_ms <= result.p50_ms + 1e-9
    assert row["estimates"]["small-2t-1g"]["latency_ms"] == pytest.approx(result.uncontended_ms, abs=0.01)
    assert client.events.of("benchmark")
    client.close()


@pytest.mark.skipif("device_token" not in Settings.model_fields, reason="the server has no device token setting yet")
def test_telemetry_needs_the_device_token_when_the_server_sets_one(cls_store, tmp_path):
    from helpers.store import running_server

    from client_sdk import ServerError

    with running_server(cls_store, device_token="dev-token") as url:
        good = Client(url, MODEL, probe=SimulatedProbe(1000, profile="small-2t-1g"), cache_dir=tmp_path,
                      device_token="dev-token", count_loaded_model=False)
        assert good.benchmark(runs=2, warmup=0, seq_len=16).reported
        bad = Client(url, MODEL, probe=SimulatedProbe(1000, profile="small-2t-1g"), cache_dir=tmp_path,
                     count_loaded_model=False)
        with pytest.raises(ServerError) as err:
            bad.benchmark(runs=2, warmup=0, seq_len=16)
        assert err.value.status == 401
        good.close()
        bad.close()


def device(*args, cache_dir):
    """``mlfs-device`` in a subprocess (as a console script would run it)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "MLFS_DEVICE_CACHE": str(cache_dir)}
    return subprocess.run([sys.executable, "-m", "client_sdk.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_the_device_command_predicts_lists_and_clears_its_cache_and_fails_in_one_line(cls_server, sizes, tmp_path):
    big, tight_mb, small = sizes
    r = device("predict", "--server", cls_server, "--model", MODEL, "--precision", "fp32", "w1 w2 w3", "w4",
               cache_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] in ("negative", "positive")
    assert big["artifact_id"][:12] in lines[0] and lines[0].endswith("w1 w2 w3")
    r = device("predict", "--server", cls_server, "--model", MODEL, "--precision", "fp32", "--memory-mb", str(tight_mb),
               "w1", cache_dir=tmp_path)
    assert r.returncode == 0 and small["artifact_id"][:12] in r.stdout
    listing = device("cache", "list", cache_dir=tmp_path)
    assert big["artifact_id"][:12] in listing.stdout and small["artifact_id"][:12] in listing.stdout
    assert "removed 2 artifact(s)" in device("cache", "clear", cache_dir=tmp_path).stdout
    bad = device("predict", "--server", "http://127.0.0.1:9", "--model", MODEL, "w1", cache_dir=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("error: cannot reach the server")
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    missing = device("predict", "--server", cls_server, "--model", "nope", "w1", cache_dir=tmp_path)
    assert missing.returncode == 1 and "404" in missing.stderr and "unknown model" in missing.stderr


def test_a_model_tampered_in_the_cache_is_refused_at_swap_time_and_the_old_one_keeps_serving(cls_server, sizes, tmp_path):
    big, tight_mb, small = sizes
    client = Client(cls_server, MODEL, probe=SimulatedProbe(1000), cache_dir=tmp_path, count_loaded_model=False,
                    budget=Budget(precision="fp32"), swap_strategy="sequential")
    client.load()
    assert client.switch(tight_mb).to_id == small["artifact_id"]
    assert client.switch(Budget(precision="fp32")).to_id == big["artifact_id"]
    model = client.cache.folder(small["artifact_id"]) / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit
    model.write_bytes(bytes(data))
    assert client.switch(tight_mb) is None  # refused: the old model stays
    assert client.events.of("swap_failed")[-1].to_id == small["artifact_id"]
    assert client.current.artifact_id == big["artifact_id"]
    assert client.predict(["w1"])[0].artifact_id == big["artifact_id"]
    assert client.switch(tight_mb).to_id == small["artifact_id"]  # fetched again, verified, swapped
    client.close()
