"""Readers of the user's own data files: labelled text (``.jsonl``, ``.csv``, ``.tsv``), plain text for language
modelling, and a data folder's train/dev splits (a folder of the user's, or a prepared dataset by name).

The readers never drop a row silently: bad rows raise :class:`DataError` naming ``file:line`` and the reason, or
with ``skip_bad=True`` are skipped with a warning that says the same.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadRow, ConfigError, DataError, describe_bad_rows
from ..spec.vocab import CAUSAL_LM, TASKS, Task
from .prepared import read_meta, resolve_dataset_dir

logger = logging.getLogger(__name__)

CLASSIFICATION_SUFFIXES = (".jsonl", ".csv", ".tsv")


# ----- classification data ----------------------------------------------------------------------------------


@dataclass
class ClassificationData:
    """Labelled texts. ``texts[i]`` is a 1-tuple (single sentence) or a 2-tuple (sentence pair); ``labels[i]``
    indexes ``label_names``; ``source`` says where the rows came from."""

    texts: list[tuple[str, ...]]
    labels: list[int]
    label_names: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        assert len(self.texts) == len(self.labels), "one label per text"
        assert all(0 <= y < len(self.label_names) for y in self.labels), "labels index label_names"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """Whether the rows are sentence pairs (two text columns)."""
        return bool(self.texts) and len(self.texts[0]) == 2

    def label_counts(self) -> dict[str, int]:
        """Rows per label name, in label order."""
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.label_names)}

    def fingerprint(self) -> str:
        """sha256 of the canonical content (label names, then one JSON line per row); ``source`` is not part
        of it, so the same rows read from a CSV or a JSONL file anywhere give the same fingerprint."""
        h = hashlib.sha256()
        h.update(json.dumps(self.label_names, ensure_ascii=False).encode("utf-8") + b"\n")
        for text, label in zip(self.texts, self.labels):
            h.update(json.dumps([list(text), label], ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()


def _check_file(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} is not a file")
    return path


def _decode(data: bytes, path: Path) -> str:
    """utf-8 (a leading BOM is dropped); a failure names the file, line and byte offset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not valid utf-8 ({e.reason} at byte {e.start}: "
                        f"{data[e.start:e.start + 4]!r}); save the file as utf-8") from None


def _read_text_file(path: Path) -> str:
    return _decode(path.read_bytes(), path)


_INT_RE = re.compile(r"[+-]?\d+")


@dataclass
class _RawRow:
    line: int
    texts: tuple[str, ...]
    label: str | int


def _text_value(value: Any, column: str) -> str:
    """A text cell, or raises ``ValueError`` with the reason."""
    if value is None:
        raise ValueError(f"missing column {column!r}")
    if not isinstance(value, str):
        raise ValueError(f"column {column!r} is {type(value).__name__} {value!r}, expected a string")
    if not value.strip():
        raise ValueError(f"empty text in column {column!r}")
    return value


def _label_value(value: Any, column: str) -> str | int:
    """A label cell as an int (JSON ints, integral floats) or a stripped string, or raises ``ValueError``."""
    if value is None:
        raise ValueError(f"missing label column {column!r}")
    if isinstance(value, bool):
        raise ValueError(f"label {value!r} is a boolean; use 0/1 or strings")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(f"label {value!r} is not an integer or a string")
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"empty label in column {column!r}")
        return value.strip()
    raise ValueError(f"label {value!r} is a {type(value).__name__}, expected an integer or a string")


