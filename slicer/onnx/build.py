"""One artifact build in one pass: write the graph, validate it against PyTorch, quantise, write the manifest.

The caller gives an empty folder that it renames into place afterwards (``paths.atomic_directory``, the artifact
cache): nothing here makes temporary folders of its own, and every file is hashed exactly once (the graph while
it is written).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..paths import sha256_file
from ..spec.vocab import BUILDERS, DEFAULT_BUILDER, DEFAULT_GRAPH_MODE, GRAPH_MODES
from .graph import graph_names, write_graph
from .quantize import int8_quality, quantize_int8
from .validate import ValidationSet, check_parity, parity_summary, reference_runs, session

log = logging.getLogger(__name__)

ARTIFACT_FORMAT = "mlfs-artifact/1"
RECIPE_VERSION = "mlfs-onnx/4"  # bump whenever the graph interface or a build recipe changes: it keys caches
# (4: fused encoders use LayerNormalization + Add instead of SkipLayerNormalization, faster in onnxruntime on CPU)
OPSET = 18
PRECISIONS = ("fp32", "int8")
MANIFEST = "manifest.json"
# Threads for a build's own PyTorch and onnxruntime work (extraction, the reference, the parity session): its inputs
# are a few short sentences. Measured on the shared 2-core machine at load 8-15 (issue 11): with 2 PyTorch threads
# the minnet's reference took 2.28 s wall (0.91 s CPU), with 1 thread 0.06 s (0.03 s CPU), and its extraction
# 1.5 s against 0.25 s: threads that wait for each other at every operator lose badly whenever a core is busy.
BUILD_THREADS = 1


@dataclass(frozen=True)
class BuildOptions:
    """How an artifact is built; ``recipe`` is part of its cache key."""

    precision: str = "fp32"
    builder: str = DEFAULT_BUILDER
    mode: str = DEFAULT_GRAPH_MODE  # direct builder: fused (onnxruntime contrib operators) or plain (standard operators)

    def __post_init__(self) -> None:
        for name, allowed in (("precision", PRECISIONS), ("builder", BUILDERS), ("mode", GRAPH_MODES)):
            if getattr(self, name) not in allowed:
                raise ExportError(f"{name}: {getattr(self, name)!r} is not one of {list(allowed)}")
        if self.builder == "torch" and self.mode != "plain":
            object.__setattr__(self, "mode", "plain")  # the exporter writes standard operators only

    @property
    def recipe(self) -> str:
        return f"{RECIPE_VERSION}/{self.builder}/{self.mode}"


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    out = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "recipe": RECIPE_VERSION}
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:  # the direct builder itself does not need torch
        pass
    return out


def subnet_weights(model) -> dict[str, Any]:
    """A torch subnet's tensors as numpy arrays (shared memory, no copies), by slicer/shapes.py names."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def write_model_graph(model, path: Path, options: BuildOptions) -> dict[str, Any]:
    """The fp32 graph at ``path`` by the chosen builder; returns the file's sha256 and size."""
    if options.builder == "direct":
        return write_graph(model.dims, model.cfg, subnet_weights(model), path, options.mode)
    from .export import export_onnx

    export_onnx(model, path, OPSET)
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``n`` for the block (a process-wide setting: builds run one at a time)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timed(fn, *args):
    start = time.perf_counter()
    return fn(*args), time.perf_counter() - start


def warm_up(model, validation: ValidationSet, options: BuildOptions = BuildOptions()) -> dict[str, float]:
    """Pay a process's one-time build costs now (at start-up), not in its first cold build: onnxruntime's session
    machinery, kernels and thread pool, PyTorch's first run of each operator. Builds ``model``'s direct graph in
    memory, opens it and checks it against PyTorch on the validation inputs like a build does; writes nothing.
    Returns the seconds it took (per phase)."""
    from .graph import build_graph

    timings = {}
    start = time.perf_counter()
    mode = options.mode if options.builder == "direct" else "plain"
    graph = build_graph(model.dims, model.cfg, subnet_weights(model), mode).model().SerializeToString()
    timings["graph_s"] = time.perf_counter() - start
    start = time.perf_counter()
    runs = reference_runs(model, validation.parity)
    timings["reference_s"] = time.perf_counter() - start
    start = time.perf_counter()
    check_parity(model, Path("<memory>"), [feed for feed, _ in runs], session(graph, threads=BUILD_THREADS), [out for _, out in runs])
    timings["validate_s"] = time.perf_counter() - start
    return timings


def build_artifact(model, folder: Path, validation: ValidationSet, options: BuildOptions = BuildOptions(),
                   tokenizer: Path | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the artifact of subnet ``model`` into the empty folder ``folder``; returns its manifest.

    Raises ExportError (and leaves the folder to the caller to discard) when the graph disagrees with PyTorch or
    an int8 graph fails its quality gate.
    """
    folder = Path(folder)
    timings: dict[str, float] = {}
    fp32 = folder / ("model.onnx" if options.precision == "fp32" else "model.fp32.onnx")
    # The PyTorch reference runs while the graph is written and its session opened (torch and the file writes
    # release the GIL): validation then costs little more than onnxruntime's own session and runs. The torch
    # exporter traces the same module, so with it the reference runs first, alone.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference") as pool:
        reference = pool.submit(_timed, reference_runs, model, validation.parity)
        if options.builder == "torch":
            reference.result()
        start = time.perf_counter()
        files = {fp32.name: write_model_graph(model, fp32, options)}
        timings["graph_s"] = time.perf_counter() - start
        start = time.perf_counter()
        sess = session(fp32, threads=BUILD_THREADS)
        runs, timings["reference_s"] = reference.result()
    parity = check_parity(model, fp32, [feed for feed, _ in runs], sess, [out for _, out in runs])
    timings["validate_s"] = time.perf_counter() - start  # after the graph: session, runs, the reference's remainder
    log.info("%s: %s", model.cfg.describe(), parity_summary(parity))

    quality = None
    if options.precision == "int8":
        start = time.perf_counter()
        int8 = folder / "model.onnx"
        scheme = quantize_int8(fp32, int8)
        quality = {**int8_quality(model, fp32, int8, validation.gate, threads=2), **scheme}
        timings["quantize_s"] = time.perf_counter() - start
        if not quality["accepted"]:
            raise ExportError(f"int8 model rejected: {quality['criterion']} ({quality})",
                              details={"kind": "int8_gate", **quality})
        fp32.unlink()
        files = {"model.onnx": {"sha256": sha256_file(int8), "size": int8.stat().st_size}}
    if tokenizer is not None and (Path(tokenizer) / "tokenizer.json").is_file():
        shutil.copyfile(Path(tokenizer) / "tokenizer.json", folder / "tokenizer.json")
        files["tokenizer.json"] = {"sha256": sha256_file(folder / "tokenizer.json"),
                                   "size": (folder / "tokenizer.json").stat().st_size}

    inputs, outputs = graph_names(model.dims, model.cfg)
    count = model.cfg.param_count(model.dims)
    manifest = {
        "format": ARTIFACT_FORMAT, "family": model.dims.family, "config": model.cfg.to_dict(),
        "config_key": model.cfg.key, "dims": model.dims.to_dict(),
        "params": {"total": count.total, "embedding": count.embedding, "non_embedding": count.non_embedding},
        "precision": options.precision, "build": {**asdict(options), "recipe": options.recipe},
        "opset": OPSET, "inputs": inputs, "outputs": outputs, "files": dict(sorted(files.items())),
        "versions": versions(), "parity": parity, "validation": validation.describe(),
        "int8_quality": quality, "timings": timings, **(extra or {}),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
