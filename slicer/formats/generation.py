"""What a chat device needs beside the graph and the tokenizer (issue 18.5): the chat template, the special tokens,
the stop tokens and the generation defaults, read from the teacher's Hugging Face files.

Sources, as transformers reads them: ``tokenizer_config.json`` (``chat_template`` and the special tokens by text;
a newer folder keeps the template in ``chat_template.jinja``), ``generation_config.json`` (``eos_token_id``, an id
or a list, wins over ``config.json``; the sampling defaults) and ``tokenizer.json`` (the special tokens' ids).
Torch-free: the manifest and ``mlfs slice`` both use it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CHAT_TEMPLATE_FILE = "chat_template.jinja"
GENERATION_CONFIG_FILE = "generation_config.json"
SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")
# generation_config.json keys a device's decoding loop uses; the rest (transformers' bookkeeping) is left out
DEFAULT_KEYS = ("max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "min_p",
                "repetition_penalty", "no_repeat_ngram_size")


@dataclass(frozen=True)
class TextGeneration:
    """The manifest's ``generation`` block (decoders)."""

    chat_template: str | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, ... -> text
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)  # generation ends at any of these (eos ids)
    defaults: dict[str, Any] = field(default_factory=dict)  # sampling defaults from generation_config.json

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TextGeneration:
        data = data or {}
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def from_folder(cls, folder: Path) -> TextGeneration:
        """Read from a teacher's (Hugging Face) folder; absent files leave their fields empty."""
        folder = Path(folder)
        tok_cfg = _json(folder / "tokenizer_config.json")
        config = _json(folder / "config.json")
        gen = _json(folder / GENERATION_CONFIG_FILE)
        template = tok_cfg.get("chat_template")
        if (folder / CHAT_TEMPLATE_FILE).is_file():  # the newer layout keeps it in its own file
            template = (folder / CHAT_TEMPLATE_FILE).read_text()
        if isinstance(template, list):  # several named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        special = {k: _token_text(tok_cfg.get(k)) for k in SPECIAL_TOKENS if _token_text(tok_cfg.get(k))}
        ids = _token_ids(folder / "tokenizer.json")
        merged = {**config, **{k: v for k, v in gen.items() if v is not None}}  # generation_config wins
        stop = _id_list(merged.get("eos_token_id"))
        if special.get("eos_token") in ids and ids[special["eos_token"]] not in stop:
            stop.append(ids[special["eos_token"]])  # the tokenizer's end of turn ends a chat reply too
        pad = merged.get("pad_token_id", ids.get(special.get("pad_token", "")))
        bos = merged.get("bos_token_id", ids.get(special.get("bos_token", "")))
        return cls(template if isinstance(template, str) else None, special, bos, pad, stop,
                   {k: gen[k] for k in DEFAULT_KEYS if gen.get(k) is not None})


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as text (tokenizer_config.json may hold an AddedToken dict)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _token_ids(tokenizer_json: Path) -> dict[str, int]:
    """Added (special) tokens' ids from tokenizer.json, without loading the tokenizer."""
    data = _json(tokenizer_json)
    return {t["content"]: int(t["id"]) for t in data.get("added_tokens", []) if "content" in t and "id" in t}


def _id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]
