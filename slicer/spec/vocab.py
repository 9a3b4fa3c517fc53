"""The words every layer shares: model families, tasks, and which family serves which task. Torch-free.

Compare against these names (``family == ENCODER``) rather than spelling the strings again; the ``Literal``
types let a type checker catch a misspelt one.
"""

from __future__ import annotations

from typing import Literal

Family = Literal["encoder", "decoder"]
Task = Literal["classification", "causal-lm"]

ENCODER: Family = "encoder"
DECODER: Family = "decoder"
FAMILIES: tuple[Family, ...] = (ENCODER, DECODER)

CLASSIFICATION: Task = "classification"
CAUSAL_LM: Task = "causal-lm"
TASKS: tuple[Task, ...] = (CLASSIFICATION, CAUSAL_LM)

FAMILY_OF_TASK: dict[str, Family] = {CLASSIFICATION: ENCODER, CAUSAL_LM: DECODER}
TASK_OF_FAMILY: dict[str, Task] = {ENCODER: CLASSIFICATION, DECODER: CAUSAL_LM}
