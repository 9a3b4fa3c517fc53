"""``mlfs serve`` replicas on one store and one PostgreSQL database, for the replica tests and benchmarks: a
replica process that can be stopped (SIGTERM or SIGKILL) and started again on the same port, and ``Balancer``,
a client that spreads requests over the replicas the way a load balancer does and follows the server's retry
protocol (202/503 + Retry-After) the way a device does."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
SERVE = Path(__file__).resolve().parents[1] / "server" / "replica_serve.py"  # mlfs serve, builds slowed on demand


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """One ``mlfs serve`` process (``replica_serve.py``: TEST_BUILD_DELAY_S / TEST_BUILD_HOLD_S slow its builds)
    with ``env`` on top of this process's environment; its output goes to ``<logs>/replica<index>.log``."""

    def __init__(self, store: Path, database_url: str, logs: Path, index: int, env: dict[str, str]) -> None:
        self.store, self.index, self.port = store, index, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "MLFS_DATABASE_URL": database_url, **env}
        self.log = logs / f"replica{index}.log"
        self.starts = 0
        self.start()

    def start(self) -> None:
        """Start the process (again, on the same port: where the load balancer sends its share)."""
        self.starts += 1
        with self.log.open("a") as log:
            log.write(f"----- start {self.starts}\n")
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, str(SERVE), "serve", "--store", str(self.store), "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def wait_ready(self, deadline: float) -> None:
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"replica not ready:\n{self.log.read_text()[-3000:]}")

    def builds(self) -> int:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        line = next(x for x in text.splitlines() if x.startswith("mlfs_build_seconds_count "))
        return int(float(line.split()[1]))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the process to end (SIGKILL after ``timeout``); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def stop_all(replicas: list[Replica]) -> None:
    """SIGTERM to every replica at once (each drains on its own), then wait for each."""
    for r in replicas:
        if r.proc.poll() is None:
            r.proc.terminate()
    for r in replicas:
        r.stop()


def start_replicas(store: Path, database_url: str, logs: Path, n: int, env: dict[str, str],
                   timeout_s: float = 600) -> list[Replica]:
    """``n`` replicas, all ready (three processes importing torch on a busy 2-core machine take a while)."""
    replicas = [Replica(store, database_url, logs, i, env) for i in range(n)]
    deadline = time.time() + timeout_s
    try:
        for r in replicas:
            r.wait_ready(deadline)
    except BaseException:
        stop_all(replicas)
        raise
    return replicas


@dataclass
class Stats:
    """What the clients of a ``Balancer`` saw: every answered request's latency, each operation's time (resolve to
    verified download, failovers and Retry-After sleeps included) and its Retry-After sleeps, failovers by cause,
    and failures (should be none)."""

    latencies: dict[str, list[float]] = field(default_factory=dict)  # route kind -> seconds, per answered request
    waits: list[float] = field(default_factory=list)  # seconds, per completed operation: its Retry-After sleeps
    durations: list[float] = field(default_factory=list)  # seconds, per completed operation: start to verified
    statuses: dict[int, int] = field(default_factory=dict)
    failovers: list[tuple[int, str]] = field(default_factory=list)  # (replica index, error type)
    failures: list[str] = field(default_factory=list)
    downloads: int = 0
    artifacts: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> dict:
        def ms(values: list[float]) -> dict:
            v = sorted(values)
            at = lambda q: round(v[min(len(v) - 1, int(q * len(v)))] * 1000, 1)  # noqa: E731
            return {"n": len(v), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(v[-1] * 1000, 1)} if v else {"n": 0}

        return {"requests": sum(len(v) for v in self.latencies.values()), "operations": len(self.durations),
                "downloads": self.downloads, "failures": len(self.failures),
                "statuses": dict(sorted(self.statuses.items())), "failovers": len(self.failovers),
                "failover_causes": sorted({c for _, c in self.failovers}),
                "latency": {kind: ms(v) for kind, v in sorted(self.latencies.items())},
                "operation": ms(self.durations), "longest_retry_after_wait_s": max(self.waits, default=0.0),
                "artifacts": len(self.artifacts)}


