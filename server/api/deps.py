"""Dependencies (as ``Annotated`` aliases) and the route classes that check a request before its body is read.

Dependencies are ``async def``: they take microseconds, so they run on the event loop, not in the thread pool.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from ..errors import NotReady, Unauthorized
from ..service import DeliveryService
from ..settings import Settings


def loading_progress(app: Any) -> tuple[str, dict[str, Any]]:
    """What the server is doing while it is not ready: one line, and the numbers behind it."""
    startup = getattr(app.state, "startup", None) or {"phase": "starting", "started": time.time(), "error": None}
    svc = app.state.service
    progress: dict[str, Any] = {"phase": startup["phase"], "elapsed_s": round(time.time() - startup["started"], 1)}
    line = f"not ready: {startup['phase']} ({progress['elapsed_s']:.0f} s)"
    if startup.get("error"):
        progress["error"] = startup["error"]
        return f"not ready: start-up failed ({startup['error']}); the server log has the details", progress
    if svc is not None:
        loading = svc.loading
        progress.update(models_total=loading["total"], models_loaded=list(loading["loaded"]), loading=loading["current"])
        if loading["current"]:
            line = (f"not ready: loading model {loading['current']} ({len(loading['loaded']) + 1} of {loading['total']}, "
                    f"{time.time() - loading['since']:.0f} s so far; {progress['elapsed_s']:.0f} s since start)")
    return line, progress


async def _service(request: Request) -> DeliveryService:
    svc = request.app.state.service
    if svc is None or not svc.ready:
        raise NotReady(loading_progress(request.app)[0])
    return svc


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
    """Bearer token for operator routes; without a configured token they are closed. The message says which case
    it is and where a token comes from (never a server path)."""
    token = request.app.state.settings.operator_token
    if token is None:
        raise Unauthorized("operator routes are closed: this server has no operator token; set MLFS_OPERATOR_TOKEN, "
                           "or start it with `mlfs serve`, which generates one into the store's operator_token file")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token.get_secret_value()}".encode()):
        what = "no Authorization header" if not given else "a wrong token" if given.startswith("Bearer ") else \
            "an Authorization header that is not 'Bearer <token>'"
        raise Unauthorized(f"operator routes need 'Authorization: Bearer <token>' ({what} was sent): the token is "
                           "MLFS_OPERATOR_TOKEN, or the one `mlfs serve` printed at start (the store's operator_token file)")


class CheckedRoute(StrictRoute):
    """A route whose ``check`` (a token) runs before FastAPI reads (and parses) the body: an unauthenticated 50 MB
    upload is refused at once, not after it was received."""

    @staticmethod
    def check(request: Request) -> None:
        raise NotImplementedError

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def authorized(request: Request) -> Response:
            self.check(request)
            return await handler(request)

        return authorized


class OperatorRoute(CheckedRoute):
    """Operator routes: the operator token (``check_operator``)."""

    check = staticmethod(check_operator)


def check_device(request: Request) -> None:
    """With a configured device token, latency reports need it; without one, the route is open (and scoped)."""
    token = request.app.state.settings.device_token
    if token is not None and not hmac.compare_digest(request.headers.get("authorization", "").encode(),
                                                     f"Bearer {token.get_secret_value()}".encode()):
        raise Unauthorized("latency reports need 'Authorization: Bearer <token>' with the server's device token")


class DeviceRoute(CheckedRoute):
    """Telemetry routes: the device token, when one is set (``check_device``)."""

    check = staticmethod(check_device)
