"""MLFS slicer: elastic supernet, stage-wise adapters, exact subnet extraction.

The public API below is what the server, the benchmarks and users import (``from slicer import SubnetConfig``).
Names load lazily (PEP 562): ``import slicer`` and ``import slicer.spec`` stay torch-free, and a name that
needs torch imports it on first use. The subpackages name the architecture: ``spec`` (torch-free config
language and vocabulary), ``nn`` (models), ``formats`` (files on disk), ``data``, ``train``, ``onnx``, ``cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module it lives in (relative to this package)
_API: dict[str, str] = {
    # errors (torch-free)
    "MLFSError": ".errors", "ConfigError": ".errors", "TeacherError": ".errors", "CheckpointError": ".errors",
    "AdapterMismatchError": ".errors", "MergeError": ".errors", "ExportError": ".errors", "DataError": ".errors",
    # the language of subnets and palettes (torch-free)
    "ModelDims": ".spec.dims", "SubnetConfig": ".spec.subnet_config", "BYTES_PER_PARAM": ".spec.subnet_config",
    "SearchSpace": ".spec.search_space", "Family": ".spec.vocab", "Task": ".spec.vocab", "FAMILIES": ".spec.vocab",
    "TASKS": ".spec.vocab", "Builder": ".spec.vocab", "GraphMode": ".spec.vocab", "BUILDERS": ".spec.vocab",
    "GRAPH_MODES": ".spec.vocab", "DEFAULT_BUILDER": ".spec.vocab", "DEFAULT_GRAPH_MODE": ".spec.vocab", "PALETTE_FILE": ".spec.palette", "read_palette": ".spec.palette",
    "write_palette": ".spec.palette", "PaletteTable": ".spec.palette", "row_quality": ".spec.palette", "quality_metric": ".spec.palette",
    # paths (torch-free)
    "data_home": ".paths", "safe_join": ".paths", "sha256_file": ".paths", "file_lock": ".paths",
    "atomic_directory": ".paths",
    # files on disk (torch)
    "STACK_META": ".formats.adapter_stack", "STACK_WEIGHTS": ".formats.adapter_stack",
    "stack_fingerprint": ".formats.adapter_stack", "StackMeta": ".formats.adapter_stack",
    "CACHE_SUBDIR": ".formats.reordering_cache", "list_teachers": ".formats.teachers",
    "prepare_teacher": ".formats.teachers", "resolve_base": ".formats.teachers", "load_subnet": ".formats.storage",
    "prepare_dataset": ".data.prepared",
    # slicing and building (torch)
    "OpenSupernet": ".slicing", "open_supernet": ".slicing", "slice_to_folder": ".slicing",
    "export_to_folder": ".slicing", "read_config_arg": ".slicing", "build_subnet_artifact": ".slicing",
    "validation_set": ".slicing", "warm_up_builds": ".slicing", "TrainingReport": ".train.report",
    "REPORT_FILE": ".train.report", "BuildOptions": ".onnx.build", "ValidationSet": ".onnx.validate",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'slicer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

