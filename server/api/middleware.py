"""Body limits and request counts as a pure ASGI middleware (no BaseHTTPMiddleware: it costs a task and a
memory stream per request and buffers nothing we need)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..metrics import Metrics
from ..settings import Settings
from .errors import error_response


class LimitsAndCounts:
    """Refuses chunked bodies (411) and declared lengths over the limit (413) before any body byte is read;
    counts every answered request by route template and status."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self.body_limit, self.upload_limit = settings.max_body_bytes, settings.max_upload_mb * 2**20

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app raises before it starts a response

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route")  # set by the router once a route matched
            self.metrics.requests.labels(getattr(route, "path", "unmatched"), str(status)).inc()

    def _refusal(self, scope: Scope):
        headers = {}
        for k, v in scope["headers"]:
            if k in (b"content-length", b"transfer-encoding"):
                headers[k] = v.decode("latin-1")
        limit = self.upload_limit if scope["method"] == "PUT" else self.body_limit
        if "chunked" in headers.get(b"transfer-encoding", "").lower():
            # Without a length the limit could only be enforced after reading the body: refuse it up front.
            return error_response(411, "send a Content-Length; chunked request bodies are not accepted")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return error_response(413, f"request body over {limit} bytes")
        return None
