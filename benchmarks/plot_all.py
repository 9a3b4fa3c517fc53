"""Redraw every benchmark figure from the result JSONs (nothing is re-run): ``python benchmarks/plot_all.py``.

First refreshes the derived ``palette-quality.json`` from its inputs (palette_quality.py: reading only), so a
refreshed latency or baseline JSON shows in the pictures too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from bench_record import RESULTS, console
from palette_quality import PALETTE, write_palette_quality
from plots import render, unplotted


def main(results: Annotated[Path, typer.Option(help="Folder of result JSONs; the PNGs go beside them.")] = RESULTS,
         palette: Annotated[Path, typer.Option(help="The palette whose quality is drawn.")] = PALETTE) -> None:
    write_palette_quality(results, palette, render_figures=False)
    failed: list[str] = []
    for png in render(results, failed=failed):
        console.print(f"wrote {png}")
    left = unplotted(results)
    if left:
        console.print(f"[yellow]no figure reads: {', '.join(left)}[/] (add a drawing to benchmarks/plots.py)")
    for line in failed:
        console.print(f"[red]figure not drawn[/] {line}")
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
