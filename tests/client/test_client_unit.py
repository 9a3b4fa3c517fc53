"""Client SDK pieces that need no server: the light import, the probe's cgroup reading, the device cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client_sdk import CachedArtifact, CacheError, DeviceCache, IntegrityError, Probe, SimulatedProbe
from client_sdk.cache import rank
from client_sdk.probe import read_cgroup

ROOT = Path(__file__).resolve().parents[2]
BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'transformers', 'fastapi', 'uvicorn', 'pydantic'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def test_import_and_the_device_command_load_no_torch_transformers_or_fastapi():
    code = BLOCKER + "import client_sdk, client_sdk.cli\nprint(sorted(client_sdk.__all__)[:3])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    # the blocker works: the same subprocess cannot import torch
    bad = subprocess.run([sys.executable, "-c", BLOCKER + "import torch"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "blocked: torch" in bad.stderr


def fake_cgroup(root: Path, memory_max: str, memory_current: int, cpu_max: str) -> Path:
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / "memory.max").write_text(memory_max + "\n")
    (root / "memory.current").write_text(f"{memory_current}\n")
    (root / "cpu.max").write_text(cpu_max + "\n")
    proc = root / "proc-self-cgroup"
    proc.write_text("0::/\n")
    return proc


def test_the_probe_reads_a_cgroup_v2_memory_limit_and_cpu_quota(tmp_path):
    proc = fake_cgroup(tmp_path, str(512 * 2**20), 128 * 2**20, "150000 100000")
    report = Probe(profile="small-2t-1g", cgroup_root=tmp_path, proc_cgroup=proc, measure_speed=False)()
    assert report.memory_available_mb == pytest.approx(384.0)  # memory.max - memory.current (this host has more free)
    assert report.memory_source == "cgroup"
    assert report.cpu_count == 1  # 1.5 CPUs of quota -> one usable CPU
    assert report.device_info() == {"memory_available_mb": 384.0, "cpu_count": 1, "profile": "small-2t-1g"}
    # an unlimited cgroup leaves the system's figure
    proc = fake_cgroup(tmp_path, "max", 128 * 2**20, "max 100000")
    report = Probe(cgroup_root=tmp_path, proc_cgroup=proc, measure_speed=False)()
    assert report.memory_source == "system" and report.memory_available_mb > 0
    assert read_cgroup(tmp_path).cpu_quota is None


def test_the_probe_finds_its_own_nested_cgroup(tmp_path):
    nested = tmp_path / "app.slice" / "mlfs.scope"
    nested.mkdir(parents=True)
    fake_cgroup(tmp_path, "max", 0, "max")
    fake_cgroup(nested, str(100 * 2**20), 40 * 2**20, "200000 100000")
    proc = tmp_path / "proc"
    proc.write_text("0::/app.slice/mlfs.scope\n")
    report = Probe(cgroup_root=tmp_path, proc_cgroup=proc, measure_speed=False)()
    assert report.memory_available_mb == pytest.approx(60.0) and report.memory_source == "cgroup"


def test_a_simulated_probe_changes_when_told():
    probe = SimulatedProbe(300, cpu_count=2, profile="p")
    probe.set(memory_available_mb=50, on_battery=True)
    r = probe()
    assert (r.memory_available_mb, r.cpu_count, r.on_battery, r.profile) == (50, 2, True, "p")


def stage(cache: DeviceCache, artifact_id: str, size: int, tamper: bool = False) -> CachedArtifact:
    data = os.urandom(size)
    staged = cache.staging(artifact_id)
    (staged / "model.onnx").write_bytes(data[:-1] if tamper else data)
    manifest = {"files": {"model.onnx": {"sha256": hashlib.sha256(data).hexdigest(), "size": size}}}
    (staged / "manifest.json").write_text(json.dumps(manifest))
    return CachedArtifact(artifact_id, "m", "http://s", {}, "fp32", 10.0, None, None, size)


def test_the_cache_evicts_least_recently_used_but_never_what_is_in_use(tmp_path):
    cache = DeviceCache(tmp_path, budget_mb=2.5)
    a, b, c = ("a" * 64), ("b" * 64), ("c" * 64)
    cache.install(stage(cache, a, 2**20))
    cache.hold(a)  # loaded: must survive although least recently used
    time.sleep(0.01)
    cache.install(stage(cache, b, 2**20))
    time.sleep(0.01)
    cache.install(stage(cache, c, 2**20))  # 3 MiB > 2.5 MiB: the oldest not held goes
    ids = {r.artifact_id for r in cache.entries()}
    assert ids == {a, c}
    cache.release(a)
    cache.touch(c)
    cache.budget_bytes = int(1.01 * 2**20)  # one artifact (and its manifest)
    assert cache.evict() == [a]
    assert cache.verified_manifest(c)["files"]["model.onnx"]["size"] == 2**20


def test_a_tampered_or_truncated_file_is_never_installed_nor_loaded(tmp_path):
    cache = DeviceCache(tmp_path)
    with pytest.raises(IntegrityError, match="differs from its manifest"):
        cache.install(stage(cache, "d" * 64, 1000, tamper=True))
    assert cache.entries() == []
    cache.install(stage(cache, "e" * 64, 1000))
    model = cache.folder("e" * 64) / "model.onnx"
    model.write_bytes(model.read_bytes()[:500])  # truncated on disk after install
    with pytest.raises(IntegrityError):
        cache.verified_manifest("e" * 64)
    assert cache.get("e" * 64) is None and not model.exists()


def test_artifact_ids_cannot_name_paths(tmp_path):
    cache = DeviceCache(tmp_path)
    for bad in ("../" + "a" * 61, "A" * 64, "a" * 63):
        with pytest.raises(CacheError):
            cache.folder(bad)


def test_the_best_cached_fit_is_one_order_with_a_deterministic_tie_break(tmp_path):
    cache = DeviceCache(tmp_path)

    def row(c: str, memory_mb: float, quality: float | None, precision: str = "fp32") -> CachedArtifact:
        r = stage(cache, c * 64, 10)
        r.memory_mb, r.quality, r.precision = memory_mb, quality, precision
        return r

    rows = [row("1", 20.0, 0.8), row("2", 30.0, 0.9), row("3", 30.0, 0.9), row("4", 40.0, 0.7),
            row("5", 30.0, 0.9, "int8"), row("6", 60.0, None)]
    for r in rows[::-1]:  # installed in reverse: the order of the index must not matter
        cache.install(r)
    best = cache.best_fit("m", "http://s", 50.0)
    assert best is not None and best.artifact_id == "3" * 64  # quality, then size, then fp32, then the id
    assert best.artifact_id == max(rows[:5], key=rank).artifact_id
    assert cache.best_fit("m", "http://s", 50.0, precision="int8").artifact_id == "5" * 64
    assert cache.best_fit("m", "http://s", 25.0).artifact_id == "1" * 64
    assert cache.best_fit("m", "http://s", 10.0) is None
    assert cache.best_fit("m", "http://other", 50.0) is None


def test_a_verified_file_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    import client_sdk.cache as cache_module

    hashed = []
    real = cache_module.sha256_file
    monkeypatch.setattr(cache_module, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    cache = DeviceCache(tmp_path)
    artifact_id = "f" * 64
    cache.install(stage(cache, artifact_id, 4096))  # hashed once, here
    assert hashed == ["model.onnx"] and set(cache.get(artifact_id).verified_stats) == {"model.onnx", "manifest.json"}
    cache.verified_manifest(artifact_id)
    cache.verified_manifest(artifact_id)
    assert hashed == ["model.onnx"]  # inode, size and mtime as verified: no second pass over the file
    model = cache.folder(artifact_id) / "model.onnx"
    os.utime(model)  # touched, contents unchanged: hashed once, then trusted again
    cache.verified_manifest(artifact_id)
    cache.verified_manifest(artifact_id)
    assert hashed == ["model.onnx"] * 2
    with model.open("r+b") as f:  # one byte flipped in place right away: same inode, same size
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    with pytest.raises(IntegrityError, match="differs from its manifest"):
        cache.verified_manifest(artifact_id)
    assert cache.get(artifact_id) is None and not model.exists()


def test_a_flipped_replaced_or_re_manifested_file_is_hashed_again(tmp_path):
    cache = DeviceCache(tmp_path)
    for artifact_id, victim in (("1" * 64, "model.onnx"), ("2" * 64, "manifest.json"), ("3" * 64, "flip")):
        cache.install(stage(cache, artifact_id, 4096))
        folder = cache.folder(artifact_id)
        st = (folder / "model.onnx").stat()
        if victim == "flip":  # in place, at once: whatever the timestamp granularity, the mtime is no longer the stamp
            with (folder / "model.onnx").open("r+b") as f:
                first = f.read(1)[0]
                f.seek(0)
                f.write(bytes([first ^ 0xFF]))
        elif victim == "model.onnx":  # another file of the same size, its mtime set back to the recorded one
            (folder / "other").write_bytes(os.urandom(4096))
            os.replace(folder / "other", folder / "model.onnx")
            os.utime(folder / "model.onnx", ns=(st.st_atime_ns, st.st_mtime_ns))
        else:  # the manifest rewritten to name other bytes, the model's stat untouched
            data = os.urandom(4096)
            manifest = {"files": {"model.onnx": {"sha256": hashlib.sha256(data).hexdigest(), "size": 4096}}}
            (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(IntegrityError):
            cache.verified_manifest(artifact_id)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_background_work_runs_at_a_lower_priority_and_hands_errors_back():
    import threading

    from client_sdk.errors import ModelError
    from client_sdk.priority import at_lower_priority, lower_this_thread

    def own() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = own()  # the process's (pytest's main thread)
    assert at_lower_priority(own, 3) == min(19, before + 3)
    assert own() == before  # the calling thread keeps its priority
    assert at_lower_priority(own, 0) == before

    def lowered_twice() -> int:  # a helper started from an already lowered thread does not go lower still
        lower_this_thread(3)
        return at_lower_priority(own, 3)

    assert at_lower_priority(lowered_twice, 3) == min(19, before + 3)

    def broken():
        raise ModelError("smoke failed")

    with pytest.raises(ModelError, match="smoke failed"):
        at_lower_priority(broken, 3)
