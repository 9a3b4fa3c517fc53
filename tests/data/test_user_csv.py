"""The user's own CSV/TSV files as a new user writes them: csv.writer output, spreadsheet exports, odd Unicode."""

from __future__ import annotations

import csv
import io

import pytest

from slicer.data.readers import DataError, load_classification, load_dataset_dir

# U+0085 (NEL), U+2028/U+2029 (line/paragraph separator), \x0b, \x0c, \x1c: str.splitlines breaks on them all,
# an editor and Python's csv module do not.
ODD = ["one\u2028two", "nel\u0085here", "para\u2029graph", "form\x0cfeed", "vt\x0bhere", "fs\x1chere"]


def _csv_bytes(rows: list[list[str]], lineterminator: str = "\r\n", bom: bool = False) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator=lineterminator)
    w.writerows(rows)
    return (b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8")


@pytest.mark.parametrize(("terminator", "bom"), [("\r\n", False), ("\n", False), ("\r\n", True)])
def test_csv_writer_output_with_odd_unicode_reads_back_exactly(tmp_path, terminator, bom):
    rows = [["text", "label"]] + [[t, "pos" if i % 2 else "neg"] for i, t in enumerate(ODD)]
    rows.append(['a "quoted"\nmulti-line, field', "neg"])
    f = tmp_path / "w.csv"
    f.write_bytes(_csv_bytes(rows, terminator, bom))
    d = load_classification(f)
    assert [t[0] for t in d.texts] == [r[0] for r in rows[1:]]
    assert d.label_names == ["neg", "pos"]


def test_bad_row_line_numbers_are_an_editors(tmp_path):
    # Physical lines: 1 header, 2 a U+2028 field, 3-4 a quoted two-line field, 5 an empty text.
    f = tmp_path / "l.csv"
    f.write_bytes('text,label\r\n"x\u2028y",1\r\n"two\r\nlines",0\r\n"",1\r\n'.encode())
    with pytest.raises(DataError) as e:
        load_classification(f)
    assert [(p.line, "empty text" in p.reason) for p in e.value.problems] == [(5, True)]


def test_unterminated_quote_is_named_with_its_line(tmp_path):
    f = tmp_path / "u.csv"
    f.write_text('text,label\nfine,1\n"never closed,0\nmore,1\nrows,0\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"u\.csv:3: .*quote.*never closed") as e:
        load_classification(f, skip_bad=True)  # it swallowed the rest of the file: never skipped silently
    assert "3 lines" in str(e.value)


def test_quote_that_swallows_lines_then_closes_is_reported_as_a_quote(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text('text,label\n"oops,1\nnext,0\nlast","pos",extra\nok,1\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_classification(f)
    (p,) = e.value.problems
    assert p.line == 2 and "quote" in p.reason and "lines 2-4" in p.reason


def test_labels_differing_only_in_case_are_an_error_unless_folded(tmp_path):
    f = tmp_path / "c.csv"
    f.write_text("text,label\na,Positive\nb,positive\nc,NEGATIVE\nd,negative\ne,neutral\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"differ only in case.*'Positive', 'positive'.*--fold-label-case"):
        load_classification(f)
    d = load_classification(f, fold_label_case=True)
    assert d.label_names == ["negative", "neutral", "positive"]
    assert d.labels == [2, 2, 0, 0, 1]


def test_hints_name_cli_flags_not_python_arguments(tmp_path):
    f = tmp_path / "h.csv"
    f.write_text("sentence,y\nx,1\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_classification(f)
    assert "--text-column" in str(e.value) and "--label-column" in str(e.value) and "text_columns" not in str(e.value)
    f.write_text("text,label\nx,1\n,0\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_classification(f)
    assert "--skip-bad" in str(e.value) and "skip_bad=" not in str(e.value)


def test_dataset_dir_passes_columns_skip_bad_and_folding(tmp_path):
    (tmp_path / "train.csv").write_text("tweet,sentiment\na,Pos\nb,neg\n,pos\n", encoding="utf-8")
    (tmp_path / "dev.csv").write_text("tweet,sentiment\nc,POS\nd,Neg\n", encoding="utf-8")
    train, dev = load_dataset_dir(tmp_path, "classification", text_columns="tweet", label_column="sentiment",
                                  skip_bad=True, fold_label_case=True)
    assert train.label_names == dev.label_names == ["neg", "pos"]
    assert train.labels == [1, 0] and dev.labels == [1, 0]
    with pytest.raises(DataError, match="no column 'nope'"):
        load_dataset_dir(tmp_path, "classification", text_columns="nope", label_column="sentiment")


def test_a_file_without_the_named_columns_says_which_flags_name_them(tmp_path):
    f = tmp_path / "other.jsonl"
    f.write_text('{"sentence": "a", "y": 1}\n{"sentence": "b", "y": 0}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"no row has the column\(s\) 'tweet', 'label': name yours with --text-column"):
        load_classification(f, text_columns="tweet")
