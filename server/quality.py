"""No delivery without a measured quality (issue 18.2): each config's quality next to the teacher's, and which
configs are too far below it to be selected.

Where the figures come from: a model's palette table when it has one (measured at training time); else each
config is measured here, on the model's validation data or calibration text, the first time selection would serve
it, and the figure is kept in the store's metadata (``config_quality``), so it survives restarts and is shared by
replicas. The teacher (the maximal config) is measured the same way, on the same text.

The rule: a language model's config is excluded when its perplexity exceeds ``max_perplexity_ratio`` times the
teacher's; a classifier's when its accuracy is within ``min_accuracy_margin`` of always answering the majority
class (that needs labelled validation data). Embedding models (no head) and classifiers without labelled data
have no figure to judge and are not gated (``/v1/models`` says so).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from slicer import SubnetConfig

from .metadata import MetadataStore

log = logging.getLogger(__name__)

QUALITY_VERSION = "quality/1"  # bump when what is measured changes: it keys the cached figures
LM_BLOCKS = 16  # language-model blocks measured per config (every position of each is a prediction)
REFRESH_S = 5.0  # figures another replica measured are seen this late (a resolve reads none from the database)


@dataclass(frozen=True)
class Verdict:
    config_key: str
    metric: str  # perplexity (lower is better) or accuracy
    value: float
    reference: float  # the teacher's perplexity, or the majority-class accuracy
    limit: float  # the worst value still delivered
    excluded: bool
    source: str  # "palette table" or "measured on <validation source>"

    @property
    def quality(self) -> float:
        """The figure in the server's one meaning of quality (higher is better): accuracy, or minus the loss."""
        return self.value if self.metric == "accuracy" else -math.log(self.value)

    @property
    def reason(self) -> str:
        if self.metric == "perplexity":
            return (f"perplexity {self.value:.4g} is {self.value / self.reference:.3g}x the teacher's {self.reference:.4g} "
                    f"(limit {self.limit / self.reference:.3g}x = {self.limit:.4g}; {self.source})")
        return (f"accuracy {self.value:.3f} against {self.reference:.3f} for always answering the majority class "
                f"(needs at least {self.limit:.3f}; {self.source})")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


