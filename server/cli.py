"""The ``mlfs`` program: the slicer's commands (``slicer.cli``) plus the delivery server's ``serve``, ``warm`` and
``bench latency``, composed here, above both libraries.

Heavy imports happen inside the commands, so ``mlfs --help`` stays fast and the slicer's commands work in an
install without the server extra, where the server's commands say which extra to install. Server-side errors are
re-raised as ``ConfigError`` so the CLI prints one ``error:`` line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slicer import ConfigError
from slicer.cli.common import make_console
from slicer.cli.main import root_app, run

SERVER_EXTRA = "mlfs-edge[server]"

out = make_console()
err = make_console(stderr=True)
bench_app = typer.Typer(help="Measure latency tables that model selection uses.", no_args_is_help=True)


def _need_server_extra(command: str) -> None:
    """Fail with one line naming the extra to install when the server's dependencies are missing."""
    try:
        import fastapi  # noqa: F401
        import torch  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as e:
        raise ConfigError(f"`mlfs {command}` needs the server extra, which is not installed here (no module "
                          f"{e.name!r}): pip install '{SERVER_EXTRA}'") from None

StoreOpt = Annotated[Path | None, typer.Option("--store", help="Store folder (default $MLFS_STORE or <data home>/store).")]
SettingsOpt = Annotated[Path | None, typer.Option("--config", help="YAML settings file (flags > environment > file).")]
ModelOpt = Annotated[str, typer.Option("--model", help="A served model (see GET /v1/models or the store's models.json).")]
SubnetOpt = Annotated[list[str] | None, typer.Option("--subnet", help='Subnet config as JSON, e.g. \'{"layers": 3, "heads": 6, "ffn": 768}\'; repeatable.')]
SeqOpt = Annotated[int, typer.Option("--seq-len", min=1, help="Sequence length the budget is for.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Batch size the budget is for.")]


def serve_cmd(
    store: StoreOpt = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8000).")] = None,
    config: SettingsOpt = None,
) -> None:
    """Run the delivery server. The port is bound at once (/healthz answers, /readyz says what is loading); the
    default store (MiniLM + the shipped sentiment palette) is prepared on first start. Without MLFS_OPERATOR_TOKEN,
    an operator token is generated into the store (0600) on first start and reused after."""
    import logging

    _need_server_extra("serve")
    import uvicorn
    from pydantic import SecretStr

    from .api import create_app
    from .api.serving import uvicorn_config
    from .settings import Settings
    from .store import ensure_operator_token

    settings = Settings.load(config, store=store, host=host, port=port)
    if settings.operator_token is None:
        token, path, created = ensure_operator_token(settings.store)
        settings = settings.model_copy(update={"operator_token": SecretStr(token)})
        err.print(f"operator token: {'generated into' if created else 'read from'} {path} (owner-only); operator "
                  f"routes need -H \"Authorization: Bearer $(cat {path})\" (set MLFS_OPERATOR_TOKEN to choose one)")
    else:
        err.print("operator token: from MLFS_OPERATOR_TOKEN / settings")
    # The server's own progress (store preparation, each model loading, ready) beside uvicorn's lines.
    for name in ("server", "slicer"):
        logging.getLogger(name).setLevel(logging.INFO)
    err.print(f"binding http://{settings.host}:{settings.port} now; /readyz answers 503 with progress until the "
              "models are loaded")
    uvicorn.Server(uvicorn_config(create_app(settings, prepare_store=True), settings)).run()


@contextmanager
def _service(store: Path | None, config: Path | None, model: str) -> Iterator[tuple]:
    """The store's service with one model loaded; server errors become ConfigError."""
    from .errors import ServerError
    from .metrics import Metrics
    from .service import DeliveryService
    from .settings import Settings
    from .store import prepare_default_store

    settings = Settings.load(config, store=store)
    prepare_default_store(settings.store)
    try:
        svc = DeliveryService(settings, Metrics())
        with err.status(f"loading {model}"):
            svc.load([model])
        try:
            yield svc, svc.model(model)
        finally:
            svc.close()
    except ServerError as e:
        raise ConfigError(str(e)) from None


def _subnets(subnet: list[str] | None) -> list[dict]:
    try:
        return [json.loads(s) for s in subnet or []]
    except json.JSONDecodeError as e:
        raise ConfigError(f"--subnet is not JSON: {e}") from None


