"""The client with a server that answers 202 while it builds, then goes away and comes back on the same port."""

from __future__ import annotations

import socket

from helpers.classifier_store import make_classifier_store
from helpers.faults import FaultyTransport
from helpers.store import running_server

from client_sdk import Backoff, Budget, Client, Monitor, SimulatedProbe, SwapPolicy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_client_waits_out_202_serves_from_its_cache_offline_and_recovers(tmp_path):
    store = make_classifier_store(tmp_path / "store")
    port = free_port()
    probe = SimulatedProbe(1000)
    quick = Backoff(attempts=2, first_s=0.05, max_s=0.3)  # Retry-After says 10 s: the cap keeps the test short
    with running_server(store, port=port, build_wait_s=0) as url:
        recorder = FaultyTransport()
        client = Client(url, "tiny-cls", probe=probe, cache_dir=tmp_path / "device", count_loaded_model=False,
                        budget=Budget(precision="fp32"), backoff=quick, transport=recorder)
        big = client.load()  # the first resolve answers 202 (building); the client polls until it is built
        resolves = [status for _, path, _, status, _ in recorder.log if path == "/v1/resolve"]
        assert resolves[0] == 202 and resolves[-1] == 200
        big_answer = client.predict(["w1 w2 w3"])[0]
        client.switch(big.memory_mb - 0.05)  # cache a smaller model too
        small = client.current
        assert small.artifact_id != big.artifact_id and small.memory_mb < big.memory_mb
        client.switch(Budget(precision="fp32"))
        assert client.current.artifact_id == big.artifact_id
    # the server is gone: calls go on from the loaded model
    assert client.predict(["w1 w2 w3"])[0] == big_answer
    # stepped by the test alone (no monitor thread): each step acts on the memory the test has just set
    monitor = Monitor(client, SwapPolicy(cooldown_s=0, up_polls=1, offline_retry_s=0.0, offline_retry_max_s=0.0))
    probe.set(memory_available_mb=big.memory_mb - 0.05)  # memory drops while offline
    event = monitor.step()
    assert event is not None and event.to_id == small.artifact_id  # the best cached fit for the lower budget
    fallback = client.events.of("offline_fallback")
    assert fallback and fallback[-1].to_id == small.artifact_id and client.offline
    assert client.predict(["w1 w2 w3"])[0].artifact_id == small.artifact_id
    # nothing cached fits a budget below the smallest: the current model keeps serving
    probe.set(memory_available_mb=1.0)
    assert monitor.step() is None and client.current.artifact_id == small.artifact_id
    # the server returns on the same address; memory is back: the client asks it and moves up
    probe.set(memory_available_mb=1000)
    with running_server(store, port=port, build_wait_s=0):
        event = monitor.step()
        assert event is not None and event.to_id == big.artifact_id
        assert client.events.of("server_back") and not client.offline
    client.close()
