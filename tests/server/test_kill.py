"""kill -9 in the middle of a build, then a restart on the same store: nothing partial is listed or served, the
leftovers are cleaned, and the rebuilt artifact verifies."""

from __future__ import annotations

import hashlib
import signal
import time

import httpx
from helpers.store import TOKEN, free_port, make_store, serve_process

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = {"model": "tiny", "budget": {"precision": "fp32", "max_memory_mb": 1000}}


def partials(cache):
    return [p for p in cache.iterdir() if p.name.startswith(".") and p.name != ".locks"] if cache.exists() else []


def test_a_build_killed_mid_export_leaves_nothing_partial_and_rebuilds(tmp_path):
    store = make_store(tmp_path / "store")
    cache = store / "cache"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve_process(store, port, tmp_path / "first.log", hold_build_s=60)  # the direct builder takes < 1 s
    try:
        first = httpx.post(f"{url}/v1/resolve", json=BODY, timeout=60)
        assert first.status_code in (200, 202), first.text
        key = first.json()["artifact_id"]
        deadline = time.time() + 120
        while time.time() < deadline and not any(p.is_dir() and any(p.rglob("*")) for p in partials(cache)):
            if (cache / key).exists():
                break
            time.sleep(0.005)
        assert not (cache / key).exists(), "the build finished before it could be killed; nothing was tested"
        assert partials(cache), "no build in progress was seen"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert partials(cache)  # the killed build left its work folder behind

    proc = serve_process(store, port, tmp_path / "second.log")
    try:
        listing = httpx.get(f"{url}/v1/cache", headers=AUTH).json()
        assert listing["artifacts"] == []
        assert httpx.get(f"{url}/v1/artifacts/{key}").status_code == 404
        deadline = time.time() + 180
        while (r := httpx.post(f"{url}/v1/resolve", json=BODY, timeout=60)).status_code == 202 and time.time() < deadline:
            time.sleep(0.3)
        assert r.status_code == 200, r.text
        assert r.json()["artifact_id"] == key
        data = httpx.get(url + r.json()["url"]).content
        assert hashlib.sha256(data).hexdigest() == r.json()["sha256"] and len(data) == r.json()["size_bytes"]
        assert not partials(cache)  # the killed build's work folder went when the key was claimed again
        assert list((cache / ".locks").iterdir()) == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)
