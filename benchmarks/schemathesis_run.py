"""The API against its own schema, at length: schemathesis over all operations of a real `mlfs serve` on loopback
with a tiny store (the default test run does the same, bounded to ~1 minute).

Checks: not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance.
Records schemathesis' test-case counts and failures, and the server's own count of requests per status (its
Prometheus counter), in ``benchmarks/results/schemathesis.json``.

    .venv/bin/python benchmarks/schemathesis_run.py --max-examples 200 --max-time 600
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from bench_record import base_record, machine, quick_out_dir, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/helpers
from helpers.store import SCHEMATHESIS_CHECKS, free_port, make_store, run_schemathesis, serve_process

RESULTS = Path(__file__).resolve().parent / "results"
REQUESTS = re.compile(r'^mlfs_requests_total\{route="([^"]*)",status="(\d+)"\} ([0-9.e+]+)$', re.M)


def main(
    max_examples: Annotated[int, typer.Option(help="Test cases per operation and phase.")] = 200,
    max_time: Annotated[int, typer.Option(help="Time budget of the schemathesis run, seconds.")] = 600,
    seed: Annotated[int, typer.Option(help="Hypothesis seed (reproducible runs).")] = 1,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON goes.")] = RESULTS,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke run: 3 cases per operation, 30 s at most; into results/quick/ (marked smoke).")] = False,
) -> None:
    started = time.perf_counter()
    if quick:
        max_examples, max_time = min(max_examples, 3), min(max_time, 30)
    out_dir = quick_out_dir(out_dir, quick)
    with tempfile.TemporaryDirectory(prefix="mlfs-schemathesis-") as tmp:
        store = make_store(Path(tmp) / "store")
        port = free_port()
        proc = serve_process(store, port, Path(tmp) / "serve.log")
        try:
            result = run_schemathesis(f"http://127.0.0.1:{port}", max_examples, max_time, seed)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        server_log = (Path(tmp) / "serve.log").read_text()
    statuses: dict[str, int] = {}
    routes: dict[str, dict[str, int]] = {}
    for route, status, count in REQUESTS.findall(metrics):
        statuses[status] = statuses.get(status, 0) + int(float(count))
        routes.setdefault(route, {})[status] = int(float(count))
    out = result.stdout
    cases = re.search(r"(\d+) generated, (.*)", out)
    summary = out[out.rfind("SUMMARY"):] if "SUMMARY" in out else out[-3000:]
    results = {
        "exit_code": result.returncode,
        "test_cases": cases.group(0).strip() if cases else None,
        "failures": re.findall(r"❌ (.+)", summary),
        "errors": re.findall(r"🚫 (.+)", summary),
        "warnings": re.findall(r"⚠️ (.+)", summary),
        "server_requests": sum(statuses.values()),
        "server_statuses": dict(sorted(statuses.items())),
        "server_requests_by_route": routes,
        "server_tracebacks": server_log.count("Traceback"),
        "summary": summary.strip()[-2500:],
    }
    settings = {"max_examples": max_examples, "max_time_s": max_time, "seed": seed, "checks": SCHEMATHESIS_CHECKS,
                "workers": 1, "store": "tiny random BERT (tests/helpers/store.py)", "build_wait_s": 0.5}
    record = base_record("schemathesis", "schemathesis over every operation of mlfs serve", settings, results, started,
                         machine(), smoke=quick, notes=["server statuses from mlfs_requests_total, scraped at the end"])
    write_result(out_dir, "schemathesis", record)
    typer.echo(f"{results['test_cases']}; server answered {results['server_requests']} requests: "
               f"{results['server_statuses']}; failures {results['failures']}; errors {results['errors']}")
    raise typer.Exit(0 if result.returncode == 0 else 1)


if __name__ == "__main__":
    typer.run(main)
