"""Dependencies (as ``Annotated`` aliases) and the route classes that check a request before its body is read.

Dependencies are ``async def``: they take microseconds, so they run on the event loop, not in the thread pool.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from ..errors import Unauthorized
from ..service import DeliveryService
from ..settings import Settings


async def _service(request: Request) -> DeliveryService:
    return request.app.state.service


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


Service = Annotated[DeliveryService, Depends(_service)]
ServerSettings = Annotated[Settings, Depends(_settings)]

# Documents the operator routes' bearer token in OpenAPI; the check itself is OperatorRoute's, before the body.
operator_scheme = HTTPBearer(auto_error=False, description="the server's operator token (MLFS_OPERATOR_TOKEN)")


def _non_finite(token: str) -> float:
    raise json.JSONDecodeError(f"{token} is not a finite number; JSON numbers must be finite", "", 0)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise json.JSONDecodeError(f"{text} is out of range for a 64-bit float; numbers must be finite", "", 0)
    return value


class FiniteJSONRequest(Request):
    """A request whose JSON body may not hold NaN, Infinity or numbers that overflow to them, at any depth."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), parse_constant=_non_finite, parse_float=_finite_float)
        return self._json


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class StrictRoute(APIRoute):
    """Every route of the API: its JSON body is parsed with non-finite numbers refused (422)."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(FiniteJSONRequest(request.scope, request.receive, request._send))

        return strict


def check_operator(request: Request) -> None:
    """Bearer token for operator routes; without a configured token they are closed."""
    token = request.app.state.settings.operator_token
    given = request.headers.get("authorization", "")
    expected = f"Bearer {token.get_secret_value()}" if token else None
    if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("operator endpoints need 'Authorization: Bearer <token>' with the server's operator token")


class OperatorRoute(StrictRoute):
    """Operator routes check the token before FastAPI reads (and parses) the body: an unauthenticated 50 MB
    upload is refused at once, not after it was received."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def authorized(request: Request) -> Response:
            check_operator(request)
            return await handler(request)

        return authorized


def check_device(request: Request) -> None:
    """With a configured device token, latency reports need it; without one, the route is open (and scoped)."""
    token = request.app.state.settings.device_token
    if token is not None and not hmac.compare_digest(request.headers.get("authorization", "").encode(),
                                                     f"Bearer {token.get_secret_value()}".encode()):
        raise Unauthorized("latency reports need 'Authorization: Bearer <token>' with the server's device token")


class DeviceRoute(StrictRoute):
    """Telemetry routes check the device token (when one is set) before the body is read."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def authorized(request: Request) -> Response:
            check_device(request)
            return await handler(request)

        return authorized
