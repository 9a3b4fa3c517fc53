"""What a device asks the server for: memory and latency limits at a shape and a precision."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Budget:
    max_memory_mb: float | None = None  # a cap on top of what the probe finds free
    max_latency_ms: float | None = None  # needs the server to have latency figures for the device's profile
    seq_len: int = 128
    batch_size: int = 1
    precision: Literal["fp32", "int8", "auto"] = "auto"

    def request(self, memory_mb: float | None = None) -> dict[str, Any]:
        """The ``budget`` object of a resolve request, with the memory cap tightened to ``memory_mb``."""
        body = {k: v for k, v in asdict(self).items() if v is not None}
        caps = [m for m in (self.max_memory_mb, memory_mb) if m is not None]
        if caps:
            body["max_memory_mb"] = round(max(min(caps), 0.01), 3)
        return body
