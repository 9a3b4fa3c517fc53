"""benchmarks/decoder_palette.py --quick runs end to end on a tiny random Llama and writes a complete record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_measures_every_config_and_the_teacher(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the script imports bench_record beside it
    sys.modules.pop("decoder_palette", None)
    import decoder_palette

    decoder_palette.main(quick=True, out_dir=tmp_path, lock=str(tmp_path / "bench.lock"))
    record = json.loads((tmp_path / "decoder-palette-quick.json").read_text())
    assert record["smoke"] is True and record["environment"]["git"]["commit"] and record["command"]
    assert "onnxruntime" in record["environment"]["versions"]
    res = record["results"]
    teacher, rows = res["teacher"], res["configs"]
    assert [r["shape"] for r in rows] == ["L2 H3 F32", "L4 H6 F64"]  # the palette's configs, smallest first
    assert teacher["agreement_with_teacher"] == {"code": 1.0, "prose": 1.0}
    # the largest config is the teacher's shape with (random) adapters merged: close to it, not equal
    assert 0.5 < rows[1]["agreement_with_teacher"]["code"] < 1.0
    for r in [teacher, *rows]:
        assert r["code"]["perplexity"] > 1 and r["prose"]["perplexity"] > 1 and r["size_bytes"] > 0
        assert len(r["prefill_ms_rounds"]) == 3 and r["prefill_ms"] > 0
    assert rows[0]["size_bytes"] < teacher["size_bytes"] and rows[0]["params_total"] < teacher["params_total"]
    assert res["verdict"]["smallest"] == "L2 H3 F32"
    assert res["verdict"]["perplexity_ratio"] == rows[0]["ratios"]["code_perplexity"]
    assert (tmp_path / "decoder-palette-quick.png").stat().st_size > 0
