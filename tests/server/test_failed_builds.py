"""Failed builds are remembered and explained (issue 18.3): kept in the metadata with the figures behind them,
logged, counted in /metrics, listed in /v1/models, never retried after a restart until cleared (operator route or
CLI), and a device polling a resolution (or an artifact id) whose build failed is told so, not given a 404."""

from __future__ import annotations

import time

import httpx
import pytest
from helpers.store import TOKEN, running_server
from typer.testing import CliRunner

from slicer import SubnetConfig

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def gate(monkeypatch):
    """The int8 gate with a switch: rejecting (the figures a real gate reports) or accepting; counts its calls."""
    from slicer.onnx import build

    state = {"accept": False, "calls": 0, "delay_s": 0.0}

    def judged(*args, **kwargs):
        state["calls"] += 1
        time.sleep(state["delay_s"])
        return {"accepted": state["accept"], "argmax_agreement": 0.53, "examples": 32,
                "criterion": "argmax agreement >= 99%" if state["accept"] else "none passed: argmax agreement >= 99%"}

    monkeypatch.setattr(build, "int8_quality", judged)
    return state


def _full(store):
    from slicer.formats.storage import read_dims

    return SubnetConfig.maximal(read_dims(store / "tiny-bert")).to_dict()


def _metric(url: str, kind: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'mlfs_build_failures_total{{kind="{kind}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_failed_build_is_remembered_across_restarts_until_cleared(tmp_path, make_store, gate, caplog):
    store = make_store(tmp_path / "store")
    warm = {"model": "tiny", "configs": [_full(store)]}
    with running_server(store, latency_calibration=False) as url:
        r = httpx.post(f"{url}/v1/resolve", json={"model": "tiny", "budget": {"precision": "int8"}}, timeout=300)
        assert r.status_code == 422, r.text
        item = r.json()["errors"][0]
        assert item["type"] == "build_failed.int8_gate" and item["details"]["argmax_agreement"] == 0.53
        assert "cannot be built" in r.json()["detail"] and "argmax agreement" in r.json()["detail"]
        assert gate["calls"] == 1 and _metric(url, "int8_gate") == 1.0
        assert any("failed (int8_gate)" in rec.getMessage() and "not be tried again" in rec.getMessage()
                   for rec in caplog.records)
        model = httpx.get(f"{url}/v1/models").json()["models"][0]
        [failed] = model["failed_builds"]
        assert failed["precision"] == "int8" and failed["kind"] == "int8_gate"
        assert failed["details"]["argmax_agreement"] == 0.53 and failed["artifact_id"] == item["artifact_id"]

    gate["accept"] = True  # after the restart the gate would pass: but the failure is remembered, not retried
    with running_server(store, latency_calibration=False) as url:
        model = httpx.get(f"{url}/v1/models").json()["models"][0]
        assert [f["config_key"] for f in model["failed_builds"]] == [failed["config_key"]]
        warm_fp32 = httpx.post(f"{url}/v1/cache/warm", json=warm, headers=AUTH,
                               timeout=300)
        assert warm_fp32.status_code == 200  # fp32 of the same config was never refused
        r = httpx.post(f"{url}/v1/resolve", json={"model": "tiny", "budget": {"precision": "int8"}}, timeout=300)
        assert r.status_code == 200 and r.json()["config"] != _full(store)  # the next best int8 config
        calls = gate["calls"]
        got = httpx.get(f"{url}/v1/artifacts/{failed['artifact_id']}")
        assert got.status_code == 422 and got.json()["errors"][0]["type"] == "build_failed.int8_gate"
        assert gate["calls"] == calls  # asking for it built nothing

        refused = httpx.delete(f"{url}/v1/models/tiny/failed-builds")
        assert refused.status_code == 401
        cleared = httpx.delete(f"{url}/v1/models/tiny/failed-builds", params={"precision": "int8"}, headers=AUTH)
        assert cleared.status_code == 200 and cleared.json() == {"cleared": 1}
        assert httpx.get(f"{url}/v1/models").json()["models"][0]["failed_builds"] == []
        r = httpx.post(f"{url}/v1/resolve", json={"model": "tiny", "budget": {"precision": "int8"}}, timeout=300)
        assert r.status_code == 200 and r.json()["config"] == _full(store)  # tried again, and now it passes
        assert gate["calls"] == calls + 1


def test_polling_a_resolution_whose_build_failed_says_so_also_after_a_restart(tmp_path, make_store, gate):
    store = make_store(tmp_path / "store")
    gate["delay_s"] = 1.0  # the build outlives the resolve's wait: the device gets a 202 first
    body = {"model": "tiny", "budget": {"precision": "int8"}}
    with running_server(store, build_wait_s=0.1, latency_calibration=False) as url:
        r = httpx.post(f"{url}/v1/resolve", json=body, timeout=60)
        assert r.status_code == 202, r.text
        building = r.json()
        deadline = time.time() + 120
        while (got := httpx.get(url + building["resolve_url"], timeout=60)).status_code == 202:
            assert time.time() < deadline
            time.sleep(0.3)
        assert got.status_code == 422, got.text
        assert got.json()["errors"][0]["type"] == "build_failed.int8_gate"
        assert building["artifact_id"] in got.json()["detail"] and "resolve again (POST the same request)" in got.json()["detail"]
        assert httpx.get(f"{url}/v1/artifacts/{building['artifact_id']}/manifest").status_code == 422
    with running_server(store, build_wait_s=0.1, latency_calibration=False) as url:  # a restart forgets nothing the device was told
        got = httpx.get(url + building["resolve_url"], timeout=60)
        assert got.status_code == 422 and got.json()["errors"][0]["artifact_id"] == building["artifact_id"]
        assert httpx.get(f"{url}/v1/resolutions/{'0' * 32}").status_code == 404  # an id never given stays 404


def test_the_cli_lists_and_clears_failed_builds(tmp_path, make_store, gate):
    from server.cli import app

    store = make_store(tmp_path / "store")
    with running_server(store, latency_calibration=False) as url:
        assert httpx.post(f"{url}/v1/resolve", json={"model": "tiny", "budget": {"precision": "int8"}},
                          timeout=300).status_code == 422
    runner = CliRunner()
    listed = runner.invoke(app, ["failed-builds", "list", "--store", str(store)])
    assert listed.exit_code == 0, listed.output
    assert "int8_gate" in listed.output and "tiny" in listed.output
    cleared = runner.invoke(app, ["failed-builds", "clear", "--model", "tiny", "--store", str(store)])
    assert cleared.exit_code == 0 and "cleared 1 failed build(s) of tiny" in cleared.output
    assert "int8_gate" not in runner.invoke(app, ["failed-builds", "list", "--store", str(store)]).output
