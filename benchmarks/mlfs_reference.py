"""Reference points for the MLFS results (the method of Kundu et al., NAACL 2024 Industry, arXiv 2404.01353):
what MLFS is compared against.

Subcommands (each prints a table and writes ``benchmarks/results/<subcommand>[_<tag>].json`` and its PNG,
drawn by ``plots.py``; ``--quick``: a smoke run into ``results/quick/``):

- ``full-ft``        a teacher (or one shape cut from it) fully fine-tuned on its own: "train each config
                     separately", the cost MLFS avoids.
- ``no-stages-1-2``  a trained adapter stack evaluated with and without its stage-1/2 adapters: the minnet
                     sliced from the stage-0 teacher with no further training.
- ``gamma``          gradient scaling ablation (the paper's Fig. 2): stage 2 retrained from the same point
                     with gamma = 2 and gamma = 0.
- ``decoder``        SmolLM2 sliced to a smaller shape vs. the same shape randomly initialised, both trained
                     fully (the paper's Fig. 5).

Every JSON records the settings, the wall time, the torch version and the exact command. These are
benchmarks (minutes to an hour on a 2-core CPU); tests never run them. ``--limit-train`` / ``--limit-dev`` /
``--train-chars`` exist for smoke runs only; a result written with them is marked ``"smoke": true``.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from bench_record import base_record, machine, quick_out_dir, write_result
from rich.console import Console
from rich.table import Table
from torch import nn

from slicer.data.batching import Examples, batch_indices, collate, eval_batches, tokenize_stream
from slicer.data.calibration import load_tokenizer
from slicer.data.examples import load_examples
from slicer.data.readers import load_dataset_dir
from slicer.errors import MLFSError
from slicer.formats.adapter_stack import STACK_META, StackMeta
from slicer.formats.storage import load_base
from slicer.formats.teachers import resolve_base
from slicer.nn.elastic import ElasticRMSNorm
from slicer.nn.factory import build_model
from slicer.nn.model import SlicedTransformer
from slicer.nn.supernet import Supernet
from slicer.slicing import open_supernet, read_config_arg
from slicer.spec.palette import read_palette
from slicer.spec.subnet_config import SubnetConfig
from slicer.train.evaluate import evaluate_config
from slicer.train.losses import causal_lm_loss, classification_loss, kd_loss
from slicer.train.reorder import reorder_by_importance
from slicer.train.trainer import Trainer, TrainSettings

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DECODER_CONFIG = '{"layers": 10, "heads": 6, "ffn": 768}'
REORDER_CALIBRATION_EXAMPLES = 32  # what slicer.train.fit uses: the first 32 training examples, in batches of 8

app = typer.Typer(help="MLFS reference benchmarks: full fine-tuning, no stages 1-2, gamma, decoder.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console(width=None if sys.stdout.isatty() else 140)  # wide tables in logs, too


class Reorder(str, Enum):
    train = "train"  # rank units on the first training examples, as `mlfs train` does
    calibration = "calibration"  # rank on stdlib text, as `mlfs slice` (open_supernet) does
    none = "none"


# ----- shared options -----------------------------------------------------------------------------------------
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda (bf16 autocast on CUDA).")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="torch CPU threads; 0 = torch's default.")]
OutDirOpt = Annotated[Path, typer.Option("--out-dir", help="Where the JSON (and PNG) go.")]
TagOpt = Annotated[str, typer.Option("--tag", help="Suffix for the result file names (default: derived from the config).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for initialisation and data order.")]
LimitTrainOpt = Annotated[int, typer.Option("--limit-train", help="Smoke runs only: use N evenly spaced training examples (0 = all).")]
LimitDevOpt = Annotated[int, typer.Option("--limit-dev", help="Smoke runs only: use N evenly spaced dev examples (0 = all).")]
QuickOpt = Annotated[bool, typer.Option("--quick", help="Smoke run: a few steps on a few examples, written to results/quick/ (marked smoke).")]


# ----- bookkeeping --------------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict[str, Any]:
    return {**machine(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": str(device),
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def setup(device: str, threads: int) -> torch.device:
    if threads > 0:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("cuda was asked for but no CUDA device is available", param_hint="--device")
    return torch.device(device)


def record(name: str, what: str, settings: dict[str, Any], results: dict[str, Any], started: float,
           device: torch.device, smoke: bool, notes: list[str]) -> dict[str, Any]:
    return base_record(name, what, settings, results, started, environment(device), smoke, notes)


def slug(cfg: SubnetConfig) -> str:
    """``L3[1,3,5] H6 F768 D384`` -> ``L3-1-3-5_H6_F768_D384`` (a file-name-safe config label)."""
    return cfg.describe().replace("[", "-").replace("]", "").replace(",", "-").replace(" ", "_").replace("/", "-")


# ----- training helpers ---------------------------------------------------------------------------------------
def lr_at(step: int, total: int, lr: float, warmup: float) -> float:
    """Linear warm-up over ``warmup`` of the steps, then linear decay to zero (as slicer.train.trainer.Trainer.lr_at)."""
    warm = max(1, round(warmup * total))
    if step < warm:
        return lr * (step + 1) / warm
    return lr * max(0.0, (total - step) / max(1, total - warm))


def limit(examples: Examples, n: int) -> Examples:
    """``n`` evenly spaced examples (the prepared files are ordered by label, so a prefix would be one class)."""
    if n <= 0 or n >= len(examples):
        return examples
    idx = [i * len(examples) // n for i in range(n)]
    labels = None if examples.labels is None else [examples.labels[i] for i in idx]
    return Examples([examples.ids[i] for i in idx], labels, examples.family)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def accuracy(model: nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Accuracy of a standalone classifier (slicer.train.evaluate.evaluate_config needs a Supernet)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for b in batches:
        b = to_device(b, device)
        with autocast(device):
            logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
        correct += (logits.argmax(-1) == b["labels"]).sum().item()
        total += len(b["labels"])
    model.train(was_training)
    return correct / total


def probe_task_loss(net: Supernet, cfg: SubnetConfig, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Mean cross-entropy of subnet ``cfg`` over fixed batches (a training-loss curve without batch noise);
    called between training steps, so the supernet goes back to training mode."""
    try:
        return evaluate_config(net, cfg, batches, "classification", device)["loss"]
    finally:
        net.train()


