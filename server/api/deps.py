"""Dependencies (as ``Annotated`` aliases) and the route classes that check a request before its body is read.

Dependencies are ``async def``: they take microseconds, so they run on the event loop, not in the thread pool.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Response
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
# Documented, not enforced here: the cache checks ids itself and answers 400 with what an id must look like.
ArtifactId = Annotated[str, Path(json_schema_extra={"pattern": "^[0-9a-f]{64}$"},
                                 description="64 lowercase hex digits (the `artifact_id` of a resolve)")]
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
            body = await self.body()
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as err:
                raise json.JSONDecodeError(f"the body is not UTF-8 ({err.reason} at byte {err.start})", "", 0) from None
            self._json = json.loads(text, parse_constant=_non_finite, parse_float=_finite_float)
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
