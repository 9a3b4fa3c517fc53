"""A bounded schemathesis run against a real `mlfs serve` on loopback with a tiny store: no 500, every status,
content type and body as the OpenAPI schema says. The longer run is `benchmarks/schemathesis_run.py`."""

from __future__ import annotations

import pytest
from helpers.store import free_port, make_store, run_schemathesis, serve_process

pytest.importorskip("schemathesis")


def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path):
    store = make_store(tmp_path / "store")
    port = free_port()
    proc = serve_process(store, port, tmp_path / "serve.log")
    try:
        result = run_schemathesis(f"http://127.0.0.1:{port}", max_examples=5, max_time_s=45)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
