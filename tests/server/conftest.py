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


@pytest.fixture(scope="session")
def pg_admin():
    """A throwaway PostgreSQL 15 cluster for the session (as the ``postgres`` user); skipped without its binaries."""
    from helpers import postgres

    reason = postgres.missing()
    if reason:
        pytest.skip(reason)
    with postgres.cluster() as url:
        yield url


@pytest.fixture
def pg_url(pg_admin):
    """The URL of a new, empty database in the session's cluster."""
    from helpers.postgres import fresh_database

    return fresh_database(pg_admin)