@torch.no_grad()
def lm_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Mean next-token loss per token (the formula of slicer.train.evaluate, for a standalone model)."""
    was_training = model.training
    model.eval()
    loss_sum = tokens = 0.0
    for b in batches:
        b = to_device(b, device)
        with autocast(device):
            logits = model(**b).logits
        logits = logits[:, :-1].float()
        target = b["input_ids"][:, 1:].masked_fill(b["attention_mask"][:, 1:] == 0, -100)
        loss_sum += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                reduction="sum", ignore_index=-100).item()
        tokens += (target != -100).sum().item()
    model.train(was_training)
    return loss_sum / tokens


def reorder_model(model: SlicedTransformer, base_dir: Path, how: Reorder, train: Examples, n: int) -> None:
    """Importance reordering before slicing, on the training text (like `mlfs train`) or stdlib text."""
    if how is Reorder.none:
        return
    batches = None
    if how is Reorder.train:
        n = min(n, len(train))
        batches = [collate(train, range(i, min(i + 8, n))) for i in range(0, n, 8)]
    reorder_by_importance(model, base_dir, batches)


def full_training(model: nn.Module, params: list[nn.Parameter], examples: Examples, loss_fn: Callable,
                  total: int, *, lr: float, warmup: float, weight_decay: float, clip: float, batch_size: int,
                  seed: int, device: torch.device, log_every: int, label: str,
                  on_step_end: Callable[[int], None] | None = None) -> dict[str, Any]:
    """AdamW over ``params`` for ``total`` steps; batch ``k`` is slicer.data.batching.batch_indices(stage 0, step k)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    losses, seconds = [], []
    for step in range(total):
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, lr, warmup)
        batch = to_device(collate(examples, batch_indices(len(examples), batch_size, seed, 0, step)), device)
        with autocast(device):
            out = model(**{k: v for k, v in batch.items() if k != "labels"})
            loss = loss_fn(out, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        seconds.append(time.perf_counter() - start)
        if log_every and ((step + 1) % log_every == 0 or step + 1 == total):
            window = losses[-log_every:]
            console.print(f"  {label} step {step + 1}/{total}  loss {sum(window) / len(window):.4f}  "
                          f"lr {opt.param_groups[0]['lr']:.2e}  {seconds[-1]:.2f} s/step")
        if on_step_end:
            on_step_end(step + 1)
    return {"train_loss": losses, "step_seconds": seconds}


def seconds_per_step(seconds: list[float]) -> float | None:
    """Mean step time, leaving out the first step (allocator and kernel warm-up) when there are others."""
    rest = seconds[1:] or seconds
    return round(sum(rest) / len(rest), 4) if rest else None


def tail_mean(values: list[float], fraction: float) -> float:
    k = max(1, math.ceil(len(values) * fraction))
    tail = values[-k:]
    return sum(tail) / len(tail)


# ----- stacks -------------------------------------------------------------------------------------------------
def stack_meta(adapters: Path) -> StackMeta:
    if not (adapters / STACK_META).is_file():
        raise typer.BadParameter(f"{adapters} holds no {STACK_META}; pass an MLFS run's adapters/ folder",
                                 param_hint="--adapters")
    return StackMeta.read(adapters)


def stack_settings(meta: StackMeta) -> dict[str, Any]:
    """The TrainSettings the stack was trained with (``train_settings`` in its metadata), else the defaults."""
    known = {f.name for f in fields(TrainSettings)}
    saved = {k: v for k, v in meta.train_settings.items() if k in known}
    if "stages" in saved:
        saved["stages"] = tuple(saved["stages"])
    return asdict(TrainSettings(**saved))


def zero_stages(net: Supernet, stages: tuple[int, ...]) -> None:
    """Switch stages off in place: A_s = 0 makes A_s B_s = 0 (B_s is kept); their vector/head deltas are zeroed."""
    with torch.no_grad():
        for stack in net.adapter_stacks().values():
            for s in stages:
                stack.A[s].zero_()
        for deltas in net.deltas.values():
            for s in stages:
                if str(s) in deltas.deltas:
                    deltas.deltas[str(s)].zero_()


@contextmanager
def timed(label: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    console.print(f"[dim]{label}: {time.perf_counter() - start:.1f} s[/]")


# ===== full-ft ================================================================================================
@app.command("full-ft")
def full_ft(
    config: Annotated[str | None, typer.Option("--config", help='Shape to cut from the pretrained model first, e.g. \'{"layers":3,"heads":6,"ffn":768}\' (JSON or a file). Default: the full teacher.')] = None,
    base: Annotated[str, typer.Option("--base", help="Encoder teacher name or checkpoint folder.")] = "minilm",
    data: Annotated[str, typer.Option("--data", help="Classification dataset name or folder.")] = "movie-reviews",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 2,
    lr: Annotated[float, typer.Option("--lr")] = 5e-5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    max_len: Annotated[int, typer.Option("--max-len", min=2)] = 64,
    warmup: Annotated[float, typer.Option("--warmup", help="Warm-up fraction of all steps.")] = 0.06,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.0,
    clip: Annotated[float, typer.Option("--clip")] = 1.0,
    reorder: Annotated[Reorder, typer.Option("--reorder", help="Importance reordering before slicing (only with --config).")] = Reorder.train,
    kd_adapters: Annotated[Path | None, typer.Option("--kd-adapters", help="Also distil from this MLFS stack's maxnet: loss (1-a)*task + a*KD, with the stack's alpha and temperature.")] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Start the shape from random initialisation (as the decoder benchmark's random model) instead of the pretrained weights.")] = False,
    eval_batch: Annotated[int, typer.Option("--eval-batch", min=1)] = 64,
    log_every: Annotated[int, typer.Option("--log-every", min=0)] = 25,
    seed: SeedOpt = 0,
    limit_train: LimitTrainOpt = 0,
    limit_dev: LimitDevOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
    out_dir: OutDirOpt = RESULTS,
    tag: TagOpt = "",
    quick: QuickOpt = False,
) -> None:
    """Fine-tune ALL weights of the teacher (or of one shape sliced from it) on its own: the reference MLFS avoids."""
    started = time.perf_counter()
    if quick:
        epochs, limit_train, limit_dev = 1, limit_train or 64, limit_dev or 64
    out_dir = quick_out_dir(out_dir, quick)
    dev = setup(device, threads)
    torch.manual_seed(seed)
    base_dir = resolve_base(base)
    model = load_base(base_dir)
    dims = model.dims
    if dims.family != "encoder":
        raise typer.BadParameter(f"{base} is a {dims.family}; full-ft fine-tunes an encoder classifier", param_hint="--base")
    train, dev_ex, info = load_examples(base_dir, data, "classification", max_len, "encoder")
    train, dev_ex = limit(train, limit_train), limit(dev_ex, limit_dev)

    cfg = SubnetConfig.parse(read_config_arg(config), dims) if config else SubnetConfig.maximal(dims)
    sliced = cfg != SubnetConfig.maximal(dims)
    if sliced:
        with timed(f"reorder ({reorder.value}) + slice to {cfg.describe()}"):
            if not random_init:  # the order of random units means nothing
                reorder_model(model, base_dir, reorder, train, REORDER_CALIBRATION_EXAMPLES)
            model = Supernet(model).extract(cfg)  # zero adapters: the plain slice of the pretrained weights
    torch.manual_seed(seed)
    if random_init:
        init_random(model)
    model.add_classification_head(len(info["label_names"]))
    model.to(dev)
    for p in model.parameters():
        p.requires_grad_(True)
    params = [p for p in model.parameters()]
    count = cfg.param_count(dims)
    loss_fn, kd = classification_loss, None
    if kd_adapters is not None:
        kd = {k: stack_settings(stack_meta(kd_adapters))[k] for k in ("alpha", "temperature")}
        loss_fn = distillation_loss(open_supernet(base, kd_adapters).supernet.to(dev), kd["alpha"], kd["temperature"])

    steps_per_epoch = len(train) // batch_size
    if steps_per_epoch == 0:
        raise typer.BadParameter(f"batch size {batch_size} is larger than the training set ({len(train)})")
    total = epochs * steps_per_epoch
    batches = eval_batches(dev_ex, eval_batch)
    label = cfg.describe() if sliced else f"teacher {cfg.describe()}"
    console.print(f"full fine-tuning of {label}: {sum(p.numel() for p in params):,} trainable parameters, "
                  f"{len(train)} train / {len(dev_ex)} dev examples, {total} steps")
    per_epoch: list[dict[str, Any]] = []

    def after_step(done: int) -> None:
        if done % steps_per_epoch == 0:
            start = time.perf_counter()
            acc = accuracy(model, batches, dev)
            per_epoch.append({"epoch": done // steps_per_epoch, "step": done, "dev_accuracy": acc,
                              "eval_seconds": round(time.perf_counter() - start, 2)})
            console.print(f"  epoch {done // steps_per_epoch}: dev accuracy {acc:.4f}")

    run = full_training(model, params, train, loss_fn, total, lr=lr, warmup=warmup,
                        weight_decay=weight_decay, clip=clip, batch_size=batch_size, seed=seed, device=dev,
                        log_every=log_every, label="train", on_step_end=after_step)
    for row in per_epoch:
        k = row["epoch"]
        row["train_loss_mean"] = sum(run["train_loss"][(k - 1) * steps_per_epoch : k * steps_per_epoch]) / steps_per_epoch

    table = Table(title=f"full fine-tuning: {label} on {data}")
    for col in ("epoch", "steps", "train loss", "dev accuracy"):
        table.add_column(col, justify="right")
    for row in per_epoch:
        table.add_row(str(row["epoch"]), str(row["step"]), f"{row['train_loss_mean']:.4f}", f"{100 * row['dev_accuracy']:.2f}%")
    console.print(table)
    sps = seconds_per_step(run["step_seconds"])
    console.print(f"{sps} s/step over {total} steps")

    settings = {"base": base, "data": data, "config": cfg.to_dict(), "config_label": cfg.describe(), "sliced": sliced,
                "reorder": reorder.value if sliced and not random_init else "n/a (full teacher or random init: reordering changes nothing)",
                "init": "random: normal(0, 0.02) linear/embedding weights, zero biases, norms 1" if random_init else "pretrained",
                "epochs": epochs, "lr": lr, "batch_size": batch_size, "max_len": max_len, "warmup": warmup,
                "schedule": "linear warm-up then linear decay to 0", "optimizer": "AdamW", "weight_decay": weight_decay,
                "clip": clip, "seed": seed, "trainable": "all parameters (embeddings, layers, head)",
                "kd_adapters": str(kd_adapters) if kd_adapters else None, "kd": kd,
                "limit_train": limit_train, "limit_dev": limit_dev, "eval_batch": eval_batch}
    results = {"per_epoch": per_epoch, "final_dev_accuracy": per_epoch[-1]["dev_accuracy"],
               "params": {"total_without_head": count.total, "non_embedding_without_head": count.non_embedding,
                          "trainable_with_head": sum(p.numel() for p in params)},
               "steps": total, "steps_per_epoch": steps_per_epoch, "seconds_per_step": sps,
               "data": {**info, "train_used": len(train), "dev_used": len(dev_ex)},
               "train_loss": run["train_loss"]}
    notes = ["Our encoder has no dropout (the stock-transformers reference used BERT's 0.1 dropout).",
             "Classification head: mean-pooled last hidden state -> linear, as the MLFS stack's head."]
    unordered = sliced and not random_init and reorder is not Reorder.train  # the reordering ablation's arm
    stem = ("full-ft" + ("-kd" if kd else "") + ("-random" if random_init else "") + (f"-reorder-{reorder.value}" if unordered else "")
            + (f"_{tag}" if tag else f"_{slug(cfg)}" if sliced else ""))
    what = ("randomly initialised shape, fully trained" if random_init
            else "fully fine-tuned " + ("slice of the pretrained model" if sliced else "teacher"))
    what += f", distilled from the maxnet of {kd_adapters}" if kd else ""
    write_result(out_dir, stem, record("full-ft", what, settings, results, started, dev, bool(limit_train or limit_dev), notes))


def distillation_loss(teacher: Supernet, alpha: float, temperature: float) -> Callable:
    """(1 - alpha) * task + alpha * KD against ``teacher``'s maxnet (frozen): the MLFS subnet loss without FD."""
    teacher.set_max()
    teacher.eval()

    def loss(out, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return (1 - alpha) * classification_loss(out, batch) + alpha * kd_loss(out.logits, target, temperature)

    return loss


# ===== no-stages-1-2 ==========================================================================================
@app.command("no-stages-1-2")
def no_stages_1_2(
    adapters: Annotated[Path, typer.Option("--adapters", help="An MLFS run's adapters/ folder.")],
    config: Annotated[list[str] | None, typer.Option("--config", help="Subnet(s) to evaluate besides the maxnet (repeatable). Default: the search space's smallest.")] = None,
    base: Annotated[str, typer.Option("--base")] = "minilm",
    data: Annotated[str, typer.Option("--data")] = "movie-reviews",
    max_len: Annotated[int, typer.Option("--max-len", help="0 = the stack's training max_len.")] = 0,
    eval_batch: Annotated[int, typer.Option("--eval-batch", min=1)] = 64,
    limit_dev: LimitDevOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
    out_dir: OutDirOpt = RESULTS,
    tag: TagOpt = "",
    quick: QuickOpt = False,
) -> None:
    """Maxnet and minnet of a stack, then the same with every stage-1 and stage-2 A zeroed (the stage-0 teacher)."""
    started = time.perf_counter()
    if quick:
        limit_dev = limit_dev or 64
    out_dir = quick_out_dir(out_dir, quick)
    dev = setup(device, threads)
    meta = stack_meta(adapters)
    trained = stack_settings(meta)
    max_len = max_len or trained["max_len"]
    opened = open_supernet(base, adapters)
    net, dims = opened.supernet, opened.supernet.dims
    net.to(dev)
    _, dev_ex, info = load_examples(opened.base_dir, data, "classification", max_len, "encoder")
    dev_ex = limit(dev_ex, limit_dev)
    batches = eval_batches(dev_ex, eval_batch)

    configs = [net.max_config] + ([SubnetConfig.parse(read_config_arg(c), dims) for c in config] if config
                                  else [net.space.smallest(dims)])
    table = read_palette(adapters)
    palette = {r["key"]: r.get("accuracy") for r in (table.rows if table else ())}
    rows = []
    for cfg in configs:
        count = cfg.param_count(dims)
        rows.append({"config": cfg.to_dict(), "shape": cfg.describe(), "key": cfg.key, "params_total": count.total,
                     "params_non_embedding": count.non_embedding,
                     "accuracy_all_stages": evaluate_config(net, cfg, batches, "classification", dev)["accuracy"],
                     "palette_json_accuracy": palette.get(cfg.key)})
    zero_stages(net, (1, 2))
    for row, cfg in zip(rows, configs):
        row["accuracy_stage0_only"] = evaluate_config(net, cfg, batches, "classification", dev)["accuracy"]

    maxnet, minnet = rows[0], rows[1]
    teacher_ne = maxnet["params_non_embedding"]
    table = Table(title=f"{adapters}: with and without stages 1-2 ({len(dev_ex)} dev examples)")
    for col in ("subnet", "non-emb. params", "all stages", "stage 0 only (A1 = A2 = 0)", "palette.json"):
        table.add_column(col, justify="right")
    for row in rows:
        pj = row["palette_json_accuracy"]
        table.add_row(row["shape"], f"{row['params_non_embedding'] / 1e6:.2f}M ({row['params_non_embedding'] / teacher_ne:.0%})",
                      f"{100 * row['accuracy_all_stages']:.2f}%", f"{100 * row['accuracy_stage0_only']:.2f}%",
                      "-" if pj is None else f"{100 * pj:.2f}%")
    console.print(table)
    summary = {"maxnet": maxnet["accuracy_all_stages"], "stage0_teacher": maxnet["accuracy_stage0_only"],
               "minnet": minnet["accuracy_all_stages"], "minnet_without_stages_1_2": minnet["accuracy_stage0_only"],
               "minnet_shape": minnet["shape"]}
    small = "minnet" if not config else minnet["shape"]  # with --config, the first one given stands in its place
    console.print(f"maxnet {100 * summary['maxnet']:.2f}%  stage-0 teacher {100 * summary['stage0_teacher']:.2f}%  "
                  f"{small} {100 * summary['minnet']:.2f}%  {small} without stages 1-2 "
                  f"{100 * summary['minnet_without_stages_1_2']:.2f}%")
    notes = []
    if meta.stage < 2:
        notes.append(f"the stack's last trained stage is {meta.stage}; stages it did not train are zero anyway")
    settings = {"adapters": str(adapters), "base": base, "data": data, "max_len": max_len, "eval_batch": eval_batch,
                "limit_dev": limit_dev, "configs": [c.to_dict() for c in configs],
                "stack": {k: meta.to_dict().get(k) for k in ("base_fingerprint", "rank", "targets", "stages", "stage",
                                                             "reordered", "search_space", "train_settings")}}
    results = {"summary": summary, "rows": rows, "data": {**info, "dev_used": len(dev_ex)}}
    stem = "no-stages-1-2" + (f"_{tag}" if tag else "")
    write_result(out_dir, stem, record("no-stages-1-2", "accuracy with stage-1/2 adapters switched off",
                                       settings, results, started, dev, bool(limit_dev), notes))


# ===== stage 2 retrained from one point: the shared machinery of gamma and stage2-ablation ===================
@dataclass
class Stage2Setup:
    """What every stage-2 retraining run of one call shares: the stack's settings, the data, fixed batches."""

    trained: dict[str, Any]  # the TrainSettings the stack was trained with
    overrides: dict[str, Any]  # stage 2 only, N steps, the seed, the lr
    train: Examples
    batches: list[dict[str, torch.Tensor]]  # dev
    probe: list[dict[str, torch.Tensor]]  # fixed, evenly spaced training examples
    info: dict[str, Any]
    train_used: int
    dev_used: int


def stage2_setup(adapters: Path, base: str, data: str, steps: int, seed: int, lr: float, probe_examples: int,
                 eval_batch: int, limit_train: int, limit_dev: int) -> Stage2Setup:
    meta = stack_meta(adapters)
    trained = stack_settings(meta)
    if trained["task"] != "classification":
        raise typer.BadParameter("stage-2 retraining runs on a classification stack", param_hint="--adapters")
    seed = trained["seed"] if seed < 0 else seed
    base_dir = resolve_base(base)
    train, dev_ex, info = load_examples(base_dir, data, "classification", trained["max_len"], "encoder")
    train, dev_ex = limit(train, limit_train), limit(dev_ex, limit_dev)
    steps_per_epoch = len(train) // trained["batch_size"]
    if steps_per_epoch == 0:
        raise typer.BadParameter(f"batch size {trained['batch_size']} is larger than the training set ({len(train)})")
    overrides = {"stages": (2,), "max_steps": steps, "epochs": float(math.ceil(steps / steps_per_epoch) + 1),
                 "seed": seed, "checkpoint_every": steps, **({"lr": lr} if lr > 0 else {})}
    return Stage2Setup(trained, overrides, train, eval_batches(dev_ex, eval_batch),
                       eval_batches(limit(train, probe_examples), eval_batch), info, len(train), len(dev_ex))


def stage2_run(s2: Stage2Setup, base: str, adapters: Path, changes: dict[str, Any], extra: dict[str, SubnetConfig],
               label: str, probe_every: int, log_every: int, tail: float, dev: torch.device,
               start: dict[str, float] | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """Reload the stack, zero A_2 (B_2 kept), retrain stage 2 with ``changes`` to its TrainSettings; return the
    run (loss curves, probe curves, dev accuracy of the minnet, the maxnet and each ``extra`` subnet) and the
    dev accuracy of the same subnets at the starting point (measured unless ``start`` gives it: it is the same
    for every run of one stack)."""
    started = time.perf_counter()
    settings = TrainSettings(**{**s2.trained, **s2.overrides, **changes})
    torch.manual_seed(settings.seed)
    net = open_supernet(base, adapters).supernet  # reload: every run starts from the same point
    zero_stages(net, (2,))
    net.to(dev)
    minnet = net.space.smallest(net.dims)
    configs = {"minnet": minnet, **extra, "maxnet": net.max_config}

    def dev_accuracy() -> dict[str, float]:
        return {k: evaluate_config(net, c, s2.batches, "classification", dev)["accuracy"] for k, c in configs.items()}

    start = start or dev_accuracy()
    console.print(f"{label}: start (A_2 = 0) " + ", ".join(f"{k} {100 * a:.2f}%" for k, a in start.items())
                  + f"; stage 2 for {settings.max_steps} steps")
    probes = {"step": [0], "minnet": [probe_task_loss(net, minnet, s2.probe, dev)],
              "maxnet": [probe_task_loss(net, net.max_config, s2.probe, dev)]}

    def on_step(m, total) -> None:
        done = m.step + 1
        if done % probe_every == 0 or done == total:
            probes["step"].append(done)
            probes["minnet"].append(probe_task_loss(net, minnet, s2.probe, dev))
            probes["maxnet"].append(probe_task_loss(net, net.max_config, s2.probe, dev))
        if log_every and (done % log_every == 0 or done == total):
            console.print(f"  {label} step {done}/{total}  maxnet {m.loss_max:.4f}  minnet task "
                          f"{m.task_min:.4f}  {m.seconds:.2f} s/step")

    with tempfile.TemporaryDirectory(prefix="mlfs-stage2-") as tmp:
        Trainer(net, s2.train, settings, Path(tmp), dev).run(on_step=on_step)
        metrics = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    task_min = [m["task_min"] for m in metrics]
    loss_max = [m["loss_max"] for m in metrics]
    acc = dev_accuracy()
    run = {
        "settings": asdict(settings),
        "task_min": task_min, "loss_min": [m["loss_min"] for m in metrics], "loss_max": loss_max,
        "task_min_tail_mean": tail_mean(task_min, tail), "loss_max_tail_mean": tail_mean(loss_max, tail),
        "probe": probes,
        "minnet_dev_accuracy": acc["minnet"], "maxnet_dev_accuracy": acc["maxnet"], "dev_accuracy": acc,
        "shapes": {k: c.describe() for k, c in configs.items()},
        "seconds_per_step": seconds_per_step([m["seconds"] for m in metrics]),
        "run_seconds": round(time.perf_counter() - started, 1),
        "minnet": minnet.describe(),
    }
    return run, start  # the supernet goes with this frame


# ===== gamma ==================================================================================================
@app.command("gamma")
def gamma_ablation(
    adapters: Annotated[Path, typer.Option("--adapters", help="A trained stack (an MLFS run's adapters/ folder).")],
    steps: Annotated[int, typer.Option("--steps", min=1, help="Stage-2 steps per run.")] = 150,
    gammas: Annotated[str, typer.Option("--gammas", help="Comma-separated gamma values, one run each.")] = "2,0",
    base: Annotated[str, typer.Option("--base")] = "minilm",
    data: Annotated[str, typer.Option("--data")] = "movie-reviews",
    lr: Annotated[float, typer.Option("--lr", help="0 = the stack's training lr.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="-1 = the stack's training seed.")] = -1,
    tail: Annotated[float, typer.Option("--tail", help="Fraction of final steps the loss is averaged over.")] = 0.2,
    smooth_window: Annotated[int, typer.Option("--smooth", min=1, help="Moving-average window for the plot.")] = 10,
    probe_examples: Annotated[int, typer.Option("--probe-examples", min=1, help="Fixed, evenly spaced training examples the minnet's loss is measured on.")] = 512,
    probe_every: Annotated[int, typer.Option("--probe-every", min=1, help="Measure the probe loss every N steps (and at step 0).")] = 25,
    eval_batch: Annotated[int, typer.Option("--eval-batch", min=1)] = 64,
    log_every: Annotated[int, typer.Option("--log-every", min=0)] = 25,
    limit_train: LimitTrainOpt = 0,
    limit_dev: LimitDevOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
    out_dir: OutDirOpt = RESULTS,
    tag: TagOpt = "",
    quick: QuickOpt = False,
) -> None:
    """Retrain stage 2 from A_2 = 0 with each gamma (same seed, same batches); compare the minnet's task loss."""
    started = time.perf_counter()
    if quick:
        steps, probe_examples, probe_every = min(steps, 4), min(probe_examples, 32), 2
        limit_train, limit_dev = limit_train or 64, limit_dev or 64
    out_dir = quick_out_dir(out_dir, quick)
    dev = setup(device, threads)
    try:
        gamma_values = [float(g) for g in gammas.split(",") if g.strip()]
    except ValueError:
        raise typer.BadParameter(f"{gammas!r} is not a comma-separated list of numbers", param_hint="--gammas") from None
    s2 = stage2_setup(adapters, base, data, steps, seed, lr, probe_examples, eval_batch, limit_train, limit_dev)
    trained, overrides, info = s2.trained, s2.overrides, s2.info

    runs: dict[str, dict[str, Any]] = {}
    start_acc: dict[str, float] | None = None
    for g in gamma_values:
        label = f"gamma={g:g}"
        run, start_acc = stage2_run(s2, base, adapters, {"gamma": g}, {}, label, probe_every, log_every, tail, dev, start_acc)
        runs[label] = {"gamma": g, **run}

    table = Table(title=f"gradient scaling: stage 2 retrained for {steps} steps from A_2 = 0 ({adapters})")
    for col in ("run", f"minnet task loss (last {tail:.0%})", f"maxnet loss (last {tail:.0%})", "minnet dev acc",
                "maxnet dev acc", "s/step"):
        table.add_column(col, justify="right")
    for label, r in runs.items():
        table.add_row(label, f"{r['task_min_tail_mean']:.4f}", f"{r['loss_max_tail_mean']:.4f}",
                      f"{100 * r['minnet_dev_accuracy']:.2f}%", f"{100 * r['maxnet_dev_accuracy']:.2f}%",
                      str(r["seconds_per_step"]))
    console.print(table)
    # A coarse text curve: the minnet's mean task loss in (up to) five equal windows of steps.
    parts = min(5, steps)
    curve = Table(title=f"minnet task loss, mean over {parts} equal windows of steps")
    curve.add_column("run")
    fifths = [(i * steps // parts, (i + 1) * steps // parts) for i in range(parts)]
    for a, b in fifths:
        curve.add_column(f"steps {a + 1}-{b}", justify="right")
    for label, r in runs.items():
        cells = [r["task_min"][a:b] for a, b in fifths]
        curve.add_row(label, *[f"{sum(c) / len(c):.4f}" if c else "-" for c in cells])
    console.print(curve)
    probe_table = Table(title=f"task loss on {sum(len(b['labels']) for b in s2.probe)} fixed training examples (probe), by step")
    probe_table.add_column("run / subnet")
    first = next(iter(runs.values()))["probe"]["step"]
    for step in first:
        probe_table.add_column(str(step), justify="right")
    for label, r in runs.items():
        for which in ("minnet", "maxnet"):
            probe_table.add_row(f"{label} {which}", *[f"{v:.4f}" for v in r["probe"][which]])
    console.print(probe_table)

    stem = "gamma" + (f"_{tag}" if tag else "")
    notes = ["task_min = the smallest subnet's task (cross-entropy) loss on its training batch, before scaling.",
             "probe = task loss on the same evenly spaced training examples at every probe step (no batch noise).",
             "Both runs: the same stack, A_2 zeroed (B_2 kept), the same seed, batches and sampled subnets."]
    settings = {"adapters": str(adapters), "base": base, "data": data, "steps": steps, "gammas": gamma_values,
                "tail": tail, "smooth": smooth_window, "limit_train": limit_train, "limit_dev": limit_dev,
                "train_settings": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in {**trained, **overrides}.items()},
                                   "gamma": "per run (see results.runs)"}}
    labels = list(runs)
    results = {"start": start_acc, "runs": runs, "data": {**info, "train_used": s2.train_used, "dev_used": s2.dev_used}}
    if len(labels) >= 2:
        results["comparison"] = {
            "lower_minnet_task_loss": min(labels, key=lambda lb: runs[lb]["task_min_tail_mean"]),
            "difference": runs[labels[1]]["task_min_tail_mean"] - runs[labels[0]]["task_min_tail_mean"],
            "difference_is": f"{labels[1]} minus {labels[0]} (tail means)",
            "probe_final_minnet": {lb: runs[lb]["probe"]["minnet"][-1] for lb in labels},
            "probe_steps_where_first_is_lower": sum(
                a < b for a, b in zip(runs[labels[0]]["probe"]["minnet"][1:], runs[labels[1]]["probe"]["minnet"][1:])),
            "probe_steps_compared": len(runs[labels[0]]["probe"]["minnet"]) - 1,
        }
    write_result(out_dir, stem, record("gamma", "gradient scaling ablation (Fig. 2)", settings, results, started, dev,
                                       bool(limit_train or limit_dev), notes))


# ===== stage2-ablation ========================================================================================
MID_CONFIG = '{"layers": 4, "heads": 12, "ffn": 1152}'  # L4[1,2,4,5] H12 F1152: the palette's middle, full-ft's L4 shape
# arm knob -> (TrainSettings field, how its value is read)
KNOBS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "alpha": ("alpha", float), "gamma": ("gamma", float), "beta": ("beta", float),
    "fd": ("feature_distillation", lambda v: {"on": True, "off": False}[v]),
}


def parse_arm(arm: str) -> dict[str, Any]:
    """``reference`` -> {} (the stack's own settings); ``alpha=0`` / ``fd=off`` / ``gamma=0`` -> one TrainSettings change."""
    if arm == "reference":
        return {}
    knob, _, value = arm.partition("=")
    if knob not in KNOBS or not value:
        raise typer.BadParameter(f"{arm!r}: an arm is 'reference' or one of {[k + '=...' for k in KNOBS]}", param_hint="--arms")
    field, read = KNOBS[knob]
    try:
        return {field: read(value)}
    except (KeyError, ValueError):
        raise typer.BadParameter(f"{arm!r}: bad value (fd takes on/off, the rest numbers)", param_hint="--arms") from None


def stage2_table(runs_dir: Path, reference: str = "reference") -> dict[str, Any]:
    """Every finished (arm, seed) run in ``runs_dir``: dev accuracy per subnet per seed, the mean over seeds, and
    each arm minus the reference arm of the same seed (paired: same batches, same sampled subnets)."""
    runs = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*_seed*.json"))]
    runs.sort(key=lambda rec: rec["results"]["arm"] != reference)  # the reference arm first, the rest by name
    arms: dict[str, dict[str, Any]] = {}
    for rec in runs:
        r = rec["results"]
        arm = arms.setdefault(r["arm"], {"changes": r["changes"], "by_seed": {}, "shapes": r["run"]["shapes"]})
        arm["by_seed"][str(r["seed"])] = {**r["run"]["dev_accuracy"], "task_min_tail_mean": r["run"]["task_min_tail_mean"],
                                          "probe_final_minnet": r["run"]["probe"]["minnet"][-1],
                                          "run_seconds": r["run"]["run_seconds"], "smoke": rec["smoke"]}
    ref = arms.get(reference, {}).get("by_seed", {})
    for arm in arms.values():
        seeds = arm["by_seed"]
        subnets = list(arm["shapes"])
        arm["mean"] = {k: sum(s[k] for s in seeds.values()) / len(seeds) for k in subnets}
        paired = [s for s in seeds if s in ref]
        arm["minus_reference"] = {k: {"by_seed": {s: seeds[s][k] - ref[s][k] for s in paired},
                                      "mean": sum(seeds[s][k] - ref[s][k] for s in paired) / len(paired) if paired else None}
                                  for k in subnets}
    start = runs[0]["results"]["start"] if runs else None
    return {"arms": arms, "start": start, "runs": len(runs), "smoke": any(rec["smoke"] for rec in runs),
            "steps": sorted({rec["settings"]["steps"] for rec in runs}),  # one value unless runs of other calls were mixed
            "run_environments": [json.loads(e) for e in sorted({json.dumps({k: rec["environment"].get(k) for k in (
                "platform", "cpu_count", "torch", "torch_threads", "device", "cuda_device")}, sort_keys=True) for rec in runs})]}


@app.command("stage2-ablation")
def stage2_ablation(
    adapters: Annotated[Path, typer.Option("--adapters", help="A trained stack (an MLFS run's adapters/ folder).")],
    arms: Annotated[str, typer.Option("--arms", help="Comma-separated: 'reference' (the stack's settings) and one-knob changes: alpha=X, fd=on|off, gamma=X, beta=X. Run in this order.")] = "reference,alpha=0,fd=off",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds (data order and sampled subnets); every arm runs each.")] = "0,1",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Stage-2 steps per run (60: what six runs on two shared cores fit in an hour).")] = 60,
    mid: Annotated[str, typer.Option("--mid", help="The mid-size subnet evaluated besides the minnet and maxnet (JSON or file).")] = MID_CONFIG,
    base: Annotated[str, typer.Option("--base")] = "minilm",
    data: Annotated[str, typer.Option("--data")] = "movie-reviews",
    lr: Annotated[float, typer.Option("--lr", help="0 = the stack's training lr.")] = 0.0,
    tail: Annotated[float, typer.Option("--tail", help="Fraction of final steps the loss is averaged over.")] = 0.2,
    probe_examples: Annotated[int, typer.Option("--probe-examples", min=1, help="Fixed, evenly spaced training examples the task loss is measured on.")] = 256,
    probe_every: Annotated[int, typer.Option("--probe-every", min=1, help="Measure the probe loss every N steps (and at step 0).")] = 20,
    eval_batch: Annotated[int, typer.Option("--eval-batch", min=1)] = 64,
    log_every: Annotated[int, typer.Option("--log-every", min=0)] = 25,
    table_only: Annotated[bool, typer.Option("--table-only", help="Run nothing: rebuild the table from the finished runs.")] = False,
    limit_train: LimitTrainOpt = 0,
    limit_dev: LimitDevOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
    out_dir: OutDirOpt = RESULTS,
    tag: TagOpt = "",
    quick: QuickOpt = False,
) -> None:
    """alpha, FD (and gamma) ablations at equal steps: stage 2 retrained from A_2 = 0 per arm and seed; dev accuracy
    of the minnet, a mid-size subnet and the maxnet. Each finished run is kept (runs/<arm>_seed<k>.json) and
    skipped when found, so calls can be split over processes (e.g. one per seed) and resumed; each call then
    rebuilds the table from every finished run."""
    started = time.perf_counter()
    if quick:
        steps, probe_examples, probe_every, seeds = min(steps, 3), min(probe_examples, 32), 2, seeds.split(",")[0]
        limit_train, limit_dev = limit_train or 64, limit_dev or 64
    out_dir = quick_out_dir(out_dir, quick)
    stem = "stage2-ablation" + (f"_{tag}" if tag else "")
    runs_dir = out_dir / f"{stem}-runs"
    dev = setup(device, threads)
    arm_list = [a.strip() for a in arms.split(",") if a.strip()]
    changes = {a: parse_arm(a) for a in arm_list}
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    smoke = bool(limit_train or limit_dev)
    if not table_only:
        s2 = stage2_setup(adapters, base, data, steps, 0, lr, probe_examples, eval_batch, limit_train, limit_dev)
        mid_cfg = SubnetConfig.parse(read_config_arg(mid), open_supernet(base, adapters).supernet.dims)
        start = None
        for seed in seed_list:
            for arm in arm_list:
                run_stem = f"{arm.replace('=', '-')}_seed{seed}"
                done = runs_dir / f"{run_stem}.json"
                if done.is_file() and json.loads(done.read_text())["smoke"] == smoke:
                    console.print(f"[dim]{run_stem}: finished before, kept ({done})[/]")
                    continue
                run, start = stage2_run(s2, base, adapters, {**changes[arm], "seed": seed}, {"mid": mid_cfg},
                                        f"{arm} seed {seed}", probe_every, log_every, tail, dev, start)
                settings = {"adapters": str(adapters), "arm": arm, "seed": seed, "steps": steps, "mid": mid_cfg.to_dict()}
                write_result(runs_dir, run_stem, record(
                    "stage2-ablation-run", f"stage 2 retrained with {arm}", settings,
                    {"arm": arm, "changes": changes[arm], "seed": seed, "run": run, "start": start,
                     "data": {**s2.info, "train_used": s2.train_used, "dev_used": s2.dev_used}},
                    started, dev, smoke, []))

    summary = stage2_table(runs_dir)
    if not summary["runs"]:
        raise typer.BadParameter(f"no finished runs in {runs_dir}")
    if len(summary["steps"]) != 1:
        raise typer.BadParameter(f"{runs_dir} mixes runs of {summary['steps']} steps: not an equal-steps table")
    steps = summary["steps"][0]
    if table_only:  # say what the table holds, not what this call's options were
        arm_list = list(summary["arms"])
        seed_list = sorted({int(k) for arm in summary["arms"].values() for k in arm["by_seed"]})
    table = Table(title=f"stage 2 retrained for {steps} steps from A_2 = 0 per arm ({adapters}): dev accuracy, %")
    first = next(iter(summary["arms"].values()))
    table.add_column("arm")
    for k, shape in first["shapes"].items():
        table.add_column(f"{k} {shape}\nmean (seeds) [Δ vs reference]", justify="right")
    lines = ["| arm (seeds) | " + " | ".join(f"{k} {shape.replace(' D384', '')}" for k, shape in first["shapes"].items()) + " |",
             "|---" * (1 + len(first["shapes"])) + "|"]
    for name, arm in summary["arms"].items():
        cells = []
        for k in first["shapes"]:
            per = "; ".join(f"{100 * s[k]:.2f}" for s in arm["by_seed"].values())
            delta = arm["minus_reference"][k]["mean"]
            cells.append(f"{100 * arm['mean'][k]:.2f} ({per})" + ("" if delta is None or name == "reference" else f" [{100 * delta:+.2f}]"))
        table.add_row(f"{name} (seeds {', '.join(arm['by_seed'])})", *cells)
        lines.append(f"| {name} ({', '.join(arm['by_seed'])}) | " + " | ".join(cells) + " |")
    console.print(table)
    summary["markdown"] = "\n".join(lines)  # dev accuracy, %: mean (each seed) [mean paired difference to the reference]
    if summary["start"]:
        console.print("start (A_2 = 0): " + ", ".join(f"{k} {100 * a:.2f}%" for k, a in summary["start"].items()))
    notes = ["Every run: the same stack, A_2 zeroed (B_2 kept), stage 2 retrained for the same number of steps; within a "
             "seed the arms share batches and sampled subnets; only the arm's one setting differs.",
             "alpha=0: the subnet loss is the task loss alone (no KD and, FD being part of the distillation term, no FD); "
             "fd=off: (1-alpha) task + alpha KD, without the hidden-state term.",
             "Dev accuracy is over the full dev set (1,010 sentences on movie-reviews: a binomial standard error of ~1.2 points "
             "at 80 %); differences are paired by seed."]
    settings = {"adapters": str(adapters), "base": base, "data": data, "arms": arm_list, "seeds": seed_list, "steps": steps,
                "mid": mid, "lr": lr, "tail": tail, "probe_examples": probe_examples, "probe_every": probe_every,
                "limit_train": limit_train, "limit_dev": limit_dev, "runs_dir": str(runs_dir)}
    write_result(out_dir, stem, record("stage2-ablation", "alpha / FD / gamma ablations at equal stage-2 steps (Figs. 2-3)",
                                       settings, summary, started, dev, summary["smoke"], notes))


# ===== decoder ================================================================================================
def init_random(model: nn.Module) -> None:
    """GPT-2 style: normal(0, 0.02) for linear and embedding weights, zero biases, norms at 1."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.LayerNorm | ElasticRMSNorm):
            nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


@app.command("decoder")
def decoder(
    config: Annotated[str, typer.Option("--config", help="Shape (JSON or file) of both models.")] = DEFAULT_DECODER_CONFIG,
    steps: Annotated[int, typer.Option("--steps", min=1)] = 100,
    base: Annotated[str, typer.Option("--base")] = "smollm2",
    data: Annotated[str, typer.Option("--data", help="Causal-LM dataset name or folder (train.txt, val.txt).")] = "python-code",
    lr: Annotated[float, typer.Option("--lr")] = 3e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    block: Annotated[int, typer.Option("--block", min=2, help="Tokens per training/validation block.")] = 128,
    warmup: Annotated[float, typer.Option("--warmup")] = 0.06,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.0,
    clip: Annotated[float, typer.Option("--clip")] = 1.0,
    val_blocks: Annotated[int, typer.Option("--val-blocks", min=1, help="Fixed, evenly spaced validation blocks.")] = 64,
    eval_every: Annotated[int, typer.Option("--eval-every", min=1)] = 25,
    eval_batch: Annotated[int, typer.Option("--eval-batch", min=1)] = 8,
    reorder: Annotated[Reorder, typer.Option("--reorder", help="Importance reordering of the teacher before slicing.")] = Reorder.train,
    reorder_examples: Annotated[int, typer.Option("--reorder-examples", min=1, help="Training blocks used to rank units (--reorder train).")] = REORDER_CALIBRATION_EXAMPLES,
    teacher_eval: Annotated[bool, typer.Option("--teacher-eval/--no-teacher-eval", help="Also report the full teacher's val loss on the same blocks.")] = True,
    log_every: Annotated[int, typer.Option("--log-every", min=0)] = 10,
    seed: SeedOpt = 0,
    train_chars: Annotated[int, typer.Option("--train-chars", help="Smoke runs only: tokenise only the first N characters of train.txt (0 = all).")] = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
    out_dir: OutDirOpt = RESULTS,
    tag: TagOpt = "",
    quick: QuickOpt = False,
) -> None:
    """Sliced SmolLM2 vs. the same shape from random init, both trained fully on Python code (Fig. 5)."""
    started = time.perf_counter()
    if quick:
        steps, val_blocks, eval_every, reorder_examples = min(steps, 2), min(val_blocks, 4), 1, min(reorder_examples, 2)
        train_chars = train_chars or 20_000
    out_dir = quick_out_dir(out_dir, quick)
    dev = setup(device, threads)
    base_dir = resolve_base(base)
    with timed("load data + tokenise"):
        train_text, val_text = load_dataset_dir(data, "causal-lm")
        if train_chars > 0:
            train_text = train_text[:train_chars]
        tokenizer = load_tokenizer(base_dir)
        train = tokenize_stream(tokenizer, train_text, block, "decoder")
        val = tokenize_stream(tokenizer, val_text, block, "decoder")
    n_val = min(val_blocks, len(val))
    val_idx = [i * len(val) // n_val for i in range(n_val)]  # evenly spaced over the validation files
    val_batches = [collate(val, val_idx[i : i + eval_batch]) for i in range(0, n_val, eval_batch)]

    with timed("load teacher"):
        teacher = load_base(base_dir)
    dims = teacher.dims
    if dims.family != "decoder":
        raise typer.BadParameter(f"{base} is an {dims.family}; this benchmark slices a decoder", param_hint="--base")
    cfg = SubnetConfig.parse(read_config_arg(config), dims)
    teacher_loss = None
    if teacher_eval:
        with timed("teacher val loss"):
            teacher_loss = lm_loss(teacher.to(dev), val_batches, dev)
            teacher.cpu()
        console.print(f"teacher {SubnetConfig.maximal(dims).describe()}: val loss {teacher_loss:.4f}")
    count, teacher_count = cfg.param_count(dims), SubnetConfig.maximal(dims).param_count(dims)
    with timed(f"reorder ({reorder.value}) + slice to {cfg.describe()}"):
        reorder_model(teacher, base_dir, reorder, train, reorder_examples)
        sliced = Supernet(teacher).extract(cfg)  # zero adapters: the plain slice, tied embedding/lm head kept
    del teacher
    gc.collect()

    curves: dict[str, dict[str, Any]] = {}
    for name in ("sliced", "random"):
        if name == "sliced":
            model = sliced
        else:
            torch.manual_seed(seed)
            model = build_model(dims, cfg)
            init_random(model)
        model.to(dev)
        for p in model.parameters():
            p.requires_grad_(True)
        params = list(model.parameters())
        evals = [{"step": 0, "val_loss": lm_loss(model, val_batches, dev)}]
        console.print(f"{name} {cfg.describe()}: {sum(p.numel() for p in params):,} trainable parameters; "
                      f"step 0 val loss {evals[0]['val_loss']:.4f}")

        def after_step(done: int, model=model, evals=evals, name=name) -> None:
            if done % eval_every == 0 or done == steps:
                evals.append({"step": done, "val_loss": lm_loss(model, val_batches, dev)})
                console.print(f"  {name} step {done}: val loss {evals[-1]['val_loss']:.4f}")

        torch.manual_seed(seed)
        run = full_training(model, params, train, causal_lm_loss, steps, lr=lr, warmup=warmup, weight_decay=weight_decay,
                            clip=clip, batch_size=batch_size, seed=seed, device=dev, log_every=log_every,
                            label=name, on_step_end=after_step)
        curves[name] = {"evals": evals, "final_val_loss": evals[-1]["val_loss"], "train_loss": run["train_loss"],
                        "seconds_per_step": seconds_per_step(run["step_seconds"]),
                        "trainable_params": sum(p.numel() for p in params)}
        del model, params, run
        sliced = None
        gc.collect()

    table = Table(title=f"decoder {cfg.describe()} trained {steps} steps on {data} (val loss on {n_val} blocks of {block})")
    table.add_column("step", justify="right")
    for name in curves:
        table.add_column(f"{name} val loss", justify="right")
    by_step = {name: {e["step"]: e["val_loss"] for e in c["evals"]} for name, c in curves.items()}
    for step in sorted({s for d in by_step.values() for s in d}):
        table.add_row(str(step), *[f"{by_step[n][step]:.4f}" if step in by_step[n] else "-" for n in curves])
    console.print(table)
    for name, c in curves.items():
        console.print(f"{name}: final val loss {c['final_val_loss']:.4f} (ppl {math.exp(min(c['final_val_loss'], 50)):.1f}), "
                      f"{c['seconds_per_step']} s/step")

    stem = "decoder" + (f"_{tag}" if tag else "")
    notes = [f"N = {steps} training steps of {batch_size} x {block} tokens for each model.",
             "SmolLM2 ties its embeddings: both models use the embedding as the LM head; the sliced model keeps "
             "the teacher's embedding (and so its LM head), the random one starts from normal(0, 0.02).",
             "Both models train all parameters, embeddings included, with the same batches and schedule."]
    settings = {"base": base, "data": data, "config": cfg.to_dict(), "config_label": cfg.describe(), "steps": steps,
                "lr": lr, "batch_size": batch_size, "block": block, "warmup": warmup, "weight_decay": weight_decay,
                "schedule": "linear warm-up then linear decay to 0", "optimizer": "AdamW", "clip": clip,
                "val_blocks": n_val, "eval_every": eval_every, "eval_batch": eval_batch, "reorder": reorder.value,
                "reorder_examples": reorder_examples, "seed": seed, "train_chars": train_chars, "teacher_eval": teacher_eval,
                "random_init": "normal(0, 0.02) linear/embedding weights, zero biases, norms 1; torch.manual_seed(seed)"}
    results = {"N": steps, "final_val_loss": {n: c["final_val_loss"] for n, c in curves.items()},
               "teacher_val_loss": teacher_loss,
               "sliced_better": curves["sliced"]["final_val_loss"] < curves["random"]["final_val_loss"],
               "curves": curves,
               "params": {"total": count.total, "embedding": count.embedding, "non_embedding": count.non_embedding,
                          "teacher_total": teacher_count.total, "teacher_non_embedding": teacher_count.non_embedding},
               "data": {"train_blocks": len(train), "val_blocks_total": len(val), "val_block_indices": val_idx}}
    write_result(out_dir, stem, record("decoder", "sliced vs randomly initialised decoder (Fig. 5)", settings, results,
                                       started, dev, bool(train_chars), notes))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except MLFSError as err:
        Console(stderr=True).print(f"[red]error:[/] {err}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