def _iter_jsonl(path: Path, text_columns: tuple[str, ...], label_column: str,
                bad: list[BadRow]) -> Iterator[_RawRow]:
    for i, line in enumerate(_read_text_file(path).split("\n"), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, spacing) are not rows
        try:
            obj = json.loads(line)
        except ValueError as e:
            bad.append(BadRow(str(path), i, f"invalid JSON ({e})"))
            continue
        if not isinstance(obj, dict):
            bad.append(BadRow(str(path), i, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        try:
            texts = tuple(_text_value(obj.get(c), c) for c in text_columns)
            label = _label_value(obj.get(label_column), label_column)
        except ValueError as e:
            bad.append(BadRow(str(path), i, str(e)))
            continue
        yield _RawRow(i, texts, label)


class _LineTap:
    """The physical lines the csv reader consumes (a file object opened with ``newline=''`` breaks only at
    \\n, \\r\\n and \\r, so U+0085/U+2028 stay inside their field and line numbers are an editor's); ``take()``
    returns the raw text of the record just read."""

    def __init__(self, f: Iterable[str]) -> None:
        self._it = iter(f)
        self._buf: list[str] = []

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self._it)
        self._buf.append(line)
        return line

    def take(self) -> str:
        raw, self._buf = "".join(self._buf), []
        return raw


def _iter_delimited(path: Path, text_columns: tuple[str, ...], label_column: str, delimiter: str,
                    bad: list[BadRow]) -> Iterator[_RawRow]:
    """CSV (RFC 4180 quoting) or TSV (no quoting: a field cannot hold a tab or a newline); a header names
    the columns. Read with Python's csv module over the file object, as its documentation asks."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield from _parse_delimited(path, f, text_columns, label_column, delimiter, bad)
    except UnicodeDecodeError:
        _read_text_file(path)  # raises the DataError naming the line and byte
        raise


def _ends_inside_quote(raw: str, delimiter: str) -> bool:
    """Whether a record's raw text ends inside a quoted field: the csv reader (not strict) only stops there at the
    end of the file. A quote inside an unquoted field (``5" screen``) is a plain character, as for the reader."""
    state = "start"  # start of a field, unquoted, quoted, a quote seen inside a quoted field
    for ch in raw:
        if state == "quoted":
            state = "quote" if ch == '"' else "quoted"
        elif ch == delimiter or ch in "\r\n":
            state = "start"
        elif state == "start" or state == "quote":
            state = "quoted" if ch == '"' else "unquoted"
    return state == "quoted"


def _parse_delimited(path: Path, f: Iterable[str], text_columns: tuple[str, ...], label_column: str,
                     delimiter: str, bad: list[BadRow]) -> Iterator[_RawRow]:
    quoted = delimiter != "\t"
    tap = _LineTap(f)
    reader = csv.reader(tap, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
                        strict=False)
    try:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):  # blank lines before the header
            header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty; expected a header line naming the columns "
                            f"{', '.join((*text_columns, label_column))}")
        tap.take()
        header = [h.strip() for h in header]
        dupes = sorted(h for h, n in Counter(header).items() if n > 1)
        if dupes:
            raise DataError(f"{path}:{reader.line_num}: header repeats column(s) {', '.join(map(repr, dupes))}")
        missing = [c for c in (*text_columns, label_column) if c not in header]
        if missing:
            raise DataError(f"{path}:{reader.line_num}: no column {' or '.join(map(repr, missing))} in the header "
                            f"(columns: {', '.join(header)}); name yours with --text-column (twice for sentence "
                            "pairs) and --label-column")
        index = {h: k for k, h in enumerate(header)}
        start = reader.line_num + 1
        for record in reader:
            line, start = start, reader.line_num + 1
            raw = tap.take()
            if quoted and _ends_inside_quote(raw, delimiter):
                # The csv module (not strict) ends a quoted field at the end of the file without a word; it
                # swallowed every line after the quote, so no row after it can be trusted or skipped.
                raise DataError(f"{path}:{line}: a quote opened on this line is never closed: the field runs to "
                                f"the end of the file ({reader.line_num - line + 1} lines); close it (\"...\"), "
                                'and write a quote inside a quoted field as ""')
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if len(record) != len(header):
                hint = " (a tab inside a text?)" if not quoted else ""
                if quoted and reader.line_num > line and '"' in raw:
                    hint = (f" (one quoted field spans lines {line}-{reader.line_num}: an unclosed quote that a "
                            "later quote closed?)")
                bad.append(BadRow(str(path), line, f"{len(record)} fields, the header has {len(header)}{hint}"))
                continue
            try:
                texts = tuple(_text_value(record[index[c]], c) for c in text_columns)
                label = _label_value(record[index[label_column]], label_column)
            except ValueError as e:
                bad.append(BadRow(str(path), line, str(e)))
                continue
            yield _RawRow(line, texts, label)
    except csv.Error as e:  # only for malformed quoting that the reader cannot get past
        raise DataError(f"{path}:{reader.line_num}: cannot parse ({e})") from None


