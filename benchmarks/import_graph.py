"""The import graph of the project's packages, read from the source with ``ast`` (nothing is imported).

    python benchmarks/import_graph.py [--root DIR] [PACKAGE ...]      (default packages: slicer server client_sdk)

Prints the number of modules, import edges (module -> module, lazy imports inside functions included) and
cycles (strongly connected components), the edges between slicer's subpackages, and any import of ``server``
or ``client_sdk`` from ``slicer``. Exits 1 when there is a cycle or ``slicer`` imports the application, so CI
or a reviewer can run it as a check. ``--root`` points at another checkout (e.g. an older commit's
``git worktree``) to compare before and after.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path


def modules(root: Path, packages: list[str]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    found = {}
    for package in packages:
        for f in sorted((root / package).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return found


def edges(mods: dict[str, tuple[Path, bool]]) -> set[tuple[str, str]]:
    """(importer, imported) for every import that names a module of ``mods`` (the deepest one it names)."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    found = set()
    for m, (f, is_pkg) in mods.items():
        pkg = m if is_pkg else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for t in targets:
                r = resolve(t)
                if r and r != m:
                    found.add((m, r))
                    break
    return found


def cycles(nodes: list[str], graph_edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    succ = {n: sorted(b for a, b in graph_edges if a == n) for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(nodes) + 100))
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "slicer" else parts[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("packages", nargs="*", default=["slicer", "server", "client_sdk"])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = ap.parse_args(argv)
    mods = modules(args.root, args.packages)
    found = edges(mods)
    loops = cycles(sorted(mods), found)
    print(f"modules {len(mods)}  edges {len(found)}  cycles {len(loops)}")
    for loop in loops:
        print("  cycle:", " <-> ".join(loop))
    between = Counter((subpackage(a), subpackage(b)) for a, b in found
                      if a.startswith("slicer.") and subpackage(a) != subpackage(b))
    if between:
        print("edges between slicer's subpackages (importer -> imported: count):")
        for (a, b), n in sorted(between.items()):
            print(f"  {a} -> {b}: {n}")
    upward = sorted((a, b) for a, b in found if a.split(".")[0] == "slicer" and b.split(".")[0] != "slicer")
    for a, b in upward:
        print("  slicer imports outside slicer:", a, "->", b)
    return 1 if loops or upward else 0


if __name__ == "__main__":
    sys.exit(main())
