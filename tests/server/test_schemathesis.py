"""A bounded schemathesis run against a real `mlfs serve` on loopback with a tiny store: no 500, every status,
content type and body as the OpenAPI schema says. The longer run is `benchmarks/schemathesis_run.py`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tiny_store import TOKEN, make_store

pytest.importorskip("schemathesis")

REPO = Path(__file__).resolve().parents[2]
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(store: Path, port: int, log: Path) -> subprocess.Popen:
    """`mlfs serve` in its own process; builds answer 202 after 0.5 s so requests stay short."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MLFS_OPERATOR_TOKEN": TOKEN, "MLFS_BUILD_WAIT_S": "0.5", "MLFS_MAX_BODY_BYTES": "4096",
           "MLFS_CACHE_BUDGET_MB": "50"}
    proc = subprocess.Popen([sys.executable, "-m", "slicer.cli", "serve", "--store", str(store), "--port", str(port)],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlfs serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("mlfs serve did not become ready in 120 s")


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
    proc = serve(store, port, tmp_path / "serve.log")
    try:
        result = schemathesis(f"http://127.0.0.1:{port}", max_examples=5, max_time_s=45)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