def _check_columns(text_columns: str | Iterable[str], label_column: str) -> tuple[str, ...]:
    cols = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
    if len(cols) not in (1, 2) or not all(isinstance(c, str) and c for c in cols):
        raise ConfigError(f"text_columns={cols!r}: give one column name (single sentences) or two (pairs)")
    if len(set(cols)) != len(cols):
        raise ConfigError(f"text_columns={cols!r} names a column twice")
    if label_column in cols:
        raise ConfigError(f"label_column={label_column!r} is also a text column")
    return cols


def _check_label_map(label_map: Mapping[str, int]) -> list[str]:
    """``label_names`` for a user's map: id -> the first name (sorted) mapped to it; ids must be 0..K-1."""
    if not label_map:
        raise ConfigError("label_map is empty; map each label string to an id 0..K-1")
    for name, idx in label_map.items():
        if not isinstance(name, str) or isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise ConfigError(f"label_map entry {name!r}: {idx!r}; keys must be strings and ids integers >= 0")
    ids = set(label_map.values())
    if ids != set(range(len(ids))):
        raise ConfigError(f"label_map ids {sorted(ids)} must be exactly 0..{len(ids) - 1}")
    names: dict[int, str] = {}
    for name in sorted(label_map):
        names.setdefault(label_map[name], name)
    return [names[i] for i in range(len(ids))]


def _map_labels(rows: list[_RawRow], label_map: Mapping[str, int] | None, path: Path,
                bad: list[BadRow]) -> tuple[list[_RawRow], list[int], list[str]]:
    """Turn raw labels into ids. Rules: with ``label_map``, look each label up (ints by their decimal form);
    else if every label is an integer, they are the ids (must be >= 0; names "0".."K-1"); else every label is
    a string and the ids follow the sorted unique strings, which must not differ only in case."""
    if label_map is not None:
        names = _check_label_map(label_map)
        kept, ids = [], []
        for r in rows:
            key = str(r.label)
            if key not in label_map and (isinstance(r.label, int) or _INT_RE.fullmatch(key)):
                key = str(int(key))
            if key not in label_map:
                accepted = ", ".join(map(repr, sorted(label_map)))
                bad.append(BadRow(str(path), r.line, f"label {r.label!r} is not in label_map (accepted: {accepted})"))
                continue
            kept.append(r)
            ids.append(label_map[key])
        return kept, ids, names
    as_int = [r.label if isinstance(r.label, int) else int(r.label) if _INT_RE.fullmatch(r.label) else None
              for r in rows]
    if all(v is not None for v in as_int):
        kept, ids = [], []
        for r, v in zip(rows, as_int):
            if v < 0:
                bad.append(BadRow(str(path), r.line, f"negative label {v}; integer labels are ids 0..K-1 "
                                                     "(write other labels as strings)"))
                continue
            kept.append(r)
            ids.append(v)
        return kept, ids, [str(i) for i in range(max(ids, default=-1) + 1)]
    names = sorted({str(r.label) for r in rows})
    clashes: dict[str, list[str]] = {}
    for n in names:
        clashes.setdefault(n.casefold(), []).append(n)
    clashes = {k: v for k, v in clashes.items() if len(v) > 1}
    if clashes:
        groups = "; ".join(", ".join(map(repr, v)) for v in clashes.values())
        raise DataError(f"{path}: labels differ only in case ({groups}) and would be separate classes; fix the "
                        "file, or pass --fold-label-case to merge them (labels are then lower-cased)")
    lookup = {n: i for i, n in enumerate(names)}
    return rows, [lookup[str(r.label)] for r in rows], names


