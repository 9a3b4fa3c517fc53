"""A data set folder tokenised for a base: the train and evaluation splits the trainer and evaluation use."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..spec.vocab import CLASSIFICATION, Family, Task
from .batching import Examples, tokenize_pairs, tokenize_stream
from .calibration import load_tokenizer
from .readers import ClassificationData, ReadOptions, load_dataset_dir, load_eval_split, split_files


def _eval_info(files: dict[str, Path], task: Task, dev: ClassificationData | str, n: int) -> dict[str, Any]:
    """Which data set, split and file a palette's numbers come from, and the split's content fingerprint."""
    path = files["eval"]
    fp = dev.fingerprint() if isinstance(dev, ClassificationData) else hashlib.sha256(dev.encode()).hexdigest()
    return {"name": path.parent.name, "split": "dev" if task == CLASSIFICATION else "val", "file": path.name,
            "fingerprint": fp, "examples": n}


def load_examples(base_dir: Path, data_dir: str | Path, task: Task, max_len: int, family: Family,
                  read: ReadOptions = ReadOptions()) -> tuple[Examples, Examples, dict[str, Any]]:
    """Tokenised train and evaluation splits, and what the report says about the data (``eval``: see
    :func:`load_eval_examples`)."""
    tokenizer = load_tokenizer(base_dir)
    files = split_files(data_dir, task)
    train, dev = load_dataset_dir(data_dir, task, read.text_columns, read.label_column, skip_bad=read.skip_bad,
                                  fold_label_case=read.fold_label_case)
    if task == CLASSIFICATION:
        info = {"train": len(train), "dev": len(dev), "label_names": train.label_names, "read": read.to_dict(),
                "fingerprint": hashlib.sha256((train.fingerprint() + dev.fingerprint()).encode()).hexdigest()}
        train_ex = tokenize_pairs(tokenizer, train.texts, train.labels, max_len, family)
        dev_ex = tokenize_pairs(tokenizer, dev.texts, dev.labels, max_len, family)
    else:
        train_ex, dev_ex = tokenize_stream(tokenizer, train, max_len, family), tokenize_stream(tokenizer, dev, max_len, family)
        info = {"train_blocks": len(train_ex), "val_blocks": len(dev_ex), "block": max_len,
                "fingerprint": hashlib.sha256((train + "\0" + dev).encode()).hexdigest()}
    info["eval"] = _eval_info(files, task, dev, len(dev_ex))
    return train_ex, dev_ex, info


def load_eval_examples(base_dir: Path, data_dir: str | Path, task: Task, max_len: int, family: Family,
                       label_names: list[str] | None = None,
                       read: ReadOptions = ReadOptions()) -> tuple[Examples, dict[str, Any]]:
    """The tokenised evaluation split alone (the training file is not read), and where it came from:
    ``{name, split, file, fingerprint, examples}``. Labels get the ids of ``label_names`` (the model's)."""
    tokenizer = load_tokenizer(base_dir)
    dev, path = load_eval_split(data_dir, task, label_names, read)
    if isinstance(dev, ClassificationData):
        ex = tokenize_pairs(tokenizer, dev.texts, dev.labels, max_len, family)
    else:
        ex = tokenize_stream(tokenizer, dev, max_len, family)
    return ex, _eval_info({"eval": path}, task, dev, len(ex))
