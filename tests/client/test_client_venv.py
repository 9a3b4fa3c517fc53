"""``mlfs-device predict`` from a fresh virtualenv holding only ``.[client]`` (slow: pip installs the extra)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_mlfs_device_predict_works_with_only_the_client_extra_installed(cls_server, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # pip's cache makes reruns quick; a clean CI machine downloads the client's wheels (no torch: a few tens of MB)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", f"{ROOT}[client]"],
                             capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    absent = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; "
                             "print([m for m in ('torch', 'transformers', 'fastapi') if u.find_spec(m)])"],
                            capture_output=True, text=True, timeout=120)
    assert absent.stdout.strip() == "[]", absent.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MLFS_DEVICE_CACHE"] = str(tmp_path / "device-cache")
    r = subprocess.run([str(venv / "bin" / "mlfs-device"), "predict", "--server", cls_server, "--model", "tiny-cls",
                        "w1 w2 w3"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    label, probability, config, *_ = r.stdout.strip().split("\t")
    assert label in ("negative", "positive") and 0.5 <= float(probability) <= 1 and config.startswith("L")