def load_classification(path: str | Path, text_columns: str | Iterable[str] = ("text",), label_column: str = "label",
                        label_map: Mapping[str, int] | None = None, skip_bad: bool = False,
                        fold_label_case: bool = False) -> ClassificationData:
    """Read labelled texts from a ``.csv``, ``.tsv`` (tab-separated, no quoting) or ``.jsonl`` file.

    ``text_columns`` names one column (single sentences) or two (sentence pairs); ``label_column`` holds
    integer ids 0..K-1 or strings (mapped to ids in sorted order, recorded in ``label_names``), or anything
    ``label_map`` maps. Bad rows (missing column, empty text, unparsable label, invalid JSON line, wrong number
    of fields) raise :class:`DataError` listing ``file:line`` and the reason for the first few and the total;
    with ``skip_bad`` they are skipped and the same is logged as a warning. Blank lines are not rows.
    String labels that differ only in case ("Positive", "positive") are an error; ``fold_label_case``
    lower-cases (``str.casefold``) every string label first, merging them. A quote that is never closed is
    always an error (it swallowed the rest of the file).
    """
    path = _check_file(Path(path), "data file")
    cols = _check_columns(text_columns, label_column)
    suffix = path.suffix.lower()
    bad: list[BadRow] = []
    if suffix == ".jsonl":
        rows = list(_iter_jsonl(path, cols, label_column, bad))
    elif suffix in (".csv", ".tsv"):
        rows = list(_iter_delimited(path, cols, label_column, "\t" if suffix == ".tsv" else ",", bad))
    else:
        raise ConfigError(f"unsupported file type {suffix or '(none)'!r} for {path}; "
                          f"classification data must be one of {', '.join(CLASSIFICATION_SUFFIXES)}")
    if fold_label_case:
        for r in rows:
            if isinstance(r.label, str):
                r.label = r.label.casefold()
        if label_map is not None:
            label_map = {k.casefold(): v for k, v in label_map.items()}
    rows, labels, names = _map_labels(rows, label_map, path, bad)
    bad.sort(key=lambda b: b.line)
    total = len(rows) + len(bad)
    if bad and not skip_bad:
        hint = "fix them, or skip them with --skip-bad"
        if not rows and all(b.reason.startswith(("missing column", "missing label column")) for b in bad):
            hint = f"no row has the column(s) {', '.join(map(repr, (*cols, label_column)))}: name yours with " \
                   "--text-column and --label-column"
        raise DataError(describe_bad_rows(path, bad, total) + f"\n({hint})", bad)
    if bad:
        logger.warning("skipping %s", describe_bad_rows(path, bad, total))
    if not rows:
        raise DataError(f"{path} has no usable rows" + (f" ({len(bad)} bad)" if bad else ""), bad)
    data = ClassificationData([r.texts for r in rows], labels, names, str(path))
    logger.info("read %d rows from %s (%s)", len(data), path,
                ", ".join(f"{k}: {v}" for k, v in data.label_counts().items()))
    return data


def load_text(path: str | Path) -> str:
    """A plain utf-8 text file for language modelling (BOM dropped, CRLF -> LF). Fails naming the file and
    line on a decoding error, and on an empty file."""
    path = _check_file(Path(path), "text file")
    text = _read_text_file(path).replace("\r\n", "\n")
    if not text.strip():
        raise DataError(f"{path} is empty")
    return text


# ----- prepared dataset folders -----------------------------------------------------------------------------


# ----- data folders -----------------------------------------------------------------------------------------


