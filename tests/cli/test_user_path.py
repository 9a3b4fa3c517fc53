"""The new user's path through the command line: their own CSV through data check, train and eval (issue 15)."""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slicer.cli.main import app
from slicer.formats.adapter_stack import StackMeta
from slicer.spec.palette import PaletteTable, read_palette
from slicer.train.report import TrainingReport

pytestmark = pytest.mark.usefixtures("single_thread")


def run_mlfs(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFS_HOME": str(home)}
    env.pop("COLUMNS", None)
    return subprocess.run([sys.executable, "-m", "slicer.cli", *args], capture_output=True, text=True, env=env, timeout=300)


def write_csv(path: Path, rows: list[list[str]], bom: bool = False) -> Path:
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        csv.writer(f).writerows(rows)  # CRLF, quotes where needed: what a spreadsheet export looks like
    return path


@pytest.fixture(scope="module")
def tweets(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny BERT, and a data folder of CSVs with user-named columns, mixed-case labels, multi-line quoted
    fields and U+2028 inside texts."""
    from helpers.store import WORDS, make_store

    root = tmp_path_factory.mktemp("user")
    base = make_store(root / "store") / "tiny-bert"
    data = root / "tweets"
    data.mkdir()
    for split, n in (("train", 24), ("dev", 12)):
        rows = [["id", "tweet", "sentiment"]]
        for k in range(n):
            words = [WORDS[2 + (k * 7 + i) % 40 + 50 * (k % 2)] for i in range(5)]
            sep = "\u2028" if k % 3 == 0 else "\n" if k % 3 == 1 else " "
            rows.append([str(k), " ".join(words[:2]) + sep + " ".join(words[2:]), ["Pos", "pos", "NEG", "neg"][k % 4]])
        write_csv(data / f"{split}.csv", rows, bom=split == "dev")
    return base, data


USER_FLAGS = ["--text-column", "tweet", "--label-column", "sentiment", "--fold-label-case"]


def test_data_check_reads_a_folder_with_the_training_flags(tweets):
    _, data = tweets
    r = CliRunner().invoke(app, ["data", "check", str(data), *USER_FLAGS])
    assert r.exit_code == 0, r.output
    assert "train.csv: 24 sentences, 2 labels" in r.stdout and "dev.csv: 12 sentences, 2 labels" in r.stdout
    r = CliRunner().invoke(app, ["data", "check", str(data), "--text-column", "tweet", "--label-column", "sentiment"])
    assert r.exit_code != 0 and "differ only in case" in str(r.exception)


@pytest.fixture(scope="module")
def trained(tweets, tmp_path_factory) -> tuple[Path, Path, Path, CliRunner]:
    base, data = tweets
    out = tmp_path_factory.mktemp("run") / "run"
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--base", str(base), "--data", str(data), "--task", "classification", "--out", str(out),
                            "--max-steps", "1", "--batch-size", "8", "--device", "cpu", "--eval-configs", "3",
                            "--threads", "1", *USER_FLAGS])
    assert r.exit_code == 0, r.output
    return base, data, out, r


def test_train_takes_the_data_flags_and_reports_each_stage(trained):
    _, _, out, r = trained
    for stage in (0, 1, 2):
        assert f"stage {stage}     maxnet " in r.stdout and "minnet" in r.stdout and "(dev, 12 examples)" in r.stdout
    assert "palette evaluation (configs)" in r.stderr
    palette = read_palette(out / "adapters")
    assert len(palette.rows) == 3  # --eval-configs 3: smallest, middle, largest
    assert palette.data["name"] == "tweets" and palette.data["split"] == "dev"
    assert palette.data["file"] == "dev.csv" and palette.data["examples"] == 12
    report = TrainingReport.read(out)
    assert [s["stage"] for s in report.stage_summaries] == [0, 1, 2] and report.threads == 1
    assert report.palette == list(palette.rows)
    meta = StackMeta.read(out / "adapters")
    assert meta.data["read"]["text_columns"] == ["tweet"] and meta.label_names == ["neg", "pos"]


def test_eval_needs_no_train_file_and_never_overwrites_unless_asked(trained, tmp_path):
    base, data, out, _ = trained
    adapters = out / "adapters"
    dev_only = tmp_path / "tweets"
    dev_only.mkdir()
    (dev_only / "dev.csv").write_bytes((data / "dev.csv").read_bytes())  # no train file at all
    before = (adapters / "palette.json").read_bytes()
    runner = CliRunner()
    # The columns and case folding come from the stack: training recorded them.
    r = runner.invoke(app, ["eval", "--base", str(base), "--adapters", str(adapters), "--data", str(dev_only),
                            "--configs", "2"])
    assert r.exit_code == 0, r.output
    assert "not saved" in r.stdout and (adapters / "palette.json").read_bytes() == before
    trained_rows = {c["key"]: c for c in read_palette(adapters).rows}

    # --save on the same data merges: the 3 rows stay 3 (2 re-evaluated, same numbers), none dropped.
    r = runner.invoke(app, ["eval", "--base", str(base), "--adapters", str(adapters), "--data", str(dev_only),
                            "--configs", "2", "--save"])
    assert r.exit_code == 0, r.output
    merged = read_palette(adapters)
    assert {c["key"]: c["accuracy"] for c in merged.rows} == {k: c["accuracy"] for k, c in trained_rows.items()}

    # Other data: refused, the table is untouched; --out writes it elsewhere.
    other = tmp_path / "other"
    other.mkdir()
    rows = list(csv.reader((data / "dev.csv").open(encoding="utf-8-sig", newline="")))
    write_csv(other / "dev.csv", rows[:1] + rows[1:7])
    kept = (adapters / "palette.json").read_bytes()
    r = runner.invoke(app, ["eval", "--base", str(base), "--adapters", str(adapters), "--data", str(other), "--save"])
    assert r.exit_code != 0 and "never mixes data sets" in str(r.exception)
    assert (adapters / "palette.json").read_bytes() == kept
    r = runner.invoke(app, ["eval", "--base", str(base), "--adapters", str(adapters), "--data", str(other),
                            "--out", str(tmp_path / "other.json")])
    assert r.exit_code == 0, r.output
    table = PaletteTable.read(tmp_path / "other.json")
    assert table.data["name"] == "other" and table.data["examples"] == 6


def test_eval_examples_evaluates_an_evenly_spaced_subset_and_says_so(trained, tmp_path):
    """--eval-examples N: the table's numbers come from N of the split's examples, and its data records both."""
    base, data, out, _ = trained
    r = CliRunner().invoke(app, ["eval", "--base", str(base), "--adapters", str(out / "adapters"), "--data", str(data),
                                 "--configs", "1", "--eval-examples", "5", "--out", str(tmp_path / "t.json")])
    assert r.exit_code == 0, r.output
    table = PaletteTable.read(tmp_path / "t.json")
    assert table.data["examples"] == 5 and table.data["of"] == 12
    # the same split: rows may merge into the trained table
    assert table.data_fingerprint == read_palette(out / "adapters").data_fingerprint


def test_limit_eval_examples_keeps_all_for_zero_and_refuses_negative_counts():
    from slicer.data.batching import Examples
    from slicer.errors import ConfigError
    from slicer.train.fit import limit_eval_examples

    ex = Examples([[k] for k in range(10)], list(range(10)), "encoder")
    assert limit_eval_examples(ex, {"examples": 10}, 0) == (ex, {"examples": 10})
    sub, info = limit_eval_examples(ex, {"examples": 10}, 4)
    assert sub.labels == [0, 2, 5, 7] and info == {"examples": 4, "of": 10}  # spread, not a prefix
    with pytest.raises(ConfigError, match="negative"):
        limit_eval_examples(ex, {"examples": 10}, -1)


def test_help_shows_no_bool_and_piped_tables_are_not_cut(tmp_path):
    r = run_mlfs("--help", home=tmp_path)
    assert r.returncode == 0 and "--debug" in r.stdout and "<bool>" not in r.stdout
    r = run_mlfs("train", "--help", home=tmp_path)
    assert "--skip-bad" in r.stdout and "--threads" in r.stdout and "<bool>" not in r.stdout
    home = tmp_path / ("a-rather-long-folder-name-" * 4) / "home"
    r = run_mlfs("teacher", "list", home=home)  # piped: no terminal width
    assert r.returncode == 0 and str(home) in r.stdout, r.stdout


def test_slice_says_why_no_transformers_folder_and_weights_are_readable(tweets, tmp_path):
    base, _ = tweets
    out = tmp_path / "sub"
    r = run_mlfs("slice", "--base", str(base), "--config", '{"layers": 2, "heads": [4, 2], "ffn": 32}', "--out", str(out),
                 "--no-reorder", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (out / "transformers").exists()
    assert "no transformers/ folder" in r.stdout and "different widths" in r.stdout
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~mask
