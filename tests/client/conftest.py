"""Client SDK fixtures: a store serving a tiny classifier (``tiny-cls``) and a real uvicorn server over it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cls_store(tmp_path_factory):
    from helpers.classifier_store import make_classifier_store

    return make_classifier_store(tmp_path_factory.mktemp("cls-store"))


@pytest.fixture(scope="module")
def cls_server(cls_store):
    from helpers.store import running_server

    # one device's report may set an estimate here (the server's default waits for 3 distinct clients)
    with running_server(cls_store, build_wait_s=120, telemetry_min_clients=1) as url:
        yield url