def _find_split(folder: Path, split: str, suffixes: tuple[str, ...]) -> Path | None:
    found = [folder / f"{split}{s}" for s in suffixes if (folder / f"{split}{s}").is_file()]
    if len(found) > 1:
        raise ConfigError(f"{folder} has several {split} files ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


@dataclass(frozen=True)
class ReadOptions:
    """How to read a user's classification files: the CLI's ``--text-column`` (one, or two for sentence pairs),
    ``--label-column``, ``--skip-bad`` and ``--fold-label-case``. Recorded in the adapter stack, so that
    ``mlfs eval`` reads the evaluation file the way training did."""

    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    skip_bad: bool = False
    fold_label_case: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ReadOptions:
        d = dict(d or {})
        if "text_columns" in d:
            d["text_columns"] = tuple(d["text_columns"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return {"text_columns": list(self.text_columns), "label_column": self.label_column,
                "skip_bad": self.skip_bad, "fold_label_case": self.fold_label_case}


def split_files(folder: str | Path, task: Task, which: tuple[str, ...] = ("train", "eval")) -> dict[str, Path]:
    """The split files of a data folder (or a prepared dataset's name): ``train`` and/or ``eval`` (``dev.*`` for
    classification, ``val.txt`` for causal-lm). Only the splits asked for must exist."""
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")
    folder = resolve_dataset_dir(folder)
    if task == CAUSAL_LM:
        names = {"train": "train.txt", "eval": "val.txt"}
        missing = [names[w] for w in which if not (folder / names[w]).is_file()]
        if missing:
            raise ConfigError(f"{folder} has no {' or '.join(missing)}; a causal-lm data folder holds train.txt "
                              "and val.txt (plain utf-8 text)")
        return {w: folder / names[w] for w in which}
    found = {w: _find_split(folder, "dev" if w == "eval" else w, CLASSIFICATION_SUFFIXES) for w in which}
    missing = ["dev" if w == "eval" else w for w, f in found.items() if f is None]
    if missing:
        raise ConfigError(f"{folder} has no {' or '.join(missing)} file; a classification data folder holds "
                          f"train and dev files, each one of {', '.join('*' + s for s in CLASSIFICATION_SUFFIXES)} "
                          "(e.g. train.jsonl and dev.jsonl)")
    return found  # type: ignore[return-value]


def load_dataset_dir(folder: str | Path, task: Task, text_columns: str | Iterable[str] = ("text",),
                     label_column: str = "label", label_map: Mapping[str, int] | None = None,
                     skip_bad: bool = False, fold_label_case: bool = False,
                     ) -> tuple[ClassificationData, ClassificationData] | tuple[str, str]:
    """The train and evaluation splits of a data folder (or a prepared dataset's name).

    ``classification``: ``(train, dev)`` from ``train`` and ``dev`` files (``.jsonl``, ``.csv`` or ``.tsv``);
    dev labels are mapped with train's label ids, and label names recorded in ``dataset.json`` are used.
    ``causal-lm``: ``(train_text, val_text)`` from ``train.txt`` and ``val.txt``.
    """
    files = split_files(folder, task)
    if task == CAUSAL_LM:
        return load_text(files["train"]), load_text(files["eval"])
    train = load_classification(files["train"], text_columns, label_column, label_map, skip_bad, fold_label_case)
    dev_map = label_map if label_map is not None else {n: i for i, n in enumerate(train.label_names)}
    dev = load_classification(files["eval"], text_columns, label_column, dev_map, skip_bad, fold_label_case)
    names = read_meta(files["train"].parent).get("label_names")
    if label_map is None and isinstance(names, list) and len(names) == train.num_labels \
            and train.label_names == [str(i) for i in range(train.num_labels)]:
        train.label_names = dev.label_names = [str(n) for n in names]
    return train, dev


def load_eval_split(folder: str | Path, task: Task, label_names: list[str] | None = None,
                    read: ReadOptions = ReadOptions()) -> tuple[ClassificationData | str, Path]:
    """Only the evaluation split (``dev.*`` or ``val.txt``) and its file; the training file is neither needed
    nor read. Classification labels get the ids of ``label_names`` (the names a model was trained with; an
    integer label is also read as the id itself, as training read it)."""
    path = split_files(folder, task, ("eval",))["eval"]
    if task == CAUSAL_LM:
        return load_text(path), path
    label_map = None
    if label_names:
        label_map = {str(i): i for i in range(len(label_names))}
        label_map.update({n: i for i, n in enumerate(label_names)})
    dev = load_classification(path, read.text_columns, read.label_column, label_map, read.skip_bad,
                              read.fold_label_case)
    if label_names:
        dev.label_names = list(label_names)
    return dev, path
