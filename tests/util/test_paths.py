"""The one atomic folder writer: readers see the old folder or the new one, never a mix, and failures leave
nothing behind."""

from __future__ import annotations

import pytest

from slicer.paths import atomic_directory, remove_stale_partials


def test_new_folder_appears_whole(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as work:
        (work / "a.txt").write_text("a")
        assert not target.exists()  # nothing visible while the block runs
    assert (target / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_existing_folder_is_replaced_not_merged(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as work:
        (work / "new.txt").write_text("new")
        assert (target / "old.txt").exists()
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_keeps_the_old_folder_and_removes_the_work(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as work:
        (work / "half.txt").write_text("half")
        raise RuntimeError("disk full")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_stale_work_folders_of_a_killed_writer_are_removed(tmp_path):
    target = tmp_path / "out"
    (tmp_path / ".out.incomplete-123-456").mkdir()
    (tmp_path / ".out.old-123-456").mkdir()
    (tmp_path / ".other.incomplete-1-1").mkdir()
    assert len(remove_stale_partials(target)) == 2
    assert [p.name for p in tmp_path.iterdir()] == [".other.incomplete-1-1"]
