"""A delivery-server store around a tiny random BERT, and a real uvicorn server on a loopback port.

Building a store needs only torch and transformers; the server's packages load when a server is started."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertModel

TOKEN = "s3cret-operator-token"
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
    from server.settings import Settings

    port = settings.pop("port", None)
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    options = {"operator_token": TOKEN, "build_wait_s": 120, "cache_budget_mb": 100, "max_body_bytes": 4096, **settings}
    srv = uvicorn.Server(uvicorn.Config(create_app(Settings(store=store, port=port, **options)), host="127.0.0.1",
                                        port=port, log_level="warning"))
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
