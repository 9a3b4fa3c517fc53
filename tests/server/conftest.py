"""Fixtures of the delivery-server tests: a tiny store and a real uvicorn server over it."""

from __future__ import annotations

import pytest


# Module scope: each test module gets its own store and uvicorn.
@pytest.fixture(scope="module")
def store(tmp_path_factory, make_store):
    """A store serving a tiny random BERT as model ``tiny``."""
    return make_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def server(store):
    """The base URL of a real uvicorn server on a loopback port over ``store``."""
    from helpers.store import running_server

    with running_server(store) as url:
        yield url
