"""The artifact cache: atomic builds, one build per key, verification, LRU eviction with pins, safe ids."""

from __future__ import annotations

import os
import threading
import time

import pytest

from server.cache import ArtifactCache, CacheError, artifact_key
from server.metadata import SQLiteMetadata

KEY_A = artifact_key("base", "adapters", "cfg-a", "fp32", "v1")
KEY_B = artifact_key("base", "adapters", "cfg-b", "fp32", "v1")
KEY_C = artifact_key("base", "adapters", "cfg-c", "fp32", "v1")


@pytest.fixture
def cache(tmp_path):
    return ArtifactCache(tmp_path / "cache", SQLiteMetadata(tmp_path / "meta.sqlite"), budget_bytes=10_000)


def writer(payload: bytes, calls: list | None = None, delay: float = 0.0):
    def build(folder):
        if calls is not None:
            calls.append(threading.get_ident())
        time.sleep(delay)
        (folder / "model.onnx").write_bytes(payload)
        (folder / "manifest.json").write_text('{"ok": true}')
        return {"precision": "fp32"}
    return build


def test_key_covers_every_input():
    keys = {artifact_key(*args) for args in [("b", "a", "c", "fp32", "v1"), ("B", "a", "c", "fp32", "v1"),
                                             ("b", "A", "c", "fp32", "v1"), ("b", "a", "C", "fp32", "v1"),
                                             ("b", "a", "c", "int8", "v1"), ("b", "a", "c", "fp32", "v2")]}
    assert len(keys) == 6


def test_build_then_serve(cache):
    entry, built = cache.get_or_build(KEY_A, writer(b"x" * 100))
    assert built and entry.file("model.onnx").read_bytes() == b"x" * 100
    again, built = cache.get_or_build(KEY_A, writer(b"never"))
    assert not built and again.record.files == entry.record.files
    assert cache.meta.get_artifact(KEY_A).info == {"precision": "fp32"}


def test_a_failed_build_leaves_nothing_visible(cache):
    def broken(folder):
        (folder / "model.onnx").write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError):
        cache.get_or_build(KEY_A, broken)
    assert cache.get(KEY_A) is None
    assert [p for p in os.listdir(cache.root) if p != ".locks"] == []  # .locks: the cross-process build locks


def test_twenty_concurrent_cold_requests_build_once(cache):
    calls: list = []
    results = []
    barrier = threading.Barrier(20)

    def ask():
        barrier.wait()
        results.append(cache.get_or_build(KEY_A, writer(b"y" * 50, calls, delay=0.3)))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sum(built for _, built in results) == 1
    assert len({e.record.files["model.onnx"]["sha256"] for e, _ in results}) == 1


def test_corruption_is_detected_and_the_entry_dropped(cache, tmp_path):
    cache.get_or_build(KEY_A, writer(b"z" * 100))
    path = cache.root / KEY_A / "model.onnx"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    assert cache.get(KEY_A) is None
    assert not (cache.root / KEY_A).exists()
    # a fresh cache over the same folder (a restart) verifies before serving, too
    cache.get_or_build(KEY_A, writer(b"z" * 100))
    path.write_bytes(b"Z" * 100)
    restarted = ArtifactCache(cache.root, cache.meta, budget_bytes=10_000)
    assert restarted.get(KEY_A) is None


def test_unchanged_files_are_not_rehashed(cache, monkeypatch):
    cache.get_or_build(KEY_A, writer(b"q" * 10))
    cache.get(KEY_A)
    hashed = []
    import server.cache as module

    monkeypatch.setattr(module, "sha256_file", lambda p: hashed.append(p) or "x")
    assert cache.get(KEY_A) is not None and hashed == []


def test_memory_path_answers_only_for_unchanged_entries_this_process_verified(cache, tmp_path):
    """``get_cached`` (what a warm resolve asks on the event loop) never vouches for what it has not verified:
    a changed or missing file, a dropped entry, a fresh process or a store shared by replicas send the caller to
    ``get`` (the database and hashing)."""
    assert cache.get_cached(KEY_A) is None  # never seen
    entry, _ = cache.get_or_build(KEY_A, writer(b"m" * 100))
    assert cache.get_cached(KEY_A).record.files == entry.record.files
    assert ArtifactCache(cache.root, cache.meta, budget_bytes=10_000).get_cached(KEY_A) is None  # a restart
    path = cache.root / KEY_A / "model.onnx"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, other bytes: the fingerprint (ctime) changed
    assert cache.get_cached(KEY_A) is None and cache.get(KEY_A) is None  # get hashes it and drops it
    cache.get_or_build(KEY_B, writer(b"n" * 100))
    (cache.root / KEY_B / "manifest.json").unlink()
    assert cache.get_cached(KEY_B) is None
    cache.get_or_build(KEY_C, writer(b"o" * 100))
    cache.drop(KEY_C)
    assert cache.get_cached(KEY_C) is None
    shared = ArtifactCache(tmp_path / "shared", SQLiteMetadata(tmp_path / "s.sqlite"), 10_000, evict_grace_s=30)
    shared.get_or_build(KEY_A, writer(b"p" * 100))
    assert shared.get_cached(KEY_A) is None and shared.get(KEY_A) is not None  # replicas: the database decides


