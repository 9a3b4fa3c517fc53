"""The app factory: routers, exception handlers, middleware, and the service loaded in the lifespan."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..metrics import Metrics
from ..service import DeliveryService
from ..settings import Settings
from . import errors
from .middleware import LimitsAndCounts
from .routes import artifacts, health, models, operator, resolve, telemetry


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = DeliveryService(settings, metrics)
        app.state.service = svc
        svc.load()
        try:
            yield
        finally:
            svc.close()

    app = FastAPI(title="MLFS Edge delivery server", version="1", lifespan=lifespan)
    app.state.settings, app.state.metrics = settings, metrics
    errors.install(app)
    app.add_middleware(LimitsAndCounts, settings=settings, metrics=metrics)
    for module in (resolve, artifacts, models, telemetry, operator, health):
        app.include_router(module.router)
    return app