class Balancer:
    """A device behind a load balancer over ``urls``. The balancer part sends each request to the next replica in
    turn and passes it to the following one when a replica refuses the connection or cuts it before answering,
    or answers 503 (nginx's ``proxy_next_upstream error timeout http_503 non_idempotent``, README "Deployment");
    when every replica answered 503 the device gets the last 503. The device part follows the documented protocol:
    on 202 or 503 it waits ``Retry-After`` seconds and asks again; anything else unexpected is a failure."""

    def __init__(self, urls: list[str], stats: Stats, timeout_s: float = 60, max_wait_s: float = 120) -> None:
        self.urls, self.stats, self.max_wait_s = urls, stats, max_wait_s
        self.http = httpx.Client(timeout=timeout_s)
        self._next = itertools.count(hash(threading.get_ident()) % len(urls))

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One request through the balancer: the first replica that answers other than 503 (or the last 503).
        Its latency counts under the route (resolve, manifest, model), per replica tried."""
        kind = "resolve" if method == "POST" else "manifest" if path.endswith("/manifest") else "model"
        start = next(self._next)
        answer = None
        for i in range(len(self.urls)):
            index = (start + i) % len(self.urls)
            t0 = time.perf_counter()
            try:
                r = self.http.request(method, self.urls[index] + path, **kwargs)
            except httpx.TransportError as err:  # refused, reset, or cut before an answer: the next replica
                with self.stats.lock:
                    self.stats.failovers.append((index, type(err).__name__))
                continue
            with self.stats.lock:
                self.stats.latencies.setdefault(kind, []).append(time.perf_counter() - t0)
                self.stats.statuses[r.status_code] = self.stats.statuses.get(r.status_code, 0) + 1
            if r.status_code in (202, 503) and "retry-after" not in r.headers:
                raise AssertionError(f"{r.status_code} without Retry-After from {self.urls[index]}{path}: {r.text[:200]}")
            if r.status_code != 503:
                return r
            answer = r
        if answer is None:
            raise httpx.ConnectError("no replica answered")
        return answer

    def _until_ready(self, method: str, path: str, **kwargs) -> tuple[httpx.Response, float]:
        """The first answer other than 202/503, waiting Retry-After between tries; (answer, time waited)."""
        waited = 0.0
        while True:
            try:
                r = self._send(method, path, **kwargs)
            except httpx.ConnectError:  # every replica down at once: back off briefly, as a device would
                delay = 1.0
            else:
                if r.status_code not in (202, 503):
                    return r, waited
                delay = float(r.headers["retry-after"])  # the protocol: both always carry one
            if waited + delay > self.max_wait_s:
                raise TimeoutError(f"{method} {path}: still waiting after {waited:.0f} s")
            time.sleep(delay)
            waited += delay

    def fetch(self, body: dict, model: bool = True) -> None:
        """Resolve ``body`` and download its manifest and (``model``) its model, checking the model against the
        manifest's hash; a failure is recorded, not raised."""
        try:
            t0 = time.perf_counter()
            r, waited = self._until_ready("POST", "/v1/resolve", json=body)
            if r.status_code != 200:
                raise AssertionError(f"resolve answered {r.status_code}: {r.text[:300]}")
            answer = r.json()
            manifest, w2 = self._until_ready("GET", answer["manifest_url"])
            if manifest.status_code != 200:
                raise AssertionError(f"manifest answered {manifest.status_code}: {manifest.text[:300]}")
            if hashlib.sha256(manifest.content).hexdigest() != manifest.headers["etag"].strip('"'):
                raise AssertionError("the manifest does not match its ETag")
            w3 = 0.0
            if model:
                onnx, w3 = self._until_ready("GET", answer["url"])
                if onnx.status_code != 200:
                    raise AssertionError(f"model answered {onnx.status_code}: {onnx.text[:300]}")
                files = json.loads(manifest.content)["files"]
                digest = hashlib.sha256(onnx.content).hexdigest()
                if digest != files["model.onnx"]["sha256"] or digest != answer["sha256"] or \
                        len(onnx.content) != files["model.onnx"]["size"]:
                    raise AssertionError(f"model.onnx of {answer['artifact_id'][:12]} differs from its manifest")
            with self.stats.lock:
                self.stats.waits.append(waited + w2 + w3)
                self.stats.durations.append(time.perf_counter() - t0)
                self.stats.downloads += model
                self.stats.artifacts.add(answer["artifact_id"])
        except Exception as err:  # every failure is counted and reported
            with self.stats.lock:
                self.stats.failures.append(f"{type(err).__name__}: {err} (after {time.perf_counter() - t0:.1f} s)")
