"""Exceptions -> HTTP, in one place: the status of each server error, the one error body, and the OpenAPI
description of every error status a route can answer."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from slicer import ConfigError, MLFSError

from ..errors import (
    AlreadyExists,
    BuildFailed,
    BuildQueueFull,
    CoordinationError,
    InvalidArtifactId,
    NoFit,
    NotFound,
    NotReady,
    ProfileError,
    QualityPending,
    Unauthorized,
)
from ..telemetry import RateLimited, ReportRejected
from .schemas import ErrorBody

log = logging.getLogger(__name__)

# The most specific class in an exception's MRO decides; an MLFSError not listed here is a bug (500).
STATUS: dict[type[Exception], int] = {
    InvalidArtifactId: 400,
    Unauthorized: 401,
    NotFound: 404,
    AlreadyExists: 409,
    ConfigError: 422,
    ProfileError: 422,
    NoFit: 422,
    BuildFailed: 422,
    ReportRejected: 422,
    RateLimited: 429,
    BuildQueueFull: 503,
    QualityPending: 503,
    CoordinationError: 503,
    NotReady: 503,
}

DESCRIPTIONS = {
    400: "A malformed artifact id, or a multipart body that cannot be parsed",
    401: "Operator route without the server's operator token, or a latency report without the device token where "
         "one is set (`Authorization: Bearer <token>`)",
    404: "Unknown model, artifact or file",
    409: "A model of that name already exists",
    411: "A chunked request body (send a Content-Length)",
    413: "A request body over the server's limit",
    416: "A Range outside the file",
    422: "Invalid request (fields, non-finite numbers), nothing in the palette fits, the artifact cannot be built, "
         "or a latency report out of bounds or scope",
    429: "Too many latency reports from this client; retry after Retry-After seconds",
    503: "Build queue full, models still loading, configs' quality still being measured, or the shared database "
         "unreachable; retry after Retry-After seconds",
}


# An absolute path of two or more components (the server's folders); a lone "/etc" a client sent stays.
_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"]+/)+([^\s/'\"]+)")


def redact_paths(message: str) -> str:
    """No server path in any response: a message from the library keeps only the file name of a path."""
    return _PATH.sub(lambda m: f".../{m.group(1)}", message)


def error_body(detail: str, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"detail": redact_paths(detail), "errors": errors or []}


def error_response(status: int, detail: str, headers: dict[str, str] | None = None,
                   errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    return JSONResponse(error_body(detail, errors), status_code=status, headers=headers)


def status_of(err: Exception) -> int:
    return next((STATUS[c] for c in type(err).__mro__ if c in STATUS), 500)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route's error statuses, all with the one error body."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


async def _server_error(request: Request, err: Exception) -> JSONResponse:
    status = status_of(err)
    if status == 500:
        log.error("unexpected %s on %s %s", type(err).__name__, request.method, request.url.path, exc_info=err)
        return error_response(500, "internal error; the server log has the details")
    retry = getattr(err, "retry_after_s", None)
    headers = {"Retry-After": str(retry)} if retry is not None else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(status, str(err), headers, getattr(err, "errors", None))


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    return error_response(err.status_code, str(err.detail), getattr(err, "headers", None))


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    """422 listing each field's problem; the offending value is never echoed (it may not even be JSON)."""
    items = []
    for e in err.errors():
        msg = e.get("msg", "invalid")
        reason = (e.get("ctx") or {}).get("error")
        if e.get("type") == "json_invalid" and reason:
            msg = f"{msg}: {reason}"
        items.append({"loc": [x if isinstance(x, int) else str(x) for x in e.get("loc", ())], "msg": msg,
                      "type": str(e.get("type", "value_error"))})
    detail = "; ".join(f"{'.'.join(map(str, i['loc']))}: {i['msg']}" for i in items) or "invalid request"
    return error_response(422, detail, errors=items)


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    log.error("unhandled %s on %s %s", type(err).__name__, request.method, request.url.path, exc_info=err)
    return error_response(500, "internal error; the server log has the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(MLFSError, _server_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
