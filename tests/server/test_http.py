"""The delivery server over real HTTP (uvicorn on a loopback port) with a tiny BERT store."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers.store import TOKEN

from slicer.slicing import open_supernet
from slicer.spec.subnet_config import SubnetConfig


def resolve(url, max_memory_mb=None, **budget):
    body = {"model": "tiny", "budget": {"precision": "fp32", **budget}}
    if max_memory_mb is not None:
        body["budget"]["max_memory_mb"] = max_memory_mb
    return httpx.post(f"{url}/v1/resolve", json=body, timeout=300)


def test_two_budgets_give_two_configs_and_the_artifact_is_exact(server, store):
    loose = resolve(server, 1000)
    assert loose.status_code == 200, loose.text
    full_mb = loose.json()["estimates"]["memory_mb"]
    tight = resolve(server, full_mb - 0.05)
    assert tight.status_code == 200, tight.text
    a, b = loose.json(), tight.json()
    assert a["config"] != b["config"] and b["estimates"]["memory_mb"] <= full_mb - 0.05
    dims_total = lambda cfg: sum(cfg["heads"]) + sum(cfg["ffn"]) + len(cfg["layers"])  # noqa: E731
    assert dims_total(b["config"]) < dims_total(a["config"])
    # download, verify, run, compare with the PyTorch subnet
    data = httpx.get(server + b["url"]).content
    assert hashlib.sha256(data).hexdigest() == b["sha256"] and len(data) == b["size_bytes"]
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    ids = np.array([[2, 5, 9, 11, 3], [4, 4, 8, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    opened = open_supernet(str(store / "tiny-bert"))
    subnet = opened.supernet.extract(SubnetConfig.from_dict(b["config"]))
    with torch.no_grad():
        ref = subnet(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).pooled.numpy()
    assert np.abs(got - ref).max() < 1e-4
    assert len(list((store / "reorderings").glob("*.safetensors"))) == 1  # the next start reads the order back
    manifest = httpx.get(server + b["manifest_url"]).json()
    assert manifest["files"]["model.onnx"]["sha256"] == b["sha256"]


def test_twenty_concurrent_cold_requests_build_once(server):
    async def burst():
        async with httpx.AsyncClient(timeout=300) as client:
            body = {"model": "tiny", "budget": {"precision": "fp32", "max_memory_mb": 1000, "seq_len": 96}}
            return await asyncio.gather(*[client.post(f"{server}/v1/resolve", json=body) for _ in range(20)])

    cache_before = httpx.get(f"{server}/v1/cache", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert len({r.json()["artifact_id"] for r in responses}) == 1
    metrics = httpx.get(f"{server}/metrics").text
    assert "mlfs_build_seconds_count" in metrics
    cache_after = httpx.get(f"{server}/v1/cache", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert len(cache_after["artifacts"]) <= len(cache_before["artifacts"]) + 1


def test_a_cut_download_resumes_with_a_range_request(server):
    r = resolve(server, 1000).json()
    full = httpx.get(server + r["url"])
    half = r["size_bytes"] // 2
    first = full.content[:half]
    rest = httpx.get(server + r["url"], headers={"Range": f"bytes={half}-", "If-Range": full.headers["etag"]})
    assert rest.status_code == 206
    assert hashlib.sha256(first + rest.content).hexdigest() == r["sha256"]
    assert full.headers["etag"] == f'"{r["sha256"]}"'


def test_a_corrupted_artifact_is_never_served_and_is_rebuilt(server, store):
    r = resolve(server, 1000).json()
    path = store / "cache" / r["artifact_id"] / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert httpx.get(server + r["url"]).status_code == 404  # dropped on verification, bad bytes not sent
    again = resolve(server, 1000)
    assert again.status_code == 200 and again.json()["sha256"] == r["sha256"]
    assert hashlib.sha256(httpx.get(server + r["url"]).content).hexdigest() == r["sha256"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "text"),
    [
        ("post", "/v1/resolve", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "JSON"),
        ("post", "/v1/resolve", {"json": {"model": "gpt17"}}, 404, "served models"),
        ("post", "/v1/resolve", {"json": {"model": "tiny", "budget": {"max_memory_mb": 1}}}, 422, "smallest option"),
        ("post", "/v1/resolve", {"json": {"model": "tiny", "budget": {"colour": "red"}}}, 422, "colour"),
        ("post", "/v1/resolve", {"json": {"model": "tiny", "device": {"profile": "toaster"}}}, 422, "known"),
        ("post", "/v1/resolve", {"json": {"model": "tiny", "pad": "x" * 5000}}, 413, "over"),
        ("get", "/v1/artifacts/..%2F..%2Fmeta.sqlite", {}, 404, "Not Found"),  # never reaches a file route
        ("get", "/v1/artifacts/ABC..meta", {}, 400, "64 lowercase hex"),
        ("get", "/v1/artifacts/" + "0" * 64, {}, 404, "no artifact"),
        ("get", "/v1/artifacts/" + "0" * 64 + "/files/..%2Fmeta.sqlite", {}, 404, "Not Found"),
    ],
)
def test_bad_input_gets_a_clear_4xx(server, method, path, kwargs, status, text):
    r = getattr(httpx, method)(server + path, **kwargs)
    assert r.status_code == status, r.text
    assert text in r.text


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_operator_endpoints_refuse_missing_or_wrong_tokens(server, headers):
    assert httpx.get(f"{server}/v1/cache", headers=headers).status_code == 401
    assert httpx.post(f"{server}/v1/cache/warm", json={"model": "tiny", "configs": [{}]}, headers=headers).status_code == 401
    assert httpx.delete(f"{server}/v1/cache/" + "0" * 64, headers=headers).status_code == 401


def test_models_health_and_telemetry(server):
    models = httpx.get(f"{server}/v1/models").json()
    assert models["models"][0]["name"] == "tiny" and models["models"][0]["palette"]
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    r = resolve(server, 1000).json()
    palette = httpx.get(f"{server}/v1/models").json()["models"][0]["palette"]
    before = next(p for p in palette if p["config"] == r["config"])["estimates"]["small-2t-1g"]
    ok = httpx.post(f"{server}/v1/telemetry/latency",
                    json={"artifact_id": r["artifact_id"], "profile": "small-2t-1g", "latency_ms": before["latency_ms"] * 1.5})
    assert ok.status_code == 204
    # one client's report is one vote, below telemetry_min_clients: the estimate stands (see test_latency_http)
    palette = httpx.get(f"{server}/v1/models").json()["models"][0]["palette"]
    assert next(p for p in palette if p["config"] == r["config"])["estimates"]["small-2t-1g"] == before
    assert all(p["estimates"]["tiny-1t-512m"]["memory_mb"] > 0 for p in palette)
    assert httpx.get(f"{server}/v1/models", params={"seq_len": 0}).status_code == 422
