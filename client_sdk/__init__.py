"""MLFS Edge client SDK: a device asks the server for the model that fits, keeps it verified on disk, runs it
with onnxruntime and hot-swaps it as resources change. Needs httpx, psutil, numpy, onnxruntime and tokenizers;
never torch, transformers or fastapi.

    from client_sdk import Client
    with Client("http://127.0.0.1:8000", "sentiment") as client:
        print(client.predict(["a fine film"])[0].label)
        client.start_monitor()
"""

from .budget import Budget
from .cache import CachedArtifact, DeviceCache
from .client import BenchmarkResult, Client
from .errors import (
    CacheError,
    ClientError,
    IntegrityError,
    ModelError,
    NoFitError,
    ServerError,
    UnreachableError,
)
from .events import Event, EventBus
from .model import Generation, ModelHandle, Prediction
from .monitor import Monitor, SwapPolicy
from .probe import DeviceReport, Probe, SimulatedProbe
from .server_api import Backoff, Resolution

__all__ = [
    "Backoff", "BenchmarkResult", "Budget", "CacheError", "CachedArtifact", "Client", "ClientError", "DeviceCache",
    "DeviceReport", "Event", "EventBus", "Generation", "IntegrityError", "ModelError", "ModelHandle", "Monitor",
    "NoFitError", "Prediction", "Probe", "Resolution", "ServerError", "SimulatedProbe", "SwapPolicy",
    "UnreachableError",
]
