"""The delivery service: resolve a device's budget to a config, build its artifact once, hand it out.

Builds run in a thread pool off the event loop. Requests for a key that is already building wait on the same
future, so 20 identical cold requests cause one build. At most ``max_pending_builds`` builds are queued or
running; more are refused (the caller retries).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slicer import (
    CACHE_SUBDIR,
    BuildOptions,
    ConfigError,
    MLFSError,
    ModelDims,
    OpenSupernet,
    PaletteTable,
    SubnetConfig,
    ValidationSet,
    build_subnet_artifact,
    open_supernet,
    quality_metric,
    read_palette,
    stack_fingerprint,
    validation_set,
    warm_up_builds,
)
from slicer.onnx.build import PRECISIONS
from slicer.onnx.decoder_int8 import int8_unavailable
from slicer.onnx.quantize import INT8_SCHEME

from .cache import ArtifactCache, Entry, artifact_key
from .calibration import calibrate
from .coordination import open_shared_state
from .errors import (
    AlreadyExists,
    ArtifactNotFound,
    BuildFailed,
    BuildQueueFull,
    CoordinationError,
    NoFit,
    ProfileError,
    QualityPending,
    UnknownModel,
)
from .latency_model import Estimates, LatencyEstimator
from .lru import LRU
from .metadata import FailedBuild
from .metrics import Metrics
from .profiles import DeviceProfile, load_profiles
from .quality import QualityGate, Verdict
from .selection import Budget, Candidate, Choice, candidates_from_palette, menu, pick, precisions
from .settings import Settings
from .store import (
    ServedModel,
    attach_validation,
    check_palette,
    load_models,
    prepared_teacher_names,
    register_adapter_stack,
    remove_model,
)
from .telemetry import RateLimiter, ReportRejected, check_report, client_id

log = logging.getLogger(__name__)
FAILURES_REFRESH_S = 5.0  # failed builds recorded by another replica (or cleared by the CLI) are seen this late
CLEAR_HINT = ("an operator clears it through the model's failed-builds route (DELETE) or `mlfs failed-builds clear "
              "--model {model}`; a new adapter stack, build recipe or validation data starts afresh")


@dataclass
class LoadedModel:
    served: ServedModel
    opened: OpenSupernet
    adapters_fingerprint: str | None
    palette: PaletteTable | None
    palette_check: dict[str, Any] = dataclasses.field(default_factory=lambda: {"verified": None, "reason": "", "data": None})

    @functools.cached_property
    def dims(self) -> ModelDims:
        """Fixed for the model's life; read many times per resolve (the supernet's is a torch attribute lookup)."""
        return self.opened.supernet.dims

    @functools.cached_property
    def _configs(self) -> tuple[SubnetConfig, ...]:
        return tuple(self.opened.supernet.space.enumerate(self.dims))

    def configs(self) -> list[SubnetConfig]:
        return list(self._configs)

    @property
    def quality_metric(self) -> str | None:
        """What ``quality`` means for this model (higher is better): palette accuracy, or -loss for a language
        model's palette (``neg_loss``); None without a palette table."""
        return quality_metric(self.palette.metric) if self.palette else None

    @functools.cached_property
    def candidates(self) -> list[Candidate]:
        """Every config with its palette quality: fixed for the model's life, read on every resolve."""
        return candidates_from_palette(self.dims, self.palette, self._configs)

    @functools.cached_property
    def validation(self) -> ValidationSet:
        """What every build of this model is validated on, tokenised once for the model's life."""
        return validation_set(self.opened, self.served.validation_data)

    @functools.cached_property
    def validation_fingerprint(self) -> str:
        """The validation inputs by content (an attached file replaced under the same name changes it)."""
        h = hashlib.sha256(self.validation.source.encode())
        for b in [*self.validation.parity, *self.validation.gate]:
            for name in sorted(b):
                h.update(name.encode())
                h.update(b[name].numpy().tobytes())
        return h.hexdigest()


