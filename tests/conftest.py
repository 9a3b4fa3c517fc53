"""Shared fixtures for the unit tests."""

from __future__ import annotations

# ----- tiny model dims (unit tests build models from these; no checkpoints, no network) -----------------------
import pytest as _pytest
from helpers.dims import minilm_dims, tiny_decoder_dims, tiny_encoder_dims

from slicer.spec.dims import ModelDims as _ModelDims


@_pytest.fixture(scope="session")
def minilm() -> _ModelDims:
    """all-MiniLM-L6-v2's architecture (no weights needed for counting)."""
    return minilm_dims()


@_pytest.fixture(scope="session")
def encoder_dims() -> _ModelDims:
    return tiny_encoder_dims()


@_pytest.fixture(scope="session")
def decoder_dims() -> _ModelDims:
    return tiny_decoder_dims()


@_pytest.fixture(scope="session", params=["encoder", "decoder"])
def tiny_dims(request) -> _ModelDims:
    """Both tiny families, one test run each."""
    return tiny_encoder_dims() if request.param == "encoder" else tiny_decoder_dims()


# ----- inputs for tiny models (helpers.models.padded_batch: random ids, the second row ends in padding) -------
@_pytest.fixture
def tiny_batch(tiny_dims):
    """The batch a test of a tiny family feeds its models (seed 0, 2 rows of 7, the last 2 of row 2 padded).
    A test that needs a second, different batch calls ``helpers.models.padded_batch`` with another seed."""
    from helpers.models import padded_batch

    return padded_batch(tiny_dims)


@_pytest.fixture
def encoder_batch(encoder_dims):
    """:func:`tiny_batch` for tests that run the tiny encoder alone."""
    from helpers.models import padded_batch

    return padded_batch(encoder_dims)


# ----- real teachers (slow tests; prepared once per machine into the data home) ------------------------------
from collections.abc import Callable as _Callable  # noqa: E402
from pathlib import Path as _Path  # noqa: E402


@_pytest.fixture(scope="session")
def prepared_teacher() -> _Callable[[str], _Path]:
    """``prepared(name) -> folder``: the teacher's checkpoint folder in the data home ($MLFS_HOME or
    ~/.cache/mlfs), prepared on first use (smollm2 takes about a minute once, then is instant)."""
    from slicer.formats.teachers import prepare_teacher
    from slicer.paths import data_home

    home = data_home()  # fixed for the session, whatever a test later does to $MLFS_HOME
    folders: dict[str, _Path] = {}

    def prepared(name: str) -> _Path:
        if name not in folders:
            folders[name] = prepare_teacher(name, home=home)
        return folders[name]

    return prepared


@_pytest.fixture(scope="module")
def single_thread():
    """Tiny models run fastest on one thread, and do not stall when other processes hold the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----- a tiny store (helpers.store): a random BERT checkpoint + tokenizer served as model ``tiny`` ------------
@_pytest.fixture(scope="session")
def make_store():
    """``make_store(root, layers=4, seed=0) -> root``: ``root/tiny-bert`` (a Hugging Face checkpoint and
    tokenizer) and a ``models.json`` serving it as model ``tiny``."""
    from helpers.store import make_store

    return make_store


# ----- import isolation: run Python with some packages "not installed" ---------------------------------------
_BLOCKER = """
import sys
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
"""


@_pytest.fixture(scope="session")
def python_without():
    """``run(code, blocked, *argv) -> CompletedProcess``: ``python -c code`` in a subprocess (repository root on
    the path) where importing any top-level package named in ``blocked`` fails as if it were not installed."""
    import os
    import subprocess
    import sys

    root = str(_Path(__file__).resolve().parent.parent)

    def run(code: str, blocked: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        return subprocess.run([sys.executable, "-c", _BLOCKER.format(blocked=set(blocked)) + code, *argv],
                              capture_output=True, text=True, env=env, timeout=120, cwd=root)

    return run