def test_a_build_hashes_each_file_once(cache, monkeypatch):
    """Files the build reports (hashed while written) are not read again, neither at the build nor at the first
    serve; unreported ones (the manifest) and reports that do not match the file's size are hashed here."""
    import hashlib

    import server.cache as module

    real, hashed = module.sha256_file, []
    monkeypatch.setattr(module, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    payload = b"w" * 64

    def build(folder):
        (folder / "model.onnx").write_bytes(payload)
        (folder / "tokenizer.json").write_text("{}")
        (folder / "manifest.json").write_text('{"ok": true}')
        return {"files": {"model.onnx": {"sha256": hashlib.sha256(payload).hexdigest(), "size": 64},
                          "tokenizer.json": {"sha256": "stale", "size": 999}}}

    entry, built = cache.get_or_build(KEY_A, build)
    assert built and sorted(hashed) == ["manifest.json", "tokenizer.json"]
    assert entry.record.files["model.onnx"]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert "files" not in entry.record.info
    hashed.clear()
    assert cache.get(KEY_A) is not None and hashed == []  # first serve after the build: nothing re-read


def test_lru_eviction_keeps_the_budget_and_spares_pinned_entries(tmp_path):
    cache = ArtifactCache(tmp_path / "c", SQLiteMetadata(tmp_path / "m.sqlite"), budget_bytes=2_500)
    cache.get_or_build(KEY_A, writer(b"a" * 1000))
    cache.pin(KEY_A)
    time.sleep(0.01)
    cache.get_or_build(KEY_B, writer(b"b" * 1000))
    time.sleep(0.01)
    cache.served(KEY_B)
    cache.get_or_build(KEY_C, writer(b"c" * 1000))  # over budget: B is the least recently used unpinned
    assert cache.get(KEY_A) is not None and cache.get(KEY_C) is not None
    assert cache.get(KEY_B) is None
    assert cache.total_bytes() <= 2_500 + 100


@pytest.mark.parametrize("bad", ["../etc/passwd", "..", "a" * 63, "A" * 64, "x" * 64, KEY_A + "/model.onnx", ""])
def test_ids_that_are_not_keys_are_refused(cache, bad):
    with pytest.raises(CacheError):
        cache.get(bad)
    with pytest.raises(CacheError):
        cache.drop(bad)


def test_unknown_file_in_an_entry_is_refused(cache):
    entry, _ = cache.get_or_build(KEY_A, writer(b"x"))
    with pytest.raises(CacheError, match="no file"):
        entry.file("../../meta.sqlite")


def test_a_rewrite_that_restores_size_and_mtime_is_still_rehashed(cache):
    cache.get_or_build(KEY_A, writer(b"m" * 100))
    assert cache.get(KEY_A) is not None  # verified; its fingerprint is remembered
    path = cache.root / KEY_A / "model.onnx"
    st = path.stat()
    path.write_bytes(b"M" * 100)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.get(KEY_A) is None


def test_scrub_rehashes_entries_whose_metadata_did_not_change(cache, monkeypatch):
    cache.get_or_build(KEY_A, writer(b"s" * 100))
    cache.get_or_build(KEY_B, writer(b"t" * 100))
    assert cache.get(KEY_A) is not None and cache.get(KEY_B) is not None
    import server.cache as module

    # bit rot: the bytes differ but nothing in the file's metadata does; only a full re-hash can tell
    real = module.sha256_file
    monkeypatch.setattr(module, "sha256_file", lambda p: "0" * 64 if KEY_B in str(p) else real(p))
    assert cache.get(KEY_B) is not None  # the fingerprint is unchanged: served without hashing
    assert cache.scrub() == [KEY_B]
    assert cache.get(KEY_A) is not None and cache.get(KEY_B) is None


def test_build_locks_leave_no_files_behind(cache):
    cache.get_or_build(KEY_A, writer(b"x" * 10))
    with pytest.raises(RuntimeError):
        cache.get_or_build(KEY_B, lambda folder: (_ for _ in ()).throw(RuntimeError("crash")))
    assert list((cache.root / ".locks").iterdir()) == []


def test_a_removed_lock_file_still_excludes(tmp_path):
    from slicer.paths import file_lock

    inside, overlaps = [], []

    def worker():
        for _ in range(30):
            with file_lock(tmp_path / "k", remove=True):  # each open() is its own lock, as in two processes
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(1)
                time.sleep(0.0005)
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [] and not (tmp_path / "k").exists()
