"""What several ``mlfs`` commands share: consoles that do not cut tables when piped, the data-reading options
(``--text-column``, ``--label-column``, ``--skip-bad``, ``--fold-label-case``), ``--threads``, and hiding the
``<bool>`` type that typer shows beside plain flags in ``--help``."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.console import Console

#: Width when output is not a terminal: wide enough that tables and paths are never cut (a pipe has no width).
PIPE_WIDTH = 1000


def make_console(stderr: bool = False) -> Console:
    """A terminal's own width; piped or redirected, ``PIPE_WIDTH`` (``$COLUMNS`` wins when set)."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=PIPE_WIDTH)
    return console


TextColumnOpt = Annotated[list[str] | None, typer.Option(
    "--text-column", help="Text column of your CSV/TSV/JSONL files (default: text); give it twice for sentence pairs.")]
LabelColumnOpt = Annotated[str | None, typer.Option("--label-column", help="Label column (default: label).")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Skip bad rows (with a warning naming each) instead of failing.")]
FoldCaseOpt = Annotated[bool, typer.Option(
    "--fold-label-case", help="Merge labels that differ only in case ('Positive', 'positive'): labels are lower-cased. "
                              "Without it such labels are an error.")]
EvalExamplesOpt = Annotated[int, typer.Option(
    "--eval-examples", min=0, help="Evaluate on at most N evenly spaced dev examples (0: all); the palette records N.")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", min=1, help="CPU threads for torch (default: torch's choice; on a shared machine 1 can be faster).")]


def read_options(text_column: list[str] | None, label_column: str | None, skip_bad: bool, fold_label_case: bool,
                 recorded: dict[str, Any] | None = None):
    """The flags as :class:`ReadOptions`; flags not given fall back to ``recorded`` (what training used)."""
    from ..data.readers import ReadOptions

    base = ReadOptions.from_dict(recorded)
    return ReadOptions(text_columns=tuple(text_column) if text_column else base.text_columns,
                       label_column=label_column or base.label_column, skip_bad=skip_bad or base.skip_bad,
                       fold_label_case=fold_label_case or base.fold_label_case)


def set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def hide_flag_types(command: Any) -> Any:
    """Drop typer's ``<bool>`` beside plain flags (and ``--help``) in every command's help; returns ``command``."""
    params = list(getattr(command, "params", []))
    help_option = command.get_help_option(command.context_class(command)) if hasattr(command, "get_help_option") else None
    for p in params + ([help_option] if help_option is not None else []):
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        hide_flag_types(sub)
    return command
