"""A bounded schemathesis run against a real `mlfs serve` on loopback with a tiny store: no 500, every status,
content type and body as the OpenAPI schema says. The longer run is `benchmarks/schemathesis_run.py`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tiny_store import TOKEN, free_port, make_store, serve_process

pytest.importorskip("schemathesis")

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"


def schemathesis(url: str, max_examples: int, max_time_s: int, seed: int = 1) -> subprocess.CompletedProcess:
    # one worker: hypothesis' lambda-source parsing is not thread-safe on CPython 3.11 (AST recursion errors)
    return subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", CHECKS,
                           "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", str(max_examples),
                           "--max-time", str(max_time_s), "--workers", "1", "--seed", str(seed),
                           "--request-timeout", "120"],
                          capture_output=True, text=True, timeout=max_time_s + 240)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path):
    store = make_store(tmp_path / "store")
    port = free_port()
    proc = serve_process(store, port, tmp_path / "serve.log")
    try:
        result = schemathesis(f"http://127.0.0.1:{port}", max_examples=5, max_time_s=45)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
