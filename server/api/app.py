"""The app factory: routers, exception handlers, middleware, and the service loaded in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..cache import ArtifactCache
from ..metrics import Metrics
from ..service import DeliveryService
from ..settings import Settings
from . import errors
from .middleware import LimitsAndCounts
from .routes import artifacts, health, models, operator, resolve, telemetry

log = logging.getLogger(__name__)


async def scrub_forever(cache: ArtifactCache, interval_s: float) -> None:
    """Re-hash the whole cache every ``interval_s`` (in a thread: it reads every artifact byte)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            dropped = await asyncio.to_thread(cache.scrub)
        except Exception:  # a failed scrub must not end the schedule
            log.exception("cache scrub failed")
        else:
            if dropped:
                log.warning("cache scrub dropped %d corrupted artifacts", len(dropped))


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = DeliveryService(settings, metrics)
        app.state.service = svc
        svc.load()
        scrub = asyncio.create_task(scrub_forever(svc.cache, settings.scrub_interval_s)) if settings.scrub_interval_s else None
        try:
            yield
        finally:
            if scrub is not None:
                scrub.cancel()
            svc.close()

    app = FastAPI(title="MLFS Edge delivery server", version="1", lifespan=lifespan)
    app.state.settings, app.state.metrics = settings, metrics
    errors.install(app)
    app.add_middleware(LimitsAndCounts, settings=settings, metrics=metrics)
    for module in (resolve, artifacts, models, telemetry, operator, health):
        app.include_router(module.router)
    return app
