"""GET /v1/models and /v1/models/{name}: served models, their search spaces and palettes (and whether the
palette was checked against validation data), with estimates per device profile."""

from __future__ import annotations

from fastapi import APIRouter, Query

from ...selection import Budget, memory_mb
from ...service import DeliveryService, LoadedModel
from ..deps import Service, StrictRoute
from ..errors import redact_paths, responses
from ..schemas import (
    FailedBuildInfo,
    Int8Offer,
    ModelInfo,
    ModelsResponse,
    PaletteCheck,
    PaletteRow,
    Profile,
    ProfileEstimate,
    QualityCheck,
    QualityGateInfo,
    Shape,
)

router = APIRouter(prefix="/v1", tags=["models"], route_class=StrictRoute)


def model_info(svc: DeliveryService, name: str, m: LoadedModel, shape: Budget) -> ModelInfo:
    per_profile = {p: svc.latency_estimates(m, p, shape.seq_len, shape.batch_size) for p in svc.profiles}
    verdicts = svc.quality_verdicts(m)
    failures = svc.failures(m)
    metric = svc.quality_metric(m)
    int8_offered, int8_reason = svc.int8_offer(m)
    precisions = ("fp32", "int8") if int8_offered else ("fp32",)
    palette = []
    for cand in m.candidates:  # the quality selection ranks by: one meaning in every response
        cfg = cand.config
        verdict = verdicts.get(cfg.key)
        quality = cand.quality if cand.quality is not None or verdict is None else verdict.quality
        count = cfg.param_count(m.dims)
        ests = {}
        mem = memory_mb(m.dims, cfg, "fp32", shape.seq_len, shape.batch_size)
        for p, latency in per_profile.items():
            est = latency.get((cfg.key, "fp32"))
            ests[p] = ProfileEstimate(memory_mb=round(mem, 1), fits_memory=mem <= svc.profiles[p].memory_mb,
                                      **(est.as_dict() if est else {"latency_ms": None}))
        palette.append(PaletteRow(key=cfg.key, config=cfg.to_dict(), shape=cfg.describe(), params=count.total,
                                  params_non_embedding=count.non_embedding, quality=quality,
                                  quality_metric=metric if quality is not None else None, estimates=ests,
                                  quality_check=QualityCheck(**verdict.as_dict()) if verdict else None,
                                  excluded=bool(verdict and verdict.excluded)
                                  or all((cfg.key, p) in failures for p in precisions)))
    shapes = {c.config.key: c.config.describe() for c in m.candidates}
    failed = [FailedBuildInfo(artifact_id=f.artifact_key, config_key=f.config_key, shape=shapes.get(f.config_key, "?"),
                              precision=f.precision, kind=f.kind, reason=redact_paths(f.reason), details=f.details,
                              failed_at=f.failed) for f in failures.values()]
    not_gated = svc.quality.applies(m)
    gate = QualityGateInfo(applies=not_gated is None, rule=not_gated or svc.quality.rule(), judged=len(verdicts),
                           excluded=sum(v.excluded for v in verdicts.values()))
    return ModelInfo(name=name, family=m.dims.family, description=m.served.description,
                     search_space=m.opened.supernet.space.to_dict(), palette=palette,
                     metric=m.palette.metric if m.palette else None, quality_metric=metric,
                     palette_check=PaletteCheck(**m.palette_check),
                     has_validation_data=m.served.validation_data is not None,
                     estimates_at=Shape(seq_len=shape.seq_len, batch_size=shape.batch_size),
                     quality_gate=gate, failed_builds=failed, int8=Int8Offer(offered=int8_offered, reason=int8_reason))


@router.get("/models", response_model=ModelsResponse, responses=responses(422))
def models(svc: Service, seq_len: int = Query(128, ge=1, le=8192), batch_size: int = Query(1, ge=1, le=1024)):
    """Served models, their search spaces and palettes, with fp32 estimates per device profile at a shape."""
    shape = Budget(seq_len=seq_len, batch_size=batch_size)
    out = [model_info(svc, name, m, shape) for name, m in svc.models.items()]
    return ModelsResponse(models=out, profiles=[Profile(**vars(p)) for p in svc.profiles.values()])


@router.get("/models/{name}", response_model=ModelInfo, responses=responses(404, 422))
def one_model(name: str, svc: Service, seq_len: int = Query(128, ge=1, le=8192),
              batch_size: int = Query(1, ge=1, le=1024)):
    """One served model, as in GET /v1/models."""
    return model_info(svc, name, svc.model(name), Budget(seq_len=seq_len, batch_size=batch_size))
