"""The baseline of ``server_bench.py resolve``: a trivial FastAPI endpoint with the same request body.

It parses the same ``ResolveRequest`` and answers a fixed ``ResolveResponse`` (the real server's answer, read from
the JSON file given as the second argument), under the same uvicorn settings as ``mlfs serve``, so the difference
in CPU per request is what the real resolve path adds. ``python trivial_resolve_app.py PORT ANSWER.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from server.api.schemas import ResolveRequest, ResolveResponse
from server.api.serving import uvicorn_config
from server.settings import Settings


def make_app(answer: dict) -> FastAPI:
    app = FastAPI()
    fixed = ResolveResponse(**answer)

    @app.post("/v1/resolve", response_model=ResolveResponse)
    async def resolve(req: ResolveRequest) -> ResolveResponse:
        return fixed

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"ready": True}

    return app


if __name__ == "__main__":
    port, answer = int(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    uvicorn.Server(uvicorn_config(make_app(answer), Settings(port=port))).run()
