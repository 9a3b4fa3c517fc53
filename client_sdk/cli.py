"""``mlfs-device``: the client SDK from a shell. Imports only the client extra (no torch, transformers, fastapi).

Errors print as one line that says what to do, with exit status 1.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from .budget import Budget
from .cache import DeviceCache
from .client import Client, _describe
from .errors import ClientError
from .monitor import SwapPolicy
from .probe import Probe

app = typer.Typer(help="MLFS Edge on a device: get the model that fits, run it, keep it fitting.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
cache_app = typer.Typer(help="The device cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
out = Console(width=None if sys.stdout.isatty() else 160)  # piped output is not cut at 80 columns
err = Console(stderr=True)

Server = Annotated[str, typer.Option("--server", envvar="MLFS_SERVER", help="delivery server URL")]
Model = Annotated[str, typer.Option("--model", help="served model name (see GET /v1/models)")]
MemoryMB = Annotated[float | None, typer.Option("--memory-mb", help="cap the model's memory (MB)")]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", envvar="MLFS_DEVICE_CACHE", help="device cache folder")]
Token = Annotated[str | None, typer.Option("--token", envvar="MLFS_DEVICE_TOKEN", help="device token for telemetry")]
Profile = Annotated[str | None, typer.Option("--profile", help="device profile name the server knows")]
Precision = Annotated[str, typer.Option("--precision", help="fp32, int8 or auto")]


class _Bars:
    """Download progress bars on stderr, started at the first byte (nothing is drawn when all is cached)."""

    def __init__(self) -> None:
        self.bars: Progress | None = None
        self.tasks: dict[str, int] = {}

    def __call__(self, name: str, done: int, total: int) -> None:
        if self.bars is None:
            self.bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                 console=err, transient=True)
            self.bars.start()
        if name not in self.tasks:
            self.tasks[name] = self.bars.add_task(f"downloading {name}", total=total)
        self.bars.update(self.tasks[name], completed=done)

    def stop(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None


@contextmanager
def _client(server: str, model: str, memory_mb: float | None, cache_dir: Path | None, token: str | None,
            profile: str | None = None, precision: str = "auto", seq_len: int = 128):
    bars = _Bars()
    client = Client(server, model, probe=Probe(profile=profile), cache_dir=cache_dir, device_token=token,
                    budget=Budget(max_memory_mb=memory_mb, seq_len=seq_len, precision=precision),  # type: ignore[arg-type]
                    progress=bars)
    try:
        client.load()
        bars.stop()
        yield client
    finally:
        bars.stop()
        client.close()


def _answered_by(client: Client) -> str:
    row = client.current
    return f"{_describe(row.config)} {row.precision} [{row.artifact_id[:12]}]" if row else "-"


@app.command()
def predict(texts: Annotated[list[str], typer.Argument(help="texts to classify")], server: Server, model: Model,
            memory_mb: MemoryMB = None, cache_dir: CacheDir = None, token: Token = None, precision: Precision = "auto"):
    """Classify texts: label, probability and which config answered."""
    with _client(server, model, memory_mb, cache_dir, token, precision=precision) as client:
        for text, p in zip(texts, client.predict(texts)):
            typer.echo(f"{p.label}\t{p.probability:.4f}\t{_describe(p.config)} [{p.artifact_id[:12]}]\t{text}")


@app.command()
def generate(prompt: Annotated[str, typer.Argument(help="prompt to continue")], server: Server, model: Model,
             max_new_tokens: Annotated[int, typer.Option(help="tokens to generate")] = 32,
             temperature: Annotated[float, typer.Option(help="0 is greedy")] = 0.0,
             top_k: Annotated[int | None, typer.Option(help="sample from the top k tokens")] = None,
             stop: Annotated[list[str] | None, typer.Option(help="stop at this text (repeatable)")] = None,
             memory_mb: MemoryMB = None, cache_dir: CacheDir = None, token: Token = None, precision: Precision = "auto"):
    """Continue a prompt with a decoder model."""
    with _client(server, model, memory_mb, cache_dir, token, precision=precision) as client:
        result = client.generate(prompt, max_new_tokens, temperature, top_k, stop or ())
        typer.echo(result.text)
        err.print(f"{len(result.token_ids)} tokens, {result.finish_reason}, {_answered_by(client)}", markup=False)


@app.command()
def bench(server: Server, model: Model, profile: Annotated[str, typer.Option("--profile", help="device profile to report for")],
          runs: Annotated[int, typer.Option(help="timed runs")] = 20,
          seq_len: Annotated[int, typer.Option(help="tokens per input")] = 128,
          report: Annotated[bool, typer.Option("--report/--no-report", help="send the result to the server")] = True,
          memory_mb: MemoryMB = None, cache_dir: CacheDir = None, token: Token = None, precision: Precision = "auto"):
    """Measure the current model on this device (p50/p95) and report it to the server's latency table."""
    with _client(server, model, memory_mb, cache_dir, token, profile, precision, seq_len) as client:
        r = client.benchmark(runs=runs, seq_len=seq_len, profile=profile, report=report)
        out.print(f"{_answered_by(client)}: p50 {r.p50_ms:.2f} ms, p95 {r.p95_ms:.2f} ms over {r.runs} runs at "
                  f"seq_len {r.seq_len}, {r.threads} thread(s)" + (f"; reported for {profile}" if r.reported else ""),
                  markup=False)


@app.command()
def watch(server: Server, model: Model, interval: Annotated[float, typer.Option(help="seconds between probes")] = 5.0,
          cooldown: Annotated[float, typer.Option(help="seconds after a swap before moving up")] = 30.0,
          duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
          profile: Profile = None, memory_mb: MemoryMB = None, cache_dir: CacheDir = None, token: Token = None,
          precision: Precision = "auto"):
    """Run the hot-swap monitor and print every decision and swap (Ctrl-C stops)."""
    with _client(server, model, memory_mb, cache_dir, token, profile, precision) as client:
        out.print(f"serving {_answered_by(client)}; watching every {interval:g} s", markup=False)
        client.events.subscribe(lambda e: out.print(time.strftime("%H:%M:%S ") + e.describe(), markup=False))
        client.start_monitor(SwapPolicy(interval_s=interval, cooldown_s=cooldown))
        try:
            deadline = None if duration is None else time.monotonic() + duration
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass


@cache_app.command("list")
def cache_list(cache_dir: CacheDir = None):
    """Artifacts in the device cache."""
    cache = DeviceCache(cache_dir)
    table = Table("artifact", "model", "config", "precision", "memory MB", "size MB", "last used")
    for r in sorted(cache.entries(), key=lambda r: -r.last_used):
        table.add_row(r.artifact_id[:12], r.model, _describe(r.config), r.precision, f"{r.memory_mb:.1f}",
                      f"{r.size_bytes / 2**20:.1f}", time.strftime("%Y-%m-%d %H:%M", time.localtime(r.last_used)))
    out.print(table)
    out.print(f"{cache.total_bytes() / 2**20:.1f} MB in {cache.root}", markup=False)


@cache_app.command("clear")
def cache_clear(cache_dir: CacheDir = None):
    """Remove every cached artifact and unfinished download."""
    removed = DeviceCache(cache_dir).clear()
    out.print(f"removed {len(removed)} artifact(s)")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)  # one line, never wrapped
        sys.exit(1)
if __name__ == "__main__":
    main()
