"""uvicorn, configured against slow and abusive clients (the same settings for `mlfs serve` and the tests).

uvicorn bounds idle keep-alive connections and, with ``limit_concurrency``, open connections; it has no timeout
for a request's headers, so a client that sends one header line every few seconds holds a connection forever
(slowloris). ``HeaderDeadlineProtocol`` closes a connection whose request headers are not complete within
``header_timeout_s`` of its opening (or of the previous response).
"""

from __future__ import annotations

import asyncio

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..settings import Settings


class HeaderDeadlineProtocol(H11Protocol):
    header_timeout_s = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a request's headers are complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request's headers get the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app: FastAPI, settings: Settings, **overrides) -> uvicorn.Config:
    protocol = type("HeaderDeadline", (HeaderDeadlineProtocol,), {"header_timeout_s": settings.header_timeout_s})
    options = {"host": settings.host, "port": settings.port, "http": protocol, "log_level": "info",
               "timeout_keep_alive": settings.keep_alive_s, "limit_concurrency": settings.max_connections,
               "h11_max_incomplete_event_size": 16 * 1024, **overrides}
    return uvicorn.Config(app, **options)