def warm_cmd(
    model: ModelOpt,
    subnet: SubnetOpt = None,
    profile: Annotated[list[str] | None, typer.Option("--profile", help="Warm the best config for this device profile (its memory); repeatable.")] = None,
    max_memory_mb: Annotated[float | None, typer.Option("--max-memory-mb", min=1, help="Memory budget (with profiles: the lower of the two).")] = None,
    max_latency_ms: Annotated[float | None, typer.Option("--max-latency-ms", min=0.001, help="Latency budget (checked against the conservative estimate).")] = None,
    seq_len: SeqOpt = 128,
    batch_size: BatchOpt = 1,
    precision: Annotated[str, typer.Option("--precision", help="fp32, int8 or auto (budgets); fp32 or int8 (--subnet).")] = "auto",
    store: StoreOpt = None,
    config: SettingsOpt = None,
) -> None:
    """Pre-build and pin artifacts in the store's cache: explicit subnets, or the best config per profile/budget."""
    _need_server_extra("warm")
    from .selection import Budget

    if precision not in ("fp32", "int8", "auto"):
        raise ConfigError(f"--precision must be fp32, int8 or auto, got {precision!r}")
    configs = _subnets(subnet)
    with _service(store, config, model) as (svc, loaded):
        budgets = []
        for name in profile or []:
            if name not in svc.profiles:
                raise ConfigError(f"unknown device profile {name!r}; known: {sorted(svc.profiles)}")
            memory = min(x for x in (svc.profiles[name].memory_mb, max_memory_mb) if x is not None)
            budgets.append((Budget(memory, max_latency_ms, seq_len, batch_size, precision), name, None))
        if not profile and (max_memory_mb is not None or max_latency_ms is not None):
            budgets.append((Budget(max_memory_mb, max_latency_ms, seq_len, batch_size, precision), None, None))
        if not configs and not budgets:
            raise ConfigError("give --subnet, --profile or a budget (--max-memory-mb / --max-latency-ms) to warm")
        targets = svc.warm_targets(loaded, configs, budgets, "fp32" if precision == "auto" else precision)
        table = Table("artifact", "config", "precision", "size", "build", title=f"warmed and pinned ({model})")
        for i, (cfg, prec) in enumerate(targets, 1):
            with err.status(f"[{i}/{len(targets)}] building {cfg.describe()} {prec}"):
                cached = svc.cache.get(svc.artifact_id(loaded, cfg, prec))
                entry = cached or svc.build(loaded, cfg, prec)
            svc.cache.pin(entry.key)
            table.add_row(entry.key[:12], cfg.describe(), prec, f"{entry.record.size / 2**20:.1f} MB",
                          "cached" if cached else f"{entry.record.build_seconds:.1f} s")
        out.print(table)


@bench_app.command("latency")
def bench_latency_cmd(
    profile: Annotated[str, typer.Option("--profile", help="Device profile to emulate (its onnxruntime thread count).")],
    model: ModelOpt = "minilm-sentiment",
    subnet: SubnetOpt = None,
    max_configs: Annotated[int, typer.Option("--max-configs", min=0, help="Measure this many configs spread by size (0: all).")] = 0,
    seq_len: SeqOpt = 128,
    batch_size: BatchOpt = 1,
    precision: Annotated[str, typer.Option("--precision", help="fp32 or int8.")] = "fp32",
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed runs per config, spread over the rounds (after warm-up).")] = 30,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Rounds; each times every config in turn (interleaved).")] = 3,
    spinning: Annotated[bool | None, typer.Option("--spinning/--no-spinning", help="onnxruntime thread spinning (default: client_sdk.latency.ALLOW_SPINNING, off).")] = None,
    store: StoreOpt = None,
    config: SettingsOpt = None,
) -> None:
    """Measure the palette's artifacts on this machine under a profile and store the table selection uses."""
    _need_server_extra("bench latency")
    from client_sdk.latency import ALLOW_SPINNING
    from slicer import SubnetConfig

    from .latency_table import measure_profile, spread_by_size

    if precision not in ("fp32", "int8"):
        raise ConfigError(f"--precision must be fp32 or int8, got {precision!r}")
    spin = ALLOW_SPINNING if spinning is None else spinning
    with _service(store, config, model) as (svc, loaded):
        if profile not in svc.profiles:
            raise ConfigError(f"unknown device profile {profile!r}; known: {sorted(svc.profiles)}")
        prof = svc.profiles[profile]
        cfgs = [SubnetConfig.parse(c, loaded.dims) for c in _subnets(subnet)] or spread_by_size(loaded, max_configs)
        with err.status("building") as status:
            rows = measure_profile(svc, loaded, prof, cfgs, seq_len, batch_size, precision, runs, rounds, spin,
                                   on_build=lambda c: status.update(f"building or finding {c.describe()}"))
        load = rows[0].result.load if rows else None
        table = Table("config", "params", "stored ms (uncontended)", "median ms (wall)", "p90 ms", "wait ms", "artifact",
                      title=f"{model} on profile {profile} ({prof.threads} threads, spinning {'on' if spin else 'off'}), "
                            f"seq {seq_len} x batch {batch_size}, {precision}, {rounds} rounds"
                            + (f", load {load:.2f}" if load is not None else ""))
        for row in rows:
            table.add_row(row.config.describe(), f"{row.params / 1e6:.2f}M", f"{row.result.table_ms:.2f}",
                          f"{row.result.median_ms:.2f}", f"{row.result.p90_ms:.2f}", f"{row.result.wait_ms:.2f}",
                          row.artifact_id[:12])
        out.print(table)
        where = Path(svc.settings.store) / "meta.sqlite" if svc.meta.dialect == "sqlite" else "the PostgreSQL metadata"
        out.print(f"stored {len(cfgs)} measurements for profile {profile} in {where}")


