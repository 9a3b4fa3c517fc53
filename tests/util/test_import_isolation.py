"""Light parts import without heavy dependencies: each case imports a module in a subprocess where torch,
transformers and fastapi (or what the case lists) are "not installed", and checks none of them got loaded.

Extend ``CASES`` for other light modules (e.g. the client SDK, which must not need torch, transformers or fastapi).
"""

from __future__ import annotations

import pytest

HEAVY = ("torch", "transformers", "fastapi")

CASES = [
    # (module, blocked packages)
    ("slicer", HEAVY),
    ("slicer.spec", HEAVY),
    ("slicer.spec.subnet_config", HEAVY),
    ("slicer.spec.search_space", HEAVY),
    ("slicer.spec.shapes", HEAVY),
    ("slicer.spec.palette", HEAVY),
    ("slicer.spec.vocab", HEAVY),
    ("slicer.errors", HEAVY),
    ("slicer.paths", HEAVY),
    ("slicer.train.report", HEAVY),  # report.json reads without loading a model
    ("slicer.cli.main", (*HEAVY, "server")),  # the library's commands never import the server
]

CHECK = """
import importlib, sys
importlib.import_module(sys.argv[1])
loaded = sorted({m.partition(".")[0] for m in sys.modules} & set(sys.argv[2:]))
assert not loaded, f"{sys.argv[1]} loaded {loaded}"
"""


@pytest.mark.parametrize(("module", "blocked"), CASES, ids=[c[0] for c in CASES])
def test_imports_without_heavy_dependencies(python_without, module, blocked):
    r = python_without(CHECK, blocked, module, *blocked)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_blocker_blocks(python_without):
    """The check above can fail: a module that needs torch does not import with torch blocked."""
    r = python_without(CHECK, HEAVY, "slicer.nn.model", *HEAVY)
    assert r.returncode != 0 and "blocked by the test" in r.stderr


def test_public_api_names_resolve():
    """Every name ``slicer`` exports loads (lazily) and is the object its home module defines."""
    import importlib

    import slicer

    for name in slicer.__all__:
        home = importlib.import_module(slicer._API[name], "slicer")
        assert getattr(slicer, name) is getattr(home, name), name
    with pytest.raises(AttributeError):
        slicer.no_such_name  # noqa: B018