class QualityGate:
    def __init__(self, meta: MetadataStore, max_perplexity_ratio: float, min_accuracy_margin: float) -> None:
        self.meta, self.ratio, self.margin = meta, max_perplexity_ratio, min_accuracy_margin
        self._lock = threading.Lock()  # one measurement at a time (they share the supernet and the CPU)
        self._known: dict[str, tuple[float, dict[str, Verdict]]] = {}  # scope -> (when read, verdicts)

    # ----- what a model is judged on ------------------------------------------------------------------------
    @staticmethod
    def applies(model) -> str | None:
        """None when the model's configs are gated, else why not."""
        if model.dims.family == "decoder":
            return None
        if not model.dims.num_labels:
            return "embedding model: no task figure to judge configs by"
        if not model.validation.labels:
            return "classifier without labelled validation data: no accuracy to judge configs by"
        return None

    def rule(self) -> str:
        return (f"language models: perplexity <= {self.ratio:g} x the teacher's; classifiers: accuracy >= majority "
                f"class + {self.margin:g}")

    def scope(self, model) -> str:
        """What measured figures are valid for: the weights (base, adapters), the text and what is measured."""
        parts = [QUALITY_VERSION, model.opened.base_fingerprint, model.adapters_fingerprint or "-",
                 model.validation_fingerprint]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    # ----- verdicts -------------------------------------------------------------------------------------------
    def known(self, model) -> dict[str, Verdict]:
        """config key -> verdict for every config whose figure is known now (nothing is measured here; read from
        the palette table or the metadata, cached for ``REFRESH_S``)."""
        if self.applies(model) is not None:
            return {}
        scope = self.scope(model)
        seen = self._known.get(scope)
        if seen is None or time.monotonic() - seen[0] > REFRESH_S:
            seen = (time.monotonic(), self._read(model, scope))
            self._known[scope] = seen
        return seen[1]

    def unmeasured(self, model, cfg: SubnetConfig) -> bool:
        """True when serving ``cfg`` needs a measurement first."""
        return self.applies(model) is None and model.palette is None and cfg.key not in self.known(model)

    def _read(self, model, scope: str) -> dict[str, Verdict]:
        if model.palette is not None:
            return self._from_palette(model)
        figures = self.meta.qualities(scope)
        teacher = figures.get(SubnetConfig.maximal(model.dims).key)
        if teacher is None:
            return {}
        return {k: self._judge(model, k, f["value"], teacher["value"], f"measured on {model.validation.source}")
                for k, f in figures.items()}

    def verdict(self, model, cfg: SubnetConfig) -> Verdict | None:
        """The config's verdict, measuring it (and the teacher) first if needed; None when the model is not gated.
        Blocking: seconds per config on a CPU."""
        if self.applies(model) is not None:
            return None
        known = self.known(model)
        if cfg.key in known or model.palette is not None:
            return known.get(cfg.key)
        with self._lock:
            scope = self.scope(model)
            figures = self.meta.qualities(scope)
            teacher = SubnetConfig.maximal(model.dims)
            for c in (teacher, cfg):
                if c.key not in figures:
                    figures[c.key] = self._measure(model, c, scope)
            self._known.pop(scope, None)  # read again with the new figures
        return self._judge(model, cfg.key, figures[cfg.key]["value"], figures[teacher.key]["value"],
                           f"measured on {model.validation.source}")

    def _measure(self, model, cfg: SubnetConfig, scope: str) -> dict[str, Any]:
        from slicer.train.evaluate import evaluate_config

        start = time.perf_counter()
        family = model.dims.family
        batches = _lm_batches(model) if family == "decoder" else model.validation.gate
        task = "causal-lm" if family == "decoder" else "classification"
        result = evaluate_config(model.opened.supernet, cfg, batches, task)
        metric = "perplexity" if family == "decoder" else "accuracy"
        info = {**result, "examples": sum(len(b["input_ids"]) for b in batches),
                "seconds": round(time.perf_counter() - start, 2), "source": model.validation.source}
        self.meta.put_quality(scope, cfg.key, metric, result[metric], info)
        log.info("quality of %s %s: %s %.4g (%.1f s, %s)", model.served.name, cfg.describe(), metric, result[metric],
                 info["seconds"], model.validation.source)
        return {"metric": metric, "value": result[metric], "info": info}

    def _from_palette(self, model) -> dict[str, Verdict]:
        table = model.palette
        teacher = table.row(SubnetConfig.maximal(model.dims).key)
        metric = table.metric
        if teacher is None or teacher.get(metric) is None:
            return {}
        source = "palette table"

        def value(row: dict[str, Any]) -> float:
            return math.exp(min(float(row["loss"]), 50.0)) if metric == "loss" else float(row["accuracy"])

        return {r["key"]: self._judge(model, r["key"], value(r), value(teacher), source) for r in table.rows
                if r.get(metric) is not None}

    def _judge(self, model, key: str, value: float, teacher: float, source: str) -> Verdict:
        if model.dims.family == "decoder":
            limit = self.ratio * teacher
            return Verdict(key, "perplexity", value, teacher, limit, not value <= limit, source)
        majority = _majority_rate(model)
        limit = min(1.0, majority + self.margin)
        return Verdict(key, "accuracy", value, majority, limit, not value >= limit, source)


def _majority_rate(model) -> float:
    labels = model.validation.labels
    return Counter(labels).most_common(1)[0][1] / len(labels) if labels else 0.0


def _lm_batches(model) -> list[dict[str, Any]]:
    """The first ``LM_BLOCKS`` blocks of the validation text, in its own batches."""
    out, n = [], 0
    for b in model.validation.gate:
        if n >= LM_BLOCKS:
            break
        take = min(len(b["input_ids"]), LM_BLOCKS - n)
        out.append({k: v[:take] for k, v in b.items()})
        n += take
    return out
