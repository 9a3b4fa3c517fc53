"""Every benchmark script runs (its ``--quick`` mode) and writes a well-formed result JSON and PNG; every
figure redraws from the committed JSONs. Behaviour only: no timing is asserted."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
PALETTE = REPO / "palettes" / "minilm-movie-reviews" / "adapters"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(args: list[str], timeout: float = 300) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5_000, f"{path.name} is not a real PNG"


def assert_result(path: Path, benchmark: str, smoke: bool) -> dict:
    """What bench_record promises: settings, results, environment with the git commit, the command; its PNG."""
    rec = json.loads(path.read_text())
    assert rec["benchmark"] == benchmark
    assert rec["smoke"] is smoke
    for key in ("what", "settings", "results", "wall_seconds", "finished_at", "environment", "command", "notes"):
        assert key in rec, key
    assert rec["environment"]["git"]["commit"] and rec["environment"]["cpu_count"]
    assert Path(rec["command"].split()[1]).name in {"mlfs_reference.py", "palette_quality.py", "server_bench.py",
                                                      "swap_bench.py", "latency_bench.py", "replicas_bench.py",
                                                      "palette_ablation.py", "device_latency.py", "ort_latency.py",
                                                      "latency_diagnosis.py", "schemathesis_run.py", "decoder_int8.py"}
    env = rec["environment"]
    assert env["versions"]["onnxruntime"] and env["versions"]["numpy"] and "cpu_model" in env
    assert_png(path.with_suffix(".png"))
    return rec


def test_plot_all_redraws_every_committed_figure(tmp_path):
    for src in RESULTS.glob("*.json"):
        shutil.copy(src, tmp_path / src.name)
    out = run([str(BENCH / "plot_all.py"), "--results", str(tmp_path)])
    sys.path.insert(0, str(BENCH))
    try:
        from plots import FIGURES, unplotted
    finally:
        sys.path.remove(str(BENCH))
    drawn = {p.stem for p in tmp_path.glob("*.png")}
    for stem in {p.stem for p in tmp_path.glob("*.json")} - set(unplotted(tmp_path)):
        assert stem in drawn, f"no figure for {stem}: {out[-2000:]}"
        assert_png(tmp_path / f"{stem}.png")
    for spec in FIGURES:
        if not spec.per_file:
            assert_png(tmp_path / f"{spec.name}.png")
    quality = json.loads((tmp_path / "palette-quality.json").read_text())["results"]
    methods = {p["method"] for p in quality["points"]}
    assert {"MLFS palette", "teacher fully fine-tuned"} <= methods
    assert sum(p["method"] == "MLFS palette" for p in quality["points"]) == 36
    assert all(0 < p["accuracy"] <= 1 and p["params_non_embedding"] > 0 for p in quality["points"])


def test_palette_quality_quick(tmp_path):
    run([str(BENCH / "palette_quality.py"), "--quick", "--results", str(RESULTS), "--out-dir", str(tmp_path)])
    rec = assert_result(tmp_path / "palette-quality.json", "palette-quality", smoke=True)
    ratios = rec["results"]["ratios"]
    assert ratios[0]["shape"] == rec["results"]["minnet_shape"] and ratios[-1]["shape"] == rec["results"]["teacher_shape"]
    assert ratios[-1]["total_params_vs_teacher"] == 1.0 and 0 < ratios[0]["total_params_vs_teacher"] < 1


def test_ort_latency_quick(tmp_path):
    """ort_latency.py --quick on a tiny random encoder (a few seconds): every fusion combination, today's presets,
    PyTorch eager and the per-operator profiles are in the JSON, with ratios against eager."""
    run([str(BENCH / "ort_latency.py"), "--quick", "--out-dir", str(tmp_path)])
    rec = assert_result(tmp_path / "ort-latency.json", "ort-latency", smoke=True)
    (row,) = rec["results"]["rows"].values()
    fusions = {f"{a}{s}{b}" for a in ("contrib", "mha", "plain") for s in ("+skipln", "") for b in ("+biasgelu", "")}
    assert fusions | {"eager", "eager-no_grad", f"{row['presets']['fused']}+spinning"} == set(row["latency"])
    assert row["ratio_vs_eager"]["eager"] == 1.0 and all(v["median_ms"] > 0 for v in row["latency"].values())
    assert row["presets"] == {"fused": "contrib+biasgelu", "plain": "plain"} and row["fastest_direct_graph"] in fusions
    assert {row["presets"]["fused"], "plain"} <= set(row["ort_profiles"])
    assert all(p["ms_per_pass"] and abs(sum(p["share"].values()) - 1) < 1e-6 for p in row["ort_profiles"].values())
    assert "MatMul" in row["ort_profiles"]["plain"]["ms_per_pass"] and row["eager_profile"]["self_cpu_ms_per_pass"]


# The baselines of palette-quality.png: the whole teacher, a shape cut from it (reordered, or not: the reordering
# ablation's arm) and the same shape from random weights; each names its result file after what it trained.
FULL_FT_KINDS = {
    "teacher": ([], "full-ft", None),
    "unordered-shape": (["--config", '{"layers": 2, "heads": 2, "ffn": 32}', "--reorder", "none"], "full-ft-reorder-none_L2-1-3_H2_F32_D32", "none"),
    "random-shape": (["--config", '{"layers": 2, "heads": 2, "ffn": 32}', "--random-init"], "full-ft-random_L2-1-3_H2_F32_D32", None),
}


@pytest.mark.parametrize("kind", list(FULL_FT_KINDS))
def test_full_ft_quick_on_a_tiny_model(kind, tmp_path, make_store):
    """mlfs_reference.py full-ft --quick on a tiny random BERT and a tiny two-label data set."""
    make_store(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(0)
    for split, n in (("train", 96), ("dev", 32)):
        rows = [{"text": " ".join(f"w{rng.randrange(2, 47) + 47 * (i % 2)}" for _ in range(8)),
                 "label": ["negative", "positive"][i % 2]} for i in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    extra, stem, reorder = FULL_FT_KINDS[kind]
    run([str(BENCH / "mlfs_reference.py"), "full-ft", "--quick", "--base", str(tmp_path / "tiny-bert"), "--data", str(data),
         "--batch-size", "8", "--threads", "1", "--out-dir", str(out), *extra])
    rec = assert_result(out / f"{stem}.json", "full-ft", smoke=True)
    assert rec["settings"]["epochs"] == 1 and rec["results"]["data"]["train_used"] == 64
    assert len(rec["results"]["per_epoch"]) == 1 and len(rec["results"]["train_loss"]) == rec["results"]["steps"]
    if reorder:
        assert rec["settings"]["reorder"] == reorder
    assert rec["settings"]["init"].startswith("random" if kind == "random-shape" else "pretrained")


def _postgres_missing() -> str | None:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.postgres import missing

    return missing()


# The rest need the real MiniLM (and the shipped palette); each runs for a minute or more on two cores.
HEAVY = {
    "no-stages-1-2": (["mlfs_reference.py", "no-stages-1-2", "--adapters", str(PALETTE)], "no-stages-1-2", "no-stages-1-2"),
    "gamma": (["mlfs_reference.py", "gamma", "--adapters", str(PALETTE)], "gamma", "gamma"),
    "stage2-ablation": (["mlfs_reference.py", "stage2-ablation", "--adapters", str(PALETTE)], "stage2-ablation", "stage2-ablation"),
    "server-resolve": (["server_bench.py", "resolve"], "server-resolve", "server-resolve"),
    "server-download": (["server_bench.py", "download"], "server-download", "server-download"),
    "server-build": (["server_bench.py", "build"], "server-build", "server-build"),
    "client-swap": (["swap_bench.py"], "client-swap", "client-swap"),
    "latency": (["latency_bench.py"], "latency", "latency"),
    "device-latency": (["device_latency.py"], "device-latency", "device-latency"),
    "replicas": (["replicas_bench.py", "throughput"], "server-replicas", "server-replicas"),
    "replicas-rolling": (["replicas_bench.py", "rolling"], "server-replicas-rolling", "server-replicas-rolling"),
    "palette-ablation": (["palette_ablation.py", "all"], "palette-ablation", "palette-ablation"),
    "latency-diagnosis": (["latency_diagnosis.py"], "latency-diagnosis", "latency-diagnosis"),
    "schemathesis": (["schemathesis_run.py"], "schemathesis", "schemathesis"),
    "decoder-int8": (["decoder_int8.py"], "decoder-int8", "decoder-int8"),
    "decoder": (["mlfs_reference.py", "decoder"], "decoder", "decoder"),
}
STORE_OPTION = {"latency", "device-latency"}  # the scripts that take --store (never the shared bench stores)
TEACHER = {"decoder-int8": "smollm2", "decoder": "smollm2"}  # the rest need MiniLM


# Over a minute each on CI's two cores: `make test-bench` runs them, `make test` leaves them out (the rolling restart
# and the build paths have their own tests there). The rest stay in the default run.
HEAVIEST = {"gamma", "stage2-ablation", "server-build", "replicas", "replicas-rolling", "palette-ablation", "decoder-int8",
            "decoder", "schemathesis"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.bench) if n in HEAVIEST else n for n in HEAVY])
def test_heavy_benchmark_quick(name, tmp_path, prepared_teacher):
    prepared_teacher(TEACHER.get(name, "minilm"))
    if name.startswith("replicas") and (why := _postgres_missing()):
        pytest.skip(why)
    args, stem, benchmark = HEAVY[name]
    out = tmp_path / ("palette-ablation" if name == "palette-ablation" else "out")
    extra = ["--store", str(tmp_path / "store")] if name in STORE_OPTION else []
    run([str(BENCH / args[0]), *args[1:], "--quick", "--out-dir", str(out), *extra], timeout=1200)
    rec = assert_result((out.parent if name == "palette-ablation" else out) / f"{stem}.json", benchmark, smoke=True)
    if name == "stage2-ablation":  # every arm ran once (the quick run keeps the first seed) and has all three subnets
        arms = rec["results"]["arms"]
        assert list(arms) == ["reference", "alpha=0", "fd=off"]
        for arm in arms.values():
            assert list(arm["by_seed"]) == ["0"] and set(arm["mean"]) == {"minnet", "mid", "maxnet"}
            assert all(0 < a <= 1 for a in arm["mean"].values())
        assert arms["alpha=0"]["minus_reference"]["minnet"]["by_seed"]["0"] == pytest.approx(
            arms["alpha=0"]["mean"]["minnet"] - arms["reference"]["mean"]["minnet"])
