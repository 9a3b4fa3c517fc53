"""The delivery server's exceptions: one branch of the project's tree (``slicer.errors.MLFSError``).

They say what went wrong and what would be accepted; they know nothing of HTTP. ``server.api.errors`` maps
each class to its status code, in one table.
"""

from __future__ import annotations

import time

from slicer import MLFSError


class ServerError(MLFSError):
    """Base of every error the delivery server raises on purpose."""


class NotFound(ServerError, LookupError):
    """Something named in a request does not exist."""


class UnknownModel(NotFound):
    """The store serves no model of that name."""


class ArtifactNotFound(NotFound):
    """No cached artifact (or no such file in it) for a valid id."""


class CacheError(ServerError):
    """An artifact id that cannot be an artifact, or a build that produced no usable artifact."""


class InvalidArtifactId(CacheError, ValueError):
    """An artifact id that is not 64 lowercase hex digits (so no path can be smuggled through one)."""


class MissingArtifactFile(CacheError, ArtifactNotFound):
    """An artifact exists but has no file of that name."""


class Unauthorized(ServerError):
    """An operator route without the server's operator token."""


class AlreadyExists(ServerError):
    """A model of that name is already served."""


class NoFit(ServerError):
    """Nothing in the palette fits; the message names the smallest option and what it needs."""


class ProfileError(ServerError, ValueError):
    """A device profile (built in, from a file, or named in a request) is invalid or unknown."""


class BuildFailed(ServerError):
    """An artifact could not be built (for example an int8 model rejected by its quality gate). ``errors``: the
    remembered failure, for the response body."""

    def __init__(self, message: str, errors: list[dict] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    @classmethod
    def of(cls, failure, hint: str = "") -> BuildFailed:
        """The error for a remembered failure (``server.metadata.FailedBuild``): what failed, why, the figures."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(failure.failed))
        return cls(f"artifact {failure.artifact_key} ({failure.model}, config {failure.config_key}, "
                   f"{failure.precision}) cannot be built: its build failed at {when} ({failure.kind}): {failure.reason}"
                   + (f"; {hint}" if hint else ""),
                   [{"loc": ["build"], "msg": failure.reason, "type": f"build_failed.{failure.kind}",
                     "artifact_id": failure.artifact_key, "config_key": failure.config_key,
                     "precision": failure.precision, "details": failure.details}])


class BuildQueueFull(ServerError):
    """Too many builds are queued or running; the caller should retry after ``retry_after_s``."""

    retry_after_s = 30


class QualityPending(ServerError):
    """Configs' quality is still being measured before one is served; the caller retries after ``retry_after_s``."""

    retry_after_s = 15


class NotReady(ServerError):
    """The server is still loading its models."""

    retry_after_s = 5


class CoordinationError(ServerError):
    """Replicas could not coordinate: the shared database is unreachable or a build lost its claim. Not a property
    of the artifact (it is not marked unbuildable); the caller retries."""

    retry_after_s = 10


class DatabaseUnavailable(CoordinationError):
    """The metadata database (PostgreSQL for replicas) does not answer."""


class LeaseLost(CoordinationError):
    """A build's claim expired or was taken over (its renewals failed): its result is discarded, not published."""
