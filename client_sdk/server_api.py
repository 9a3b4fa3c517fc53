"""The delivery server's /v1 API as the device uses it: resolve (waiting out 202s), files with resume and
verification, latency telemetry. Network failures are retried with bounded exponential backoff.

The httpx transport is injectable (``transport=``): tests cut connections or flip bytes with it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from .errors import IntegrityError, NoFitError, ServerError, UnreachableError

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (file name, bytes so far, total bytes)


@dataclass(frozen=True)
class Resolution:
    """The server's answer to a budget: which artifact, its config and the server's estimates."""

    artifact_id: str
    config: dict[str, Any]
    precision: str
    sha256: str  # of model.onnx
    size_bytes: int
    memory_mb: float
    latency_ms: float | None
    quality: float | None


@dataclass(frozen=True)
class Backoff:
    """Bounded exponential backoff: ``first_s`` doubling up to ``max_s`` per wait, ``attempts`` tries in all."""

    attempts: int = 4
    first_s: float = 0.25
    max_s: float = 8.0

    def delay(self, attempt: int, hint: float | None = None) -> float:
        """The wait before retry ``attempt`` (0-based); a server's Retry-After ``hint`` is honoured up to ``max_s``."""
        return min(self.max_s, hint if hint is not None else self.first_s * 2**attempt)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI's validation errors
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail if isinstance(d, dict))
    return str(detail)[:500]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@functools.cache
