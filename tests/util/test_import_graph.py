"""The layout stays layered: no import cycles, and the slicer library never imports the application."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "benchmarks" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_cycles_and_slicer_never_imports_the_application(capsys):
    assert _import_graph().main(["--root", str(ROOT), "slicer", "server", "client_sdk"]) == 0, capsys.readouterr().out


def test_the_graph_finds_a_cycle(tmp_path):
    """The check can fail: two modules importing each other are one cycle."""
    g = _import_graph()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from . import b\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from .a import x\n")
    mods = g.modules(tmp_path, ["pkg"])
    assert g.cycles(sorted(mods), g.edges(mods)) == [["pkg.a", "pkg.b"]]
