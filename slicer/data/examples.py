"""A data set folder tokenised for a base: the train and evaluation splits the trainer and evaluation use."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..spec.vocab import CLASSIFICATION, Family, Task
from .batching import Examples, tokenize_pairs, tokenize_stream
from .calibration import load_tokenizer
from .readers import load_dataset_dir


def load_examples(base_dir: Path, data_dir: str | Path, task: Task, max_len: int, family: Family) -> tuple[Examples, Examples, dict[str, Any]]:
    """Tokenised train and evaluation splits, and what the report says about the data."""
    tokenizer = load_tokenizer(base_dir)
    train, dev = load_dataset_dir(data_dir, task)
    if task == CLASSIFICATION:
        info = {"train": len(train), "dev": len(dev), "label_names": train.label_names,
                "fingerprint": hashlib.sha256((train.fingerprint() + dev.fingerprint()).encode()).hexdigest()}
        return (tokenize_pairs(tokenizer, train.texts, train.labels, max_len, family),
                tokenize_pairs(tokenizer, dev.texts, dev.labels, max_len, family), info)
    train_ex, dev_ex = tokenize_stream(tokenizer, train, max_len, family), tokenize_stream(tokenizer, dev, max_len, family)
    info = {"train_blocks": len(train_ex), "val_blocks": len(dev_ex), "block": max_len,
            "fingerprint": hashlib.sha256((train + "\0" + dev).encode()).hexdigest()}
    return train_ex, dev_ex, info
