"""HTTP API (FastAPI, versioned under /v1; OpenAPI at /docs), laid out like FastAPI's full-stack template:
``schemas`` (request and response bodies), ``deps`` (dependencies as ``Annotated`` aliases, the strict route
class), ``errors`` (exceptions -> status codes, in one table), ``middleware`` (body limits and request
counts, pure ASGI), ``routes/`` (one router per resource, thin handlers) and ``app`` (the factory).

Every bad input gets a 4xx that says what was wrong; a 500 is a bug.
"""

from .app import create_app

__all__ = ["create_app"]
