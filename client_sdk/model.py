"""A loaded artifact: an onnxruntime session plus the artifact's tokenizer, for predict / embed / generate.

Thread-safe: the tokenizer is configured once at load and only read afterwards, and onnxruntime sessions
may be run from several threads at once. Labels, maximum length, pooling and special token ids come from
the manifest's ``device`` block.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .errors import ModelError
from .latency import empty_past, open_session


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    probabilities: dict[str, float]
    artifact_id: str  # which model answered
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end-of-sequence token or a stop string) or "length"
    artifact_id: str


class _Tokenizers:
    """Configured tokenizers shared between handles, keyed by the tokenizer file's verified sha256 and the settings
    applied to it. ``Tokenizer.from_file`` holds the GIL while it parses (about 0.1 s for a 30k vocabulary), which
    stalls every call running meanwhile; slices of one base share their tokenizer, so a swap between them loads
    none. Handles only read a tokenizer after configuring it, and tokenizers may encode from several threads."""

    def __init__(self, keep: int = 4) -> None:
        self._items: OrderedDict[tuple, Tokenizer] = OrderedDict()
        self._lock = threading.Lock()
        self.keep = keep

    def get(self, path: Path, sha256: str | None, family: str, max_len: int, pad_id: int) -> Tokenizer:
        key = (sha256, family, max_len, pad_id)
        with self._lock:
            if sha256 is not None and key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        tokenizer = Tokenizer.from_file(str(path))
        if family == "encoder":
            tokenizer.enable_truncation(max_len)
            tokenizer.enable_padding(pad_id=pad_id)
        else:
            tokenizer.no_truncation()
            tokenizer.no_padding()
        if sha256 is not None:
            with self._lock:
                self._items[key] = tokenizer
                while len(self._items) > self.keep:
                    self._items.popitem(last=False)
        return tokenizer


_TOKENIZERS = _Tokenizers()


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


class ModelHandle:
    """One artifact folder (verified by the cache before it gets here) ready to run."""

    def __init__(self, folder: Path, manifest: dict[str, Any], artifact_id: str, threads: int = 1,
                 batch_size: int = 32) -> None:
        self.folder, self.manifest, self.artifact_id = Path(folder), manifest, artifact_id
        self.family: str = manifest.get("family", "encoder")
        self.config: dict[str, Any] = manifest.get("config", {})
        self.threads, self.batch_size = threads, batch_size
        dims = manifest.get("dims", {})
        device = manifest.get("device") or {}
        self.max_positions = int(dims.get("max_positions") or 512)  # what the graph can take
        # inputs are cut at the length the model was trained (and its quality measured) at
        self.max_len = min(int(device.get("max_seq_len") or self.max_positions), self.max_positions)
        special = device.get("tokenizer") or {}
        self.add_special_tokens = bool(special.get("add_special_tokens", self.family == "encoder"))
        self.pad_id = special.get("pad_token_id", dims.get("pad_token_id")) or 0
        eos = special.get("eos_token_id")
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        # decoders: the manifest's generation block (chat template, stop tokens, sampling defaults); its stop
        # tokens end generate() by default, like the eos id above
        self.generation: dict[str, Any] = manifest.get("generation") or {}
        self.eos_ids |= {int(t) for t in self.generation.get("stop_token_ids") or []}
        self.labels: list[str] | None = device.get("labels")
        if self.labels is None and dims.get("num_labels"):
            self.labels = [f"LABEL_{i}" for i in range(dims["num_labels"])]
        tok_path = self.folder / "tokenizer.json"
        if not tok_path.is_file():
            raise ModelError(f"artifact {artifact_id[:12]} has no tokenizer.json; it cannot take text")
        sha256 = (manifest.get("files") or {}).get("tokenizer.json", {}).get("sha256")  # the cache verified the file
        # the tokenizer is parsed (GIL held) while onnxruntime builds the session (GIL released): in parallel
        tokenizer: dict[str, Any] = {}

        def parse() -> None:
            try:
                tokenizer["value"] = _TOKENIZERS.get(tok_path, sha256, self.family, self.max_len, int(self.pad_id))
            except Exception as err:  # re-raised below, on the loading thread
                tokenizer["error"] = err

        parser = threading.Thread(target=parse, name="mlfs-tokenizer", daemon=True)
        parser.start()
        try:
            self.session = open_session(self.folder / "model.onnx", threads)
        finally:
            parser.join()
        if "error" in tokenizer:
            raise tokenizer["error"]
        self.tokenizer = tokenizer["value"]
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    # ----- encoders -----------------------------------------------------------------------------------------
    def _encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer.encode_batch(list(texts), add_special_tokens=self.add_special_tokens)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

    def _run_encoder(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        if self.family != "encoder":
            raise ModelError(f"artifact {self.artifact_id[:12]} is a decoder: use generate()")
        if isinstance(texts, str):
            raise ModelError("pass a list of texts, not one string")
        embeddings, logits = [], []
        for start in range(0, len(texts), self.batch_size):
            out = self.session.run(None, self._encode(texts[start : start + self.batch_size]))
            embeddings.append(out[0])
            if len(out) > 1:
                logits.append(out[1])
        if not embeddings:
            return np.zeros((0, 0), np.float32), None
        return np.concatenate(embeddings), (np.concatenate(logits) if logits else None)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled embeddings, one row per text."""
        return self._run_encoder(texts)[0]

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Label and probabilities per text (a classification artifact)."""
        _, logits = self._run_encoder(texts)
        if logits is None:
            if not texts:
                return []
            raise ModelError(f"artifact {self.artifact_id[:12]} has no classification head: use embed()")
        probs = _softmax(logits.astype(np.float64))
        labels = self.labels or [f"LABEL_{i}" for i in range(probs.shape[1])]
        return [Prediction(labels[int(p.argmax())], float(p.max()), dict(zip(labels, map(float, p))),
                           self.artifact_id, self.config) for p in probs]

    # ----- decoders -----------------------------------------------------------------------------------------
    def generate(self, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int | None = None,
                 stop: Sequence[str] = (), seed: int | None = None) -> Generation:
        """Decode with the exported key/value cache: one prefill, then one token per step. ``temperature`` 0
        is greedy; otherwise sampling from the top ``top_k`` (all when None) at that temperature."""
        if self.family != "decoder":
            raise ModelError(f"artifact {self.artifact_id[:12]} is an encoder: use predict() or embed()")
        if max_new_tokens < 0 or temperature < 0 or (top_k is not None and top_k < 1):
            raise ModelError("max_new_tokens and temperature must be >= 0, top_k >= 1")
        ids = self.tokenizer.encode(prompt, add_special_tokens=self.add_special_tokens).ids
        if not ids:
            raise ModelError("the prompt is empty after tokenisation")
        if len(ids) + max_new_tokens > self.max_positions:
            raise ModelError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                             f"{self.max_positions} positions")
        rng = np.random.default_rng(seed)
        past = empty_past(self.session)
        step_ids, done_len, out_ids = ids, 0, []
        finish, text = "length", ""
        for _ in range(max_new_tokens):
            n = len(step_ids)
            feeds = {"input_ids": np.array([step_ids], dtype=np.int64),
                     "attention_mask": np.ones((1, done_len + n), dtype=np.int64),
                     "position_ids": np.arange(done_len, done_len + n, dtype=np.int64)[None], **past}
            outs = self.session.run(None, feeds)
            for name, value in zip(self.output_names[1:], outs[1:]):
                past["past." + name[len("present."):]] = value
            done_len += n
            token = self._pick(outs[0][0, -1].astype(np.float64), temperature, top_k, rng)
            if token in self.eos_ids:
                finish = "stop"
                break
            out_ids.append(token)
            text = self.tokenizer.decode(out_ids)
            hit = min((text.find(s) for s in stop if s and s in text), default=-1)
            if hit >= 0:
                text, finish = text[:hit], "stop"
                break
            step_ids = [token]
        else:
            text = self.tokenizer.decode(out_ids)
        return Generation(text, out_ids, finish, self.artifact_id)

    @staticmethod
    def _pick(logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator) -> int:
        if temperature == 0:
            return int(logits.argmax())
        if top_k is not None and top_k < logits.size:
            cut = np.partition(logits, -top_k)[-top_k]
            logits = np.where(logits >= cut, logits, -np.inf)
        p = _softmax(logits / temperature)
        return int(rng.choice(logits.size, p=p))

    # ----- checks -------------------------------------------------------------------------------------------
    def smoke(self) -> float:
        """One small inference on fixed input; raises ModelError unless every output is finite. Returns seconds."""
        start = time.perf_counter()
        if self.family == "encoder":
            out = self.session.run(None, self._encode(["smoke test"]))
        else:
            out = self.session.run(None, {"input_ids": np.array([[1, 2]], np.int64), "attention_mask": np.ones((1, 2), np.int64),
                                          "position_ids": np.array([[0, 1]], np.int64), **empty_past(self.session)})
        if not all(np.isfinite(o).all() for o in out):
            raise ModelError(f"artifact {self.artifact_id[:12]} gives non-finite outputs on a smoke inference")
        return time.perf_counter() - start
