"""httpx transports for the client tests: record requests, cut a download after N bytes, flip a byte."""

from __future__ import annotations

import httpx


class _Stream(httpx.SyncByteStream):
    def __init__(self, inner, fault: str, at: int) -> None:
        self.inner, self.fault, self.at = inner, fault, at

    def __iter__(self):
        sent = 0
        for chunk in self.inner:
            if self.fault == "flip" and sent <= self.at < sent + len(chunk):
                chunk = bytearray(chunk)
                chunk[self.at - sent] ^= 0xFF
                chunk = bytes(chunk)
            if self.fault == "cut" and sent + len(chunk) >= self.at:
                yield chunk[: self.at - sent]
                raise httpx.ReadError("connection dropped by the test transport")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class FaultyTransport(httpx.BaseTransport):
    """A real HTTP transport; responses for paths ending in ``target`` get the queued faults, one per response:
    ("cut", n) drops the connection after n bytes, ("flip", n) inverts byte n."""

    def __init__(self, target: str = "/files/model.onnx", faults: list[tuple[str, int]] | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.target, self.faults = target, list(faults or [])
        self.log: list[tuple[str, str, str | None, int, str | None]] = []  # method, path, range, status, auth

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        self.log.append((request.method, request.url.path, request.headers.get("range"), response.status_code,
                         request.headers.get("authorization")))
        if request.url.path.endswith(self.target) and self.faults:
            fault, at = self.faults.pop(0)
            return httpx.Response(response.status_code, headers=response.headers,
                                  stream=_Stream(response.stream, fault, at), request=request)
        return response

    def close(self) -> None:
        self.inner.close()
