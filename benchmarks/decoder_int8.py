"""Decoder int8 (issue 18.6): next-token agreement and latency of SmolLM2 slices under each int8 option.

For each config: the fp32 graph (the server's default builder), then every option of
``slicer.onnx.decoder_int8.DECODER_INT8_OPTIONS``; per graph: argmax next-token agreement with the fp32 graph on
python-code dev blocks (every real position is a prediction), prefill ms for a ``--prompt``-token prompt and decode
ms per token (median over ``--steps`` greedy steps with the key/value cache), 2 onnxruntime threads, and file size.
Run it under the shared benchmark lock:

    flock /tmp/mlfs-bench.lock python benchmarks/decoder_int8.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from bench_record import base_record, console, machine, quick_out_dir, write_result

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = ['{"layers": 30, "heads": 9, "ffn": 1536}', '{"layers": 20, "heads": 6, "ffn": 1152}']
QUICK_CONFIG = '{"layers": 2, "heads": 3, "ffn": 384}'


def decode_latency(sess, dims, cfg, prompt: np.ndarray, steps: int) -> tuple[float, float]:
    """(prefill ms, median decode ms per token) with the graph's key/value cache, batch 1."""
    from slicer.onnx.validate import empty_past

    past = {k: v.numpy() for k, v in empty_past(dims, cfg, 1).items()}
    names = [o.name for o in sess.get_outputs()]
    ids, done, times = prompt[None], 0, []
    for _ in range(steps + 1):
        n = ids.shape[1]
        feed = {"input_ids": ids, "attention_mask": np.ones((1, done + n), np.int64),
                "position_ids": np.arange(done, done + n, dtype=np.int64)[None], **past}
        start = time.perf_counter()
        out = sess.run(None, feed)
        times.append(1000 * (time.perf_counter() - start))
        past = {"past." + k[len("present."):]: v for k, v in zip(names[1:], out[1:])}
        done += n
        ids = np.array([[int(out[0][0, -1].argmax())]], np.int64)
    return times[0], statistics.median(times[1:])


def main(configs: Annotated[list[str] | None, typer.Option("--config", help="subnet JSON; repeatable")] = None,
         blocks: Annotated[int, typer.Option(help="python-code dev blocks for agreement")] = 32,
         prompt: Annotated[int, typer.Option(help="prompt tokens for prefill")] = 64,
         steps: Annotated[int, typer.Option(help="decode steps timed")] = 32,
         options: Annotated[list[str] | None, typer.Option("--option", help="int8 options; default all")] = None,
         stem: Annotated[str, typer.Option(help="result file name")] = "decoder-int8",
         out_dir: Annotated[Path, typer.Option(help="Where the JSON and PNG go.")] = RESULTS,
         quick: Annotated[bool, typer.Option("--quick", help="Smoke run: one 2-layer slice, 8 blocks, 2 decode steps; "
                                                           "into results/quick/ (marked smoke).")] = False) -> None:
    from slicer import BuildOptions, SubnetConfig, open_supernet, validation_set
    from slicer.formats.reordering_cache import default_reordering_cache
    from slicer.onnx.build import write_model_graph
    from slicer.onnx.decoder_int8 import DECODER_INT8_OPTIONS
    from slicer.onnx.quantize import gate_feeds
    from slicer.onnx.validate import session

    started = time.perf_counter()
    if quick:
        configs, blocks, prompt, steps = configs or [QUICK_CONFIG], min(blocks, 8), min(prompt, 16), min(steps, 2)
    out_dir = quick_out_dir(out_dir, quick)
    opened = open_supernet("smollm2", reordering_cache=default_reordering_cache())
    dims = opened.supernet.dims
    val = validation_set(opened, "python-code")
    gate = []
    for b in val.gate:  # the first ``blocks`` dev blocks, in batches of 8
        for s in range(0, len(b["input_ids"]), 8):
            if sum(len(g["input_ids"]) for g in gate) < blocks:
                gate.append({k: v[s: s + 8] for k, v in b.items()})
    names = options or list(DECODER_INT8_OPTIONS)
    results = []
    with tempfile.TemporaryDirectory(prefix="mlfs-int8-bench-") as tmp:
        for text in configs or CONFIGS:
            cfg = SubnetConfig.parse(text, dims)
            subnet = opened.supernet.extract(cfg)
            fp32 = Path(tmp) / f"{cfg.key}.fp32.onnx"
            write_model_graph(subnet, fp32, BuildOptions())
            feeds = gate_feeds(subnet, gate)
            prompt_ids = gate[0]["input_ids"][0][:prompt].numpy()
            ref = session(fp32, threads=2)
            ref_tokens = [ref.run(None, f)[0].argmax(-1) for f in feeds]
            masks = [f["attention_mask"].astype(bool) for f in feeds]
            row = {"config": cfg.to_dict(), "shape": cfg.describe(), "positions": int(sum(m.sum() for m in masks))}
            pre, dec = decode_latency(ref, dims, cfg, prompt_ids, steps)
            row["fp32"] = {"prefill_ms": pre, "decode_ms_per_token": dec, "size_mb": fp32.stat().st_size / 2**20}
            console.print(cfg.describe(), "fp32", row["fp32"])
            for name in names:
                dst = Path(tmp) / f"{cfg.key}.{name}.onnx"
                q0 = time.perf_counter()
                scheme = DECODER_INT8_OPTIONS[name](fp32, dst)
                quantize_s = time.perf_counter() - q0
                sess = session(dst, threads=2)
                agree = sum(int((sess.run(None, f)[0].argmax(-1) == t)[m].sum()) for f, t, m in zip(feeds, ref_tokens, masks))
                pre, dec = decode_latency(sess, dims, cfg, prompt_ids, steps)
                row[name] = {"scheme": scheme["scheme"], "agreement": agree / row["positions"], "prefill_ms": pre,
                             "decode_ms_per_token": dec, "decode_vs_fp32": dec / row["fp32"]["decode_ms_per_token"],
                             "prefill_vs_fp32": pre / row["fp32"]["prefill_ms"], "size_mb": dst.stat().st_size / 2**20,
                             "quantize_s": quantize_s}
                console.print(cfg.describe(), name, row[name])
                dst.unlink()
            fp32.unlink()
            results.append(row)
    load = os.getloadavg()
    console.print(f"load average {load}")
    record = base_record("decoder-int8", __doc__.split("\n\n")[0],
                         {"blocks": blocks, "prompt": prompt, "steps": steps, "threads": 2, "options": names},
                         {"configs": results}, started, {**machine(), "loadavg": load}, quick, [])
    write_result(out_dir, stem, record)


if __name__ == "__main__":
    typer.run(main)
