"""What every benchmark result records: settings, results, wall time, environment, git state and the exact
command that reproduces it; written as ``results/<stem>.json``, with the figures that read it redrawn beside it
(``plots.py``)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
QUICK_RESULTS = RESULTS / "quick"  # --quick runs land here unless --out-dir says otherwise (git-ignored)
console = Console()


def command_line() -> str:
    exe = Path(sys.executable)
    with_cwd = [os.path.relpath(exe) if str(exe).startswith(os.getcwd()) else str(exe), os.path.relpath(sys.argv[0])]
    return shlex.join([*with_cwd, *sys.argv[1:]])


def git_state() -> dict[str, Any]:
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": run("rev-parse", "HEAD") or None, "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


# The libraries a figure's numbers depend on; read from the installed metadata, so nothing heavy is imported.
LIBRARIES = ("torch", "onnxruntime", "onnx", "transformers", "numpy", "fastapi", "uvicorn", "httpx")


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def one(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {name: one(name) for name in LIBRARIES}


def cpu_model() -> str | None:
    """The CPU's marketing name (Linux: /proc/cpuinfo), so a figure names the chip and not only the core count."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(), "versions": library_versions(), "git": git_state()}


def base_record(name: str, what: str, settings: dict[str, Any], results: dict[str, Any], started: float,
                environment: dict[str, Any], smoke: bool, notes: list[str]) -> dict[str, Any]:
    return {
        "benchmark": name, "what": what, "smoke": smoke, "settings": settings, "results": results,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment, "command": command_line(), "cwd": os.getcwd(), "notes": notes,
    }


def quick_out_dir(out_dir: Path, quick: bool) -> Path:
    """Where a run writes: a ``--quick`` run never overwrites the committed results."""
    return QUICK_RESULTS if quick and Path(out_dir).resolve() == RESULTS.resolve() else Path(out_dir)


def write_result(out_dir: Path, stem: str, payload: dict[str, Any]) -> Path:
    """The JSON, then every figure that reads it (plots.py), beside it."""
    from plots import render

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {path}")
    failed: list[str] = []
    for png in render(out_dir, only_stem=stem, failed=failed):
        console.print(f"wrote {png}")
    for line in failed:  # the JSON is written either way; plots.py needs teaching the new layout
        console.print(f"[red]figure not drawn[/] {line}")
    return path
