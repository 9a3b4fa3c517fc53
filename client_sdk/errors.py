"""The client SDK's exception tree: everything it raises on purpose derives from ``ClientError``.

Messages say what went wrong and what to do; the device command prints them as one line.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error the client SDK raises on purpose."""


class ServerError(ClientError):
    """The server answered with an error status; ``status`` and the server's ``detail`` are kept."""

    def __init__(self, message: str, status: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.status, self.detail = status, detail


class NoFitError(ServerError):
    """No palette config fits the budget (the server's 422)."""


class UnreachableError(ClientError):
    """The server could not be reached (connection refused, timeout, cut connection) after the retries."""


class IntegrityError(ClientError):
    """A downloaded or cached file does not match its manifest (size or sha256): it is never loaded."""


class CacheError(ClientError):
    """The device cache cannot hold or find an artifact (budget too small, nothing cached for the model)."""


class ModelError(ClientError):
    """An artifact cannot be run for what was asked (generate on an encoder, predict without a head)."""