def _tls_context(scheme: str) -> ssl.SSLContext:
    """One TLS context per process. httpx loads the CA bundle for every new client (0.1 s, a fresh device's
    first predict pays it); a plain-HTTP server needs none, so it gets a context that trusts no certificate at
    all: whatever might lead such a client to TLS fails closed."""
    return httpx.create_ssl_context() if scheme == "https" else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class ServerAPI:
    def __init__(self, base_url: str, transport: httpx.BaseTransport | None = None, device_token: str | None = None,
                 timeout_s: float = 30.0, backoff: Backoff = Backoff(), sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {device_token}"} if device_token else {}
        verify = _tls_context(urlsplit(self.base_url).scheme)
        self.http = httpx.Client(base_url=self.base_url, transport=transport, timeout=timeout_s, headers=headers, verify=verify)
        self.backoff, self.sleep = backoff, sleep

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, retried on network failures; an answer (any status) is returned."""
        for attempt in range(self.backoff.attempts):
            try:
                return self.http.request(method, path, **kwargs)
            except httpx.TransportError as err:
                if attempt == self.backoff.attempts - 1:
                    raise UnreachableError(f"cannot reach the server at {self.base_url} ({type(err).__name__}: {err}); "
                                           "check the URL and that `mlfs serve` is running") from None
                self.sleep(self.backoff.delay(attempt))
        raise AssertionError("unreachable")

    def _raise_for(self, response: httpx.Response, what: str) -> None:
        if response.status_code < 400:
            return
        detail = _detail(response)
        cls = NoFitError if response.status_code == 422 and what == "resolve" else ServerError
        raise cls(f"{what}: the server answered {response.status_code}: {detail}", response.status_code, detail)

    # ----- resolve ------------------------------------------------------------------------------------------
    def resolve(self, model: str, device: dict[str, Any], budget: dict[str, Any], wait_s: float = 300.0) -> Resolution:
        """The artifact for a budget. A 202 (building) or 503 (queue full) is retried after its Retry-After,
        capped by the backoff's ``max_s``, until ``wait_s`` has passed."""
        body = {"model": model, "device": device, "budget": budget}
        deadline = time.monotonic() + wait_s
        attempt = 0
        while True:
            r = self._request("POST", "/v1/resolve", json=body)
            if r.status_code not in (202, 503):
                break
            delay = self.backoff.delay(attempt, _retry_after(r))
            if time.monotonic() + delay > deadline:
                raise ServerError(f"resolve: the artifact was still building after {wait_s:.0f} s; try again later",
                                  r.status_code, _detail(r))
            log.info("resolve: %s, retrying in %.1f s", "building" if r.status_code == 202 else "queue full", delay)
            self.sleep(delay)
            attempt += 1
        self._raise_for(r, "resolve")
        d = r.json()
        est = d.get("estimates") or {}
        return Resolution(d["artifact_id"], d["config"], d["precision"], d["sha256"], d["size_bytes"],
                          float(est.get("memory_mb") or 0.0), est.get("latency_ms"), est.get("quality"))

    # ----- files --------------------------------------------------------------------------------------------
    def manifest(self, artifact_id: str) -> bytes:
        """The manifest's bytes, checked against the sha256 the server names in its ETag."""
        r = self._request("GET", f"/v1/artifacts/{artifact_id}/manifest")
        self._raise_for(r, "manifest")
        etag = r.headers.get("etag", "").strip('"')
        if etag and hashlib.sha256(r.content).hexdigest() != etag:
            raise IntegrityError(f"manifest of {artifact_id[:12]} does not match its ETag; the download was corrupted")
        return r.content

    def fetch(self, artifact_id: str, name: str, dest: Path, size: int, sha256: str,
              progress: Progress | None = None) -> None:
        """Download one artifact file to ``dest``, resuming a ``.part`` left by an interrupted download
        (``Range`` + ``If-Range`` on the ETag); ``dest`` only appears once its size and sha256 match."""
        path = f"/v1/artifacts/{artifact_id}/files/{name}"
        part, etag_file = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".etag")
        failures = integrity_failures = 0
        while True:
            offset = part.stat().st_size if part.exists() and etag_file.exists() else 0
            if offset > size:
                offset = 0
            headers = {"Range": f"bytes={offset}-", "If-Range": etag_file.read_text()} if offset else {}
            try:
                with self.http.stream("GET", path, headers=headers) as r:
                    if r.status_code == 206 and r.headers.get("content-range", "").startswith(f"bytes {offset}-"):
                        mode = "ab"
                    elif r.status_code == 200:  # a fresh copy (the ETag changed, or no range was asked)
                        mode, offset = "wb", 0
                    else:
                        r.read()
                        self._raise_for(r, f"download {name}")
                        raise ServerError(f"download {name}: unexpected {r.status_code} to a range request", r.status_code)
                    etag_file.write_text(r.headers.get("etag", f'"{sha256}"'))
                    digest = hashlib.sha256()
                    if mode == "ab":  # the kept prefix counts too
                        with part.open("rb") as kept:
                            for block in iter(lambda: kept.read(1 << 20), b""):
                                digest.update(block)
                    done = offset
                    with part.open(mode) as f:
                        for chunk in r.iter_bytes():  # as received: a buffered chunk would be lost on a cut
                            f.write(chunk)
                            digest.update(chunk)  # hashed on the way in: no second pass over the file
                            done += len(chunk)
                            if progress is not None:
                                progress(name, done, size)
            except httpx.TransportError as err:
                failures += 1
                if failures >= self.backoff.attempts:
                    raise UnreachableError(f"download {name} from {self.base_url} failed {failures} times "
                                           f"({type(err).__name__}); it resumes from where it stopped next time") from None
                log.info("download %s cut at %d bytes (%s); resuming", name, part.stat().st_size if part.exists() else 0, err)
                self.sleep(self.backoff.delay(failures - 1))
                continue
            got = part.stat().st_size
            if got < size:  # the stream ended early without an error: resume from here
                failures += 1
                if failures >= self.backoff.attempts:
                    raise UnreachableError(f"download {name}: the server keeps ending the file at {got} of {size} bytes")
                continue
            if got != size or digest.hexdigest() != sha256:
                integrity_failures += 1
                part.unlink()
                etag_file.unlink(missing_ok=True)
                if integrity_failures >= 2:
                    raise IntegrityError(f"{name} of {artifact_id[:12]} failed verification twice (size or sha256 "
                                         "differs from the manifest); it was not installed")
                log.warning("%s of %s failed verification; fetching it again", name, artifact_id[:12])
                continue
            with part.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(part, dest)
            etag_file.unlink(missing_ok=True)
            return

    # ----- telemetry ----------------------------------------------------------------------------------------
    def report_latency(self, artifact_id: str, profile: str, latency_ms: float, seq_len: int, batch_size: int) -> None:
        r = self._request("POST", "/v1/telemetry/latency", json={
            "artifact_id": artifact_id, "profile": profile, "latency_ms": latency_ms, "seq_len": seq_len,
            "batch_size": batch_size})
        self._raise_for(r, "telemetry")