@bench_app.command("calibrate")
def bench_calibrate_cmd(
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Rounds, alternating thread counts.")] = 4,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed runs per stack and thread count, over the rounds.")] = 12,
    store: StoreOpt = None,
    config: SettingsOpt = None,
) -> None:
    """Re-run the built-in latency calibration (synthetic encoder stacks per profile thread count, a few seconds):
    the estimates a store gives before any bench run, and the thread-scaling model between profiles."""
    _need_server_extra("bench calibrate")
    from .metrics import Metrics
    from .service import DeliveryService
    from .settings import Settings

    settings = Settings.load(config, store=store)
    svc = DeliveryService(settings, Metrics())
    try:
        with err.status("calibrating"):
            done = svc.calibrate(force=True, rounds=rounds, runs=runs)
    finally:
        svc.close()
    table = Table("threads", "ms per call", "ms per GFLOP", "ms per layer", "load", title="latency calibration")
    for c in done:
        load = c.info.get("load")
        table.add_row(str(c.threads), *(f"{x:.3f}" for x in c.coeffs), "" if load is None else f"{load:.2f}")
    out.print(table)


failed_app = typer.Typer(help="Builds that failed (remembered in the store's metadata, never retried until cleared).",
                         no_args_is_help=True)


@contextmanager
def _metadata(store: Path | None, config: Path | None):
    from .coordination import open_shared_state
    from .errors import ServerError
    from .settings import Settings

    settings = Settings.load(config, store=store)
    try:
        meta, claims, _ = open_shared_state(Path(settings.store), settings)
    except ServerError as e:
        raise ConfigError(str(e)) from None
    try:
        yield meta
    finally:
        if claims is not None:
            claims.close()
        meta.close()


@failed_app.command("list")
def failed_list_cmd(model: Annotated[str | None, typer.Option("--model", help="Only this model.")] = None,
                    store: StoreOpt = None, config: SettingsOpt = None) -> None:
    """Every remembered failed build: model, config, precision, kind and the reason with its figures."""
    _need_server_extra("failed-builds list")
    with _metadata(store, config) as meta:
        rows = [f for f in meta.failed_builds() if model is None or f.model == model]
    table = Table("model", "config key", "precision", "kind", "reason", "artifact", title="failed builds")
    for f in rows:
        table.add_row(f.model, f.config_key, f.precision, f.kind, f.reason, f.artifact_key[:12])
    out.print(table)


@failed_app.command("clear")
def failed_clear_cmd(model: ModelOpt,
                     config_key: Annotated[str | None, typer.Option("--config-key", help="Only this config.")] = None,
                     precision: Annotated[str | None, typer.Option("--precision", help="Only fp32 or int8.")] = None,
                     store: StoreOpt = None, config: SettingsOpt = None) -> None:
    """Forget a model's failed builds so selection may try them again (a running server sees it within seconds)."""
    _need_server_extra("failed-builds clear")
    if precision not in (None, "fp32", "int8"):
        raise ConfigError(f"--precision must be fp32 or int8, got {precision!r}")
    with _metadata(store, config) as meta:
        cleared = meta.clear_failed_builds(model, config_key, precision)
    out.print(f"cleared {cleared} failed build(s) of {model}")


app = root_app()
app.command("serve")(serve_cmd)
app.command("warm")(warm_cmd)
app.add_typer(bench_app, name="bench")
app.add_typer(failed_app, name="failed-builds")


def main() -> None:
    """The ``mlfs`` console script."""
    run(app)


if __name__ == "__main__":
    main()
