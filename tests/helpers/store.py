"""A delivery-server store around a tiny random BERT, and a real uvicorn server on a loopback port.

Building a store needs only torch and transformers; the server's packages load when a server is started."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertModel

TOKEN = "s3cret-operator-token"
REPO = Path(__file__).resolve().parents[2]
WORDS = ["[PAD]", "[UNK]"] + [f"w{i}" for i in range(95)]


def make_store(root: Path, layers: int = 4, seed: int = 0) -> Path:
    """``root`` with ``tiny-bert/`` (a Hugging Face checkpoint + tokenizer) served as model ``tiny``."""
    base = root / "tiny-bert"
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False).save_pretrained(base)
    save_tokenizer(base)
    (root / "models.json").write_text(json.dumps({"models": [{"name": "tiny", "base": str(base), "adapters": None}]}))
    return root


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over ``WORDS`` (97 ids) in ``folder/tokenizer.json``."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))


@contextmanager
def running_server(store: Path, **settings) -> Iterator[str]:
    """uvicorn in a thread on a free loopback port (or ``port=``, to restart a server where clients expect it);
    yields the base URL once /readyz answers."""
    import httpx
    import uvicorn

    from server.api import create_app
    from server.api.serving import uvicorn_config
    from server.settings import Settings

    port = settings.pop("port", None)
    if port is None:
        port = free_port()
    options = {"operator_token": TOKEN, "build_wait_s": 120, "cache_budget_mb": 100, "max_body_bytes": 4096, **settings}
    settings = Settings(store=store, port=port, **options)
    srv = uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    else:
        raise RuntimeError("the test server did not become ready in 60 s")
    try:
        yield url
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_process(store: Path, port: int, log: Path, hold_build_s: float = 0.0) -> subprocess.Popen:
    """`mlfs serve` in its own process; builds answer 202 after 0.5 s so requests stay short.

    ``hold_build_s``: every build, its files written, waits this long before it is published (through
    tests/server/replica_serve.py), so a test can kill the server in the middle of a build however fast it is."""
    import httpx

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MLFS_OPERATOR_TOKEN": TOKEN, "MLFS_BUILD_WAIT_S": "0.5", "MLFS_MAX_BODY_BYTES": "4096",
           "MLFS_CACHE_BUDGET_MB": "50", "TEST_BUILD_HOLD_S": str(hold_build_s)}
    entry = [str(REPO / "tests" / "server" / "replica_serve.py")] if hold_build_s else ["-m", "server.cli"]
    proc = subprocess.Popen([sys.executable, *entry, "serve", "--store", str(store), "--port", str(port)],
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


SCHEMATHESIS_CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"


def run_schemathesis(url: str, max_examples: int, max_time_s: int, seed: int = 1) -> subprocess.CompletedProcess:
    """schemathesis' CLI over every operation; it runs in a scratch folder (it keeps a cache in its cwd)."""
    # one worker: hypothesis' lambda-source parsing is not thread-safe on CPython 3.11 (AST recursion errors)
    with tempfile.TemporaryDirectory(prefix="mlfs-schemathesis-") as cwd:
        return subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
                               "--checks", SCHEMATHESIS_CHECKS, "-H", f"Authorization: Bearer {TOKEN}",
                               "--max-examples", str(max_examples), "--max-time", str(max_time_s), "--workers", "1",
                               "--seed", str(seed), "--request-timeout", "120"],
                              capture_output=True, text=True, timeout=max_time_s + 240, cwd=cwd)
