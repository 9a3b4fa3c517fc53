"""Real text for calibration, available offline on every machine: the Python standard library.

Encoders get English prose (module docstrings); decoders get Python source, the paper's decoder domain.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..errors import CheckpointError
from ..spec.vocab import DECODER, ENCODER, Family


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if not p.name.startswith(("test", "_")))


def calibration_texts(family: Family, n: int = 32) -> list[str]:
    """``n`` deterministic snippets: docstring paragraphs (encoder) or source chunks (decoder)."""
    texts: list[str] = []
    for path in _stdlib_files():
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if family == DECODER:
            texts.append(source[:1500])
        else:
            try:
                doc = ast.get_docstring(ast.parse(source)) or ""
            except SyntaxError:
                continue
            texts.extend(p.replace("\n", " ") for p in doc.split("\n\n") if 60 <= len(p) <= 600 and p[0].isalpha())
        if len(texts) >= n:
            break
    return texts[:n]


def load_tokenizer(folder: Path) -> Tokenizer:
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"missing tokenizer: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # the tokenizers library raises bare Exceptions on bad files
        raise CheckpointError(f"{path}: not a valid tokenizer.json ({err})") from None


def encode(tokenizer: Tokenizer, texts: list[str], max_len: int, family: Family) -> dict[str, torch.Tensor]:
    """Right-padded batch of model inputs (``token_type_ids`` only for encoders)."""
    encodings = [e for e in tokenizer.encode_batch(texts)]
    ids = [e.ids[:max_len] for e in encodings]
    width = max(len(i) for i in ids)
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if family == ENCODER:
        batch["token_type_ids"] = torch.zeros_like(input_ids)
    return batch


def calibration_batches(folder: Path, family: Family, n: int = 32, max_len: int = 128, batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    tokenizer, texts = load_tokenizer(folder), calibration_texts(family, n)
    return [encode(tokenizer, texts[i : i + batch_size], max_len, family) for i in range(0, len(texts), batch_size)]