def load_model(served: ServedModel, opened: OpenSupernet | None = None, reordering_cache: Path | None = None,
               palette_check: dict[str, Any] | None = None) -> LoadedModel:
    opened = opened or open_supernet(served.base, served.adapters, reordering_cache=reordering_cache)
    fp = stack_fingerprint(served.adapters) if served.adapters is not None else None
    if palette_check is None:
        try:
            palette_check = check_palette(served.adapters, served.validation_data)
        except MLFSError as err:  # unreadable validation data: serve, but say the palette is unchecked
            palette_check = {"verified": False, "reason": str(err), "data": None}
        if palette_check["verified"] is False:
            log.warning("model %s: palette not verified (%s)", served.name, palette_check["reason"])
    return LoadedModel(served, opened, fp, read_palette(served.adapters), palette_check)


class DeliveryService:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        root = Path(settings.store)
        self.meta, claims, grace = open_shared_state(root, settings)  # SQLite, or PostgreSQL shared by replicas
        self.cache = ArtifactCache(root / "cache", self.meta, settings.cache_budget_mb * 2**20, claims, grace)
        self.profiles: dict[str, DeviceProfile] = load_profiles(settings.profiles_file)
        self.models: dict[str, LoadedModel] = {}
        self._served = load_models(root)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="build")
        self._inflight: dict[str, asyncio.Future] = {}
        self._measuring: dict[str, asyncio.Future] = {}  # quality measurements per resolve request
        # lineage -> (when read, (config key, precision) -> failure): the metadata's failed builds, read again
        # every FAILURES_REFRESH_S so other replicas' failures and the CLI's clearing are seen
        self._failures: dict[str, tuple[float, dict[tuple[str, str], FailedBuild]]] = {}
        self.quality = QualityGate(self.meta, settings.quality_max_perplexity_ratio, settings.quality_min_accuracy_margin)
        # made once (a bad builder or graph mode is refused at start-up, not at the first build); read on every resolve
        self._build_options = {p: BuildOptions(p, settings.graph_builder, settings.graph_mode) for p in PRECISIONS}
        self.latency = LatencyEstimator(self.meta, self.profiles, settings.telemetry_min_clients)
        # (model, precisions, shape, profile, speed, threads) -> (the candidates and the latency estimates it was
        # made from, the menu): kept while both are the same objects, i.e. until the model is replaced or the
        # latency rows or calibration change (the estimator then returns new estimates)
        self._menus: LRU[tuple, tuple[list[Candidate], Estimates, tuple[Choice, ...]]] = LRU(LatencyEstimator.CACHE_SIZE)
        self.report_limiter = RateLimiter(settings.telemetry_rate_per_minute)
        self.ready = False
        self.loading: dict[str, Any] = {"total": len(self._served), "loaded": [], "current": None, "since": None}
        self.warm_up: dict[str, dict[str, float] | None] = {}  # model -> seconds its build warm-up took at load

    def load(self, names: list[str] | None = None) -> None:
        """Load the served models (all, or ``names``); called once at start-up, off the request path. Progress
        is in ``self.loading`` (``/readyz`` shows it) and in the log."""
        todo = names if names is not None else list(self._served)
        self.loading["total"] = len(todo)
        for i, name in enumerate(todo, 1):
            if name not in self._served:
                raise UnknownModel(f"unknown model {name!r}; the store serves {sorted(self._served)}")
            started = time.perf_counter()
            self.loading.update(current=name, since=time.time())
            log.info("loading model %s (%d of %d): base %s%s", name, i, len(todo), self._served[name].base,
                     " + adapter stack" if self._served[name].adapters else "")
            # A base served without adapters is ranked once, then its order is read from the store.
            self.models[name] = load_model(self._served[name], reordering_cache=Path(self.settings.store) / CACHE_SUBDIR)
            _ = self.models[name].validation  # tokenised now, not inside the first cold build
            self.warm_up[name] = self._warm_up(self.models[name])
            self.loading["loaded"].append(name)
            log.info("serving %s (loaded in %.1f s)", name, time.perf_counter() - started)
        self.loading.update(current=None, since=None)
        if self.settings.latency_calibration:
            self.calibrate(force=False)
        self.ready = True

    def _warm_up(self, model: LoadedModel) -> dict[str, float] | None:
        """The one-time costs of building (onnxruntime and PyTorch start-up) paid at load, not by the first
        request's cold build. A failure here is logged, not fatal: the build itself reports it properly."""
        try:
            timings = warm_up_builds(model.opened, model.validation, self.build_options("fp32"))
        except MLFSError as err:
            log.warning("model %s: build warm-up failed (%s); the first build will say more", model.served.name, err)
            return None
        log.info("model %s: builds warmed up in %.2f s", model.served.name, timings["total_s"])
        return timings

    def calibrate(self, force: bool = True, **options) -> list:
        """The built-in latency calibration for every profile's thread count (only missing ones unless forced)."""
        have = self.meta.calibration()
        threads = {p.threads for p in self.profiles.values()} | {1}
        todo = threads if force else threads - set(have)
        done = calibrate(todo, **options) if todo else []
        for c in done:
            self.meta.put_calibration(c.threads, c.coeffs, c.info)
        return done

    def register(self, name: str, base: str, files: dict[str, Path], description: str = "",
                 validation: Path | None = None, replace: bool = False) -> LoadedModel:
        """Validate an uploaded adapter stack against its base, add it to the store and serve it; with
        ``replace`` an existing model of that name is replaced (its failed-build memory is forgotten)."""
        if name in self.models and not replace:
            raise AlreadyExists(f"model {name!r} already exists; PUT replaces it, DELETE removes it")
        if base not in {m.base for m in self._served.values()} and base not in prepared_teacher_names():
            raise ConfigError(f"unknown base {base!r}: use the base of a served model or a prepared teacher")
        served, opened, check = register_adapter_stack(Path(self.settings.store), name, base, files, description,
                                                       validation, replace)
        loaded = load_model(served, opened, palette_check=check)
        self._served[name] = served
        self.models[name] = loaded  # new adapters: a new lineage, so earlier failures no longer apply
        return loaded

    def remove(self, name: str) -> None:
        """Stop serving ``name`` and remove it from the store (its cached artifacts age out of the cache)."""
        self.model(name)
        remove_model(Path(self.settings.store), name)
        self.models.pop(name, None)
        self._served.pop(name, None)
        self.meta.clear_failed_builds(name)

    def attach_validation(self, name: str, file: Path) -> LoadedModel:
        """Judge ``name``'s int8 builds on this dev file from now on; its palette is checked against it."""
        model = self.model(name)
        served, check = attach_validation(Path(self.settings.store), name, file)
        loaded = dataclasses.replace(model, served=served, palette_check=check)
        self._served[name] = served
        self.models[name] = loaded  # new validation data, new lineage: int8 gets another chance on it
        return loaded

    def warm_targets(self, model: LoadedModel, configs: list[dict], budgets: list[tuple[Budget, str | None, float | None]],
                     precision: str = "fp32") -> list[tuple[SubnetConfig, str]]:
        """What to pre-build: explicit configs at ``precision``, plus the best choice for each budget."""
        targets = [(SubnetConfig.parse(c, model.dims), precision) for c in configs]
        for budget, profile, speed in budgets:
            choice = self.choose_gated(model, budget, profile, speed)
            targets.append((choice.config, choice.precision))
        return list(dict.fromkeys(targets))

    async def drain(self, timeout_s: float) -> None:
        """At shutdown (after the last request was answered): give running builds ``timeout_s`` to finish and
        publish; queued ones are dropped by ``close``, and one still running then is abandoned there."""
        running = [f for f in self._inflight.values() if not f.done()]
        if running and timeout_s > 0:
            log.info("shutting down: waiting up to %g s for %d build(s) to finish", timeout_s, len(running))
            await asyncio.wait(running, timeout=timeout_s)

    def close(self) -> None:
        """Release everything: queued builds are cancelled; a build still running loses its claim now (another
        replica takes it over at once) and publishes nothing."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.cache.claims.close()
        self.meta.close()

    def model(self, name: str) -> LoadedModel:
        if name not in self.models:
            raise UnknownModel(f"unknown model {name!r}; served models: {sorted(self.models)}")
        return self.models[name]

    def entry(self, artifact_id: str) -> Entry:
        """The cached, verified artifact; raises ArtifactNotFound (InvalidArtifactId for a malformed id)."""
        entry = self.cache.get(artifact_id)
        if entry is None and artifact_id in self._inflight:
            raise ArtifactNotFound(f"artifact {artifact_id} is still building; wait on the resolve_url of the 202 "
                                   "(GET /v1/resolutions/...), which answers 200 with the artifact when it is ready")
        if entry is None:
            failure = self.meta.failed_build(artifact_id)
            if failure is not None:  # a 202 named this id and its build failed: say so, not 404
                raise BuildFailed.of(failure, "resolve again (POST the same request): the next best config is chosen")
            raise ArtifactNotFound(f"no artifact {artifact_id}; resolve a budget to get one built")
        return entry

    async def resolve(self, name: str, budget: Budget, profile: str | None, speed_score: float | None,
                      wait_s: float | None = None, threads: int | None = None) -> tuple[Choice, Entry | None]:
        """The best config for the budget and its artifact (None while it is still building after ``wait_s``,
        default ``build_wait_s``). With ``auto`` precision, a config whose build fails is excluded and the next
        best tried. ``threads``: a device without a profile (its cpu_count), for the latency estimates."""
        model = self.model(name)
        wait = self.settings.build_wait_s if wait_s is None else wait_s
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):  # a failed build is excluded from selection, so the second choice differs
            choice = self.choose_gated(model, budget, profile, speed_score, threads, measure=False)
            if choice is None:
                choice = await self._measured_choice(loop, model, budget, profile, speed_score, threads, wait)
            try:
                return choice, await self.artifact(model, choice.config, choice.precision, wait)
            except BuildFailed:
                if attempt == 2 or budget.precision != "auto":
                    raise
        raise AssertionError("unreachable")

    async def _measured_choice(self, loop, model: LoadedModel, budget: Budget, profile: str | None,
                               speed_score: float | None, threads: int | None, wait_s: float) -> Choice:
        """``choose_gated`` with measurements, in the build thread (it shares the supernet and the CPU with builds;
        a resolve whose figures are known never waits behind a build). The same request asked again waits on the
        same measurement; one still running after ``wait_s`` is a 503 with Retry-After (QualityPending)."""
        key = repr((model.served.name, budget, profile, speed_score, threads))
        future = self._measuring.get(key)
        if future is None:
            future = asyncio.ensure_future(loop.run_in_executor(
                self._pool, self.choose_gated, model, budget, profile, speed_score, threads))
            self._measuring[key] = future

            def done(f: asyncio.Future) -> None:
                self._measuring.pop(key, None)
                if not f.cancelled() and f.exception() is not None and not isinstance(f.exception(), MLFSError):
                    log.warning("quality measurement for %s failed: %s", model.served.name, f.exception())

            future.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=wait_s)
        except asyncio.TimeoutError:
            raise QualityPending(f"measuring the quality of {model.served.name!r} configs before serving one "
                                 "(seconds to minutes per config, once; kept in the store); retry after Retry-After"
                                 ) from None

    async def warm(self, name: str, configs: list[dict], budgets: list[tuple[Budget, str | None, float | None]],
                   ) -> list[tuple[Entry, SubnetConfig, str]]:
        """Build (waiting as long as it takes) and pin explicit configs and the best config per budget."""
        model = self.model(name)
        warmed = []
        targets = await asyncio.get_running_loop().run_in_executor(self._pool, self.warm_targets, model, configs, budgets)
        for cfg, precision in targets:
            entry = await self.artifact(model, cfg, precision, wait_s=math.inf)
            self.cache.pin(entry.key)
            warmed.append((entry, cfg, precision))
        return warmed

    def record_latency(self, artifact_id: str, profile: str, latency_ms: float, seq_len: int, batch_size: int,
                       threads: int | None = None, address: str | None = None) -> None:
        """A device's measured latency of an artifact under a profile, stored after the client's rate limit and
        the bounds (``telemetry.check_report``); how reports feed selection is ``latency_model``'s business."""
        self.report_limiter.take(address or "?")
        entry = self.entry(artifact_id)
        if profile not in self.profiles:
            raise ProfileError(f"unknown device profile {profile!r}; known: {sorted(self.profiles)}")
        info = entry.record.info
        model = self.models.get(info.get("model", ""))
        if model is None:
            raise ReportRejected(f"artifact of model {info.get('model')!r}, which is not served")
        estimate = self.latency_estimates(model, profile, seq_len, batch_size).get((info["config_key"], info["precision"]))
        check_report(latency_ms, threads, self.profiles[profile].threads, estimate, self.settings.telemetry_max_factor)
        self.meta.put_latency(profile, info["config_key"], info["precision"], seq_len, batch_size, latency_ms, "device",
                              threads=self.profiles[profile].threads, client=client_id(address))

    # ----- selection ----------------------------------------------------------------------------------------
    def latency_estimates(self, model: LoadedModel, profile: str | None, seq_len: int, batch: int,
                          speed_score: float | None = None, threads: int | None = None) -> Estimates:
        """(config key, precision) -> latency estimate on a device of ``profile`` at a shape (cached)."""
        return self.latency.estimates(model.served.name, model.dims, model.configs(), profile, seq_len, batch,
                                      speed_score, threads)

    def choose(self, model: LoadedModel, budget: Budget, profile: str | None = None,
               speed_score: float | None = None, threads: int | None = None) -> Choice:
        """The best config for the budget; the device's speed score defaults to its profile's."""
        if profile is not None and profile not in self.profiles:
            raise ProfileError(f"unknown device profile {profile!r}; known: {sorted(self.profiles)}")
        offered, why = self.int8_offer(model)
        if not offered and budget.precision == "int8":
            raise NoFit(f"int8 is not offered for model {model.served.name!r}: {why}")
        if not offered and budget.precision == "auto":
            budget = dataclasses.replace(budget, precision="fp32")
        failures = self.failures(model)
        if budget.precision == "auto" and any(p == "int8" and f.kind == "int8_gate" for (_, p), f in failures.items()):
            # one int8 build of this model failed its quality gate: the others would too, each after a full build
            budget = dataclasses.replace(budget, precision="fp32")
        exclude = set(failures) | {(k, p) for k, v in self.quality.known(model).items() if v.excluded
                                   for p in ("fp32", "int8")}
        options = self.menu(model, budget, profile, speed_score, threads)
        try:
            return pick(options, budget, exclude)
        except NoFit as err:
            if not exclude:
                raise
            try:
                pick(options, budget)
            except NoFit:
                raise err from None  # nothing would fit anyway: its message says what is needed
            raise NoFit(f"every config of {model.served.name!r} that fits this budget is excluded: too far below the "
                        f"teacher ({self.quality.rule()}) or its build failed; GET /v1/models lists each with its "
                        "reason") from None

    def menu(self, model: LoadedModel, budget: Budget, profile: str | None, speed_score: float | None,
             threads: int | None) -> tuple[Choice, ...]:
        """Every (config, precision) the budget's precision allows, with memory and latency estimates at its shape,
        best first (``selection.menu``); cached per model, shape and device, remade when the model is replaced or
        the latency estimates change (new latency rows, device reports, calibration)."""
        latency = self.latency_estimates(model, profile, budget.seq_len, budget.batch_size, speed_score, threads)
        allowed = precisions(budget)
        key = (model.served.name, allowed, budget.seq_len, budget.batch_size, profile, speed_score, threads)
        cached = self._menus.get(key)
        if cached is not None and cached[0] is model.candidates and cached[1] is latency:
            return cached[2]
        options = menu(model.dims, model.candidates, allowed, budget.seq_len, budget.batch_size, latency)
        self._menus.put(key, (model.candidates, latency, options))
        return options

    def choose_gated(self, model: LoadedModel, budget: Budget, profile: str | None = None,
                     speed_score: float | None = None, threads: int | None = None, measure: bool = True,
                     ) -> Choice | None:
        """``choose``, with the chosen config's quality measured first if it is not known yet (blocking: seconds
        per config; with ``measure`` False, None instead); a config far below the teacher is excluded and the next
        best chosen."""
        for _ in range(len(model.candidates) + 1):
            choice = self.choose(model, budget, profile, speed_score, threads)
            if not measure and self.quality.unmeasured(model, choice.config):
                return None
            verdict = self.quality.verdict(model, choice.config)
            if verdict is None or not verdict.excluded:
                if verdict is not None and choice.quality is None:  # measured, not from a palette table
                    choice = dataclasses.replace(choice, quality=verdict.quality)
                return choice
            log.info("model %s: %s not delivered: %s", model.served.name, choice.config.describe(), verdict.reason)
        raise AssertionError("unreachable: every pass excludes one more config")

    def quality_metric(self, model: LoadedModel) -> str | None:
        """What ``quality`` means for the model: its palette's metric, else what the quality gate measures."""
        if model.quality_metric is not None or self.quality.applies(model) is not None:
            return model.quality_metric
        return "accuracy" if model.dims.num_labels else "neg_loss"

    def int8_offer(self, model: LoadedModel) -> tuple[bool, str]:
        """Whether int8 artifacts of this model are offered, and why (or why not)."""
        reason = int8_unavailable(model.dims.family)
        if reason is not None:
            return False, reason
        return True, f"int8 ({INT8_SCHEME}) is offered; each build must pass its quality gate against fp32"

    def quality_verdicts(self, model: LoadedModel) -> dict[str, Verdict]:
        return self.quality.known(model)

    # ----- failed builds ------------------------------------------------------------------------------------
    def lineage(self, model: LoadedModel) -> str:
        """What a failed build is remembered for: base, adapters, build recipe and validation data by content.
        A change to any of them gives every config a new chance."""
        parts = [model.opened.base_fingerprint, model.adapters_fingerprint or "-", self.build_options("fp32").recipe,
                 model.validation_fingerprint]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def failures(self, model: LoadedModel, fresh: bool = False) -> dict[tuple[str, str], FailedBuild]:
        """(config key, precision) -> the remembered failure, for the model's current lineage."""
        lineage = self.lineage(model)
        seen = self._failures.get(lineage)
        if fresh or seen is None or time.monotonic() - seen[0] > FAILURES_REFRESH_S:
            seen = (time.monotonic(), {(f.config_key, f.precision): f for f in self.meta.failed_builds(lineage)})
            self._failures[lineage] = seen
        return seen[1]

    def failure_of(self, artifact_key: str) -> FailedBuild | None:
        return self.meta.failed_build(artifact_key)

    def clear_failures(self, name: str, config_key: str | None = None, precision: str | None = None) -> int:
        """Forget model ``name``'s failed builds (all, or one config and/or precision): they may be tried again."""
        cleared = self.meta.clear_failed_builds(name, config_key, precision)
        self._failures.clear()
        log.info("cleared %d failed build(s) of %s", cleared, name)
        return cleared

    def _remember_failure(self, model: LoadedModel, cfg: SubnetConfig, precision: str, key: str,
                          err: MLFSError) -> None:
        details = dict(getattr(err, "details", None) or {})
        kind = str(details.pop("kind", "error"))
        reason = " ".join(str(err).split())[:500]
        failure = FailedBuild(self.lineage(model), cfg.key, precision, model.served.name, key, kind, reason, details,
                              time.time())
        self.metrics.build_failures.labels(kind=kind).inc()
        log.warning("build of %s %s %s failed (%s): %s; it will not be tried again (%s)", model.served.name,
                    cfg.describe(), precision, kind, reason, CLEAR_HINT.format(model=model.served.name))
        try:
            self.meta.put_failed_build(failure)
        except CoordinationError as db_err:  # remembered here at least; the next restart may try it once more
            log.warning("could not record the failed build in the metadata: %s", db_err)
        self.failures(model)[(cfg.key, precision)] = failure

    def build_options(self, precision: str) -> BuildOptions:
        return self._build_options[precision]

    def artifact_id(self, model: LoadedModel, cfg: SubnetConfig, precision: str) -> str:
        options = self.build_options(precision)
        return artifact_key(model.opened.base_fingerprint, model.adapters_fingerprint, cfg.key, precision, options.recipe)

    # ----- building -----------------------------------------------------------------------------------------
    def build(self, model: LoadedModel, cfg: SubnetConfig, precision: str) -> Entry:
        """The artifact for (config, precision), built now if it is not cached (blocking); a remembered failed
        build raises BuildFailed instead of being tried again."""
        key = self.artifact_id(model, cfg, precision)
        failed = self.failures(model).get((cfg.key, precision))
        if failed is not None and self.cache.get(key) is None:
            raise BuildFailed.of(failed, CLEAR_HINT.format(model=model.served.name))
        return self._build_blocking(model, cfg, precision, key)

    def _build_blocking(self, model: LoadedModel, cfg: SubnetConfig, precision: str, key: str) -> Entry:
        def build(folder: Path) -> dict[str, Any]:
            manifest = build_subnet_artifact(model.opened, cfg, folder, model.validation, self.build_options(precision))
            return {"model": model.served.name, "config": cfg.to_dict(), "config_key": cfg.key, "precision": precision,
                    "build": manifest["build"], "timings": {**manifest["slice_timings"], **manifest["timings"]},
                    "expected_quality": manifest.get("expected_quality"), "files": manifest["files"]}

        start = time.perf_counter()
        try:
            entry, built = self.cache.get_or_build(key, build)
        except CoordinationError:
            raise  # the database, not the artifact: nothing to exclude
        except MLFSError as err:
            # e.g. an int8 model that failed its quality gate: remembered (in the metadata), selection stops offering it
            self._remember_failure(model, cfg, precision, key, err)
            raise
        if built:
            self.metrics.build_seconds.observe(time.perf_counter() - start)
        return entry

    async def settled(self, key: str, wait_s: float) -> bool:
        """Wait up to ``wait_s`` for this process's build of ``key``, if one runs; False if it is still running.
        Its outcome (an entry, or a remembered failure) is for the caller to look up."""
        future = self._inflight.get(key)
        if future is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=wait_s)
        except asyncio.TimeoutError:
            return False
        except Exception:
            pass
        return True

    async def artifact(self, model: LoadedModel, cfg: SubnetConfig, precision: str, wait_s: float) -> Entry | None:
        """The ready entry, or None if still building after ``wait_s`` (the build goes on)."""
        key = self.artifact_id(model, cfg, precision)
        # a warm entry answers from memory on the loop (microseconds); the database and hashing go to a thread
        entry = self.cache.get_cached(key) or await asyncio.to_thread(self.cache.get, key)
        if entry is not None:
            self.metrics.cache_hits.inc()
            return entry
        failed = self.failures(model).get((cfg.key, precision))
        if failed is not None:  # never retried blindly (an explicit warm of it, a stale resolution)
            raise BuildFailed.of(failed, CLEAR_HINT.format(model=model.served.name))
        future = self._inflight.get(key)
        if future is None:
            if len(self._inflight) >= self.settings.max_pending_builds:
                raise BuildQueueFull(f"{len(self._inflight)} builds are pending; retry later")
            self.metrics.cache_misses.inc()
            loop = asyncio.get_running_loop()
            future = asyncio.ensure_future(loop.run_in_executor(self._pool, self._build_blocking, model, cfg, precision, key))
            self._inflight[key] = future
            self.metrics.builds_in_flight.set(len(self._inflight))

            def done(f: asyncio.Future) -> None:
                self._inflight.pop(key, None)
                self.metrics.builds_in_flight.set(len(self._inflight))
                # Retrieve the outcome here: when every caller got 202, nobody awaits a failed build, and asyncio
                # would log "Future exception was never retrieved" with a traceback.
                error = None if f.cancelled() else f.exception()
                if error is not None and (isinstance(error, CoordinationError) or not isinstance(error, MLFSError)):
                    log.warning("build of %s %s failed: %s", cfg.describe(), precision, f.exception())

            future.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=wait_s)
        except asyncio.TimeoutError:
            return None
        except (BuildFailed, CoordinationError):
            raise
        except MLFSError as err:
            failed = self.failures(model).get((cfg.key, precision))
            if failed is not None:
                raise BuildFailed.of(failed, CLEAR_HINT.format(model=model.served.name)) from err
            raise BuildFailed(f"{cfg.describe()} {precision} cannot be built: {err}") from err


__all__ = ["BuildFailed", "BuildQueueFull", "DeliveryService", "NoFit", "UnknownModel"]
